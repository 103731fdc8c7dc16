//! Conformance tests of `StreamLog::trim` (retention for streams that never end, such as
//! topics), and the reader helpers they share with the rest of the suite.

use super::*;

/// The next `n` records of a reader (which must have them).
pub async fn take(reader: &mut RecordStream, n: usize) -> Vec<(Seq, Record)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(reader.next().await.expect("reader ended early").unwrap());
    }
    out
}

/// Append records `from ..= to` of stream `n` in batches of at most `batch`.
pub async fn append_range(
    log: &dyn StreamLog,
    id: StreamId,
    token: u64,
    n: usize,
    from: Seq,
    to: Seq,
    batch: u64,
) {
    let mut next = from;
    while next <= to {
        let end = to.min(next + batch - 1);
        let got = log
            .append(id, token, (next..=end).map(|s| text(n, s)).collect())
            .await
            .unwrap();
        assert_eq!(got, end);
        next = end + 1;
    }
}

pub fn keep_last(n: u64) -> Trim {
    Trim {
        max_records: Some(n),
        ..Trim::default()
    }
}

pub fn keep_after(seq: Seq) -> Trim {
    Trim {
        keep_after: seq,
        ..Trim::default()
    }
}

pub fn max_age(age: Duration) -> Trim {
    Trim {
        max_age: Some(age),
        ..Trim::default()
    }
}

pub async fn trim_by_count_and_position<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let (id, token) = writable(&*log).await;
    // Trimming an empty stream deletes nothing.
    assert_eq!(log.trim(id, keep_last(0)).await.unwrap(), 1);
    append_range(&*log, id, token, 0, 1, 10, 3).await;
    clock.advance(Duration::from_secs(1));
    let before = log.status(id).await.unwrap();
    assert_eq!(before.first_seq, 1);

    // A limit the stream is within deletes nothing.
    assert_eq!(log.trim(id, keep_last(10)).await.unwrap(), 1);
    assert_eq!(log.trim(id, Trim::default()).await.unwrap(), 1);
    // By count: the newest 4 stay.
    assert_eq!(log.trim(id, keep_last(4)).await.unwrap(), 7);
    let meta = log.status(id).await.unwrap();
    assert_eq!((meta.first_seq, meta.last_seq), (7, 10));
    // Housekeeping, not a write: lease, fence and `updated_ms` are untouched.
    assert_eq!(meta.updated_ms, before.updated_ms);
    assert_eq!(meta.lease, before.lease);
    assert_eq!(meta.fence, before.fence);
    // Idempotent, and never moves back.
    assert_eq!(log.trim(id, keep_last(4)).await.unwrap(), 7);
    assert_eq!(log.trim(id, keep_after(3)).await.unwrap(), 7);
    // By position.
    assert_eq!(log.trim(id, keep_after(8)).await.unwrap(), 9);
    // The stricter of two limits wins.
    assert_eq!(
        log.trim(
            id,
            Trim {
                keep_after: 8,
                max_records: Some(1),
                max_age: None,
            }
        )
        .await
        .unwrap(),
        10
    );
    // Readers from before, inside and after the trimmed region.
    for (after, first) in [(0, 10), (5, 10), (9, 10)] {
        let mut reader = log.read(id, after).await.unwrap();
        assert_exact(&take(&mut reader, 1).await, 0, first - 1, first);
    }

    // Appends continue the sequence; seq numbers are never reused.
    append_range(&*log, id, token, 0, 11, 12, 5).await;
    let mut reader = log.read(id, 0).await.unwrap();
    assert_exact(&take(&mut reader, 3).await, 0, 9, 12);

    // Trimming everything keeps `last_seq`; the stream holds no records.
    assert_eq!(log.trim(id, keep_last(0)).await.unwrap(), 13);
    let meta = log.status(id).await.unwrap();
    assert_eq!((meta.first_seq, meta.last_seq), (13, 12));
    assert_eq!(log.trim(id, keep_after(1_000)).await.unwrap(), 13);
    let from_start = log.read(id, 0).await.unwrap();
    let from_earliest = log.read(id, meta.first_seq - 1).await.unwrap();
    // A reader that had read everything, waiting live, continues with the next append.
    assert_eq!(log.append(id, token, vec![text(0, 13)]).await.unwrap(), 13);
    assert_eq!(log.status(id).await.unwrap().first_seq, 13);
    let mut tail = reader;
    assert_exact(&take(&mut tail, 1).await, 0, 12, 13);

    // No lease needed: release it, trim, and the stream still ends normally.
    log.release_lease(id, token).await.unwrap();
    assert_eq!(log.trim(id, keep_after(12)).await.unwrap(), 13);
    let token = log
        .acquire_lease(id, "w2".into(), LEASE)
        .await
        .unwrap()
        .token;
    append_range(&*log, id, token, 0, 14, 20, 4).await;
    log.finish(id, token, StreamState::Finished).await.unwrap();
    assert_exact(&collect(from_start).await, 0, 12, 20);
    assert_exact(&collect(from_earliest).await, 0, 12, 20);
    assert_exact(&collect(tail).await, 0, 13, 20);
    // Ended streams can be trimmed too; their readers end after the kept records.
    assert_eq!(log.trim(id, keep_last(3)).await.unwrap(), 18);
    assert_exact(&collect(log.read(id, 0).await.unwrap()).await, 0, 17, 20);
    assert_exact(&collect(log.read(id, 18).await.unwrap()).await, 0, 18, 20);
    assert!(collect(log.read(id, 20).await.unwrap()).await.is_empty());
    let meta = log.status(id).await.unwrap();
    assert_eq!((meta.first_seq, meta.last_seq), (18, 20));
    assert_eq!(log.trim(id, keep_last(0)).await.unwrap(), 21);
    assert!(collect(log.read(id, 0).await.unwrap()).await.is_empty());
    // Trimming is not a change of the stream: retention still counts from the finish.
    let ended = log.status(id).await.unwrap().updated_ms;
    clock.advance(TTL);
    assert!(ended + TTL.as_millis() as u64 <= clock_now(&clock));
    assert_eq!(log.purge_expired().await.unwrap(), 1);
    assert!(matches!(
        log.trim(id, keep_last(0)).await,
        Err(LogError::NotFound(x)) if x == id
    ));
}

pub async fn trim_by_age<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let (id, token) = writable(&*log).await;
    // Appended at t0, t0 + 10 s, t0 + 20 s.
    append_range(&*log, id, token, 0, 1, 3, 3).await;
    clock.advance(Duration::from_secs(10));
    append_range(&*log, id, token, 0, 4, 6, 2).await;
    clock.advance(Duration::from_secs(10));
    append_range(&*log, id, token, 0, 7, 9, 1).await;
    let reader = log.read(id, 0).await.unwrap();

    assert_eq!(
        log.trim(id, max_age(Duration::from_secs(60)))
            .await
            .unwrap(),
        1
    );
    // Older than 15 s: the first batch.
    assert_eq!(
        log.trim(id, max_age(Duration::from_secs(15)))
            .await
            .unwrap(),
        4
    );
    // Exactly 10 s old is not older than 10 s; a millisecond later it is.
    let ten = max_age(Duration::from_secs(10));
    assert_eq!(log.trim(id, ten).await.unwrap(), 4);
    clock.advance(Duration::from_millis(1));
    assert_eq!(log.trim(id, ten).await.unwrap(), 7);
    assert_eq!(log.status(id).await.unwrap().first_seq, 7);
    // Age and count together: whichever deletes more.
    let both = Trim {
        max_records: Some(2),
        max_age: Some(Duration::from_secs(10)),
        keep_after: 0,
    };
    assert_eq!(log.trim(id, both).await.unwrap(), 8);
    // New appends are young; old ones age out, and everything can.
    clock.advance(Duration::from_secs(30));
    append_range(&*log, id, token, 0, 10, 11, 2).await;
    assert_eq!(log.trim(id, ten).await.unwrap(), 10);
    clock.advance(Duration::from_secs(11));
    assert_eq!(log.trim(id, ten).await.unwrap(), 12);
    let meta = log.status(id).await.unwrap();
    assert_eq!((meta.first_seq, meta.last_seq), (12, 11));
    append_range(&*log, id, token, 0, 12, 12, 1).await;
    log.finish(id, token, StreamState::Finished).await.unwrap();
    assert_exact(&collect(log.read(id, 0).await.unwrap()).await, 0, 11, 12);
    // A reader opened before any trim got the records still kept when it reached them:
    // it was not read from, so it skips straight to the last one.
    assert_exact(&collect(reader).await, 0, 11, 12);
}

/// Check a reader's records: correct bodies, seqs strictly rising, at most one gap (the
/// trim), and ending at `last`. Returns the seq after the gap, if there was one.
fn assert_skipped_once(got: &[(Seq, Record)], n: usize, after: Seq, last: Seq) -> Option<Seq> {
    let mut expected = after + 1;
    let mut gap = None;
    for (seq, record) in got {
        assert_eq!(record, &text(n, *seq), "stream {n}");
        if *seq != expected {
            assert!(*seq > expected, "stream {n}: {seq} after {}", expected - 1);
            assert!(gap.is_none(), "stream {n}: a second gap at {seq}");
            gap = Some(*seq);
        }
        expected = seq + 1;
    }
    assert_eq!(expected - 1, last.max(after), "stream {n}: ends at {last}");
    gap
}

pub async fn trim_skips_for_readers<B: Backend>(backend: B) {
    const LAST: Seq = 2_000;
    let log = backend.open();
    let (id, token) = writable(&*log).await;
    append_range(&*log, id, token, 0, 1, LAST, 250).await;
    // A live reader that has read one record (and buffered a chunk at most), and
    // readers started before, inside and after the region about to be trimmed.
    let mut live = log.read(id, 0).await.unwrap();
    assert_exact(&take(&mut live, 1).await, 0, 0, 1);
    let before = log.read(id, 0).await.unwrap();
    let inside = log.read(id, 700).await.unwrap();
    let after = log.read(id, 1_700).await.unwrap();
    assert_eq!(log.trim(id, keep_after(1_500)).await.unwrap(), 1_501);
    let inside_late = log.read(id, 700).await.unwrap();
    append_range(&*log, id, token, 0, LAST + 1, LAST + 10, 4).await;
    log.finish(id, token, StreamState::Finished).await.unwrap();
    let last = LAST + 10;

    // The live reader delivers what it had buffered, then skips to the first kept
    // record: no error, no repeat.
    let got = collect(live).await;
    let gap = assert_skipped_once(&got, 0, 1, last);
    assert_eq!(
        gap,
        Some(1_501),
        "the live reader skips to the first kept record"
    );
    for (reader, from) in [(before, 0), (inside, 700), (inside_late, 700)] {
        let got = collect(reader).await;
        assert_eq!(got.first().map(|(s, _)| *s), Some(1_501), "from {from}");
        assert_exact(&got, 0, 1_500, last);
    }
    assert_exact(&collect(after).await, 0, 1_700, last);
}

/// Appends, trims by count and readers at once, on several streams: readers never
/// fail, repeat or go back, and the trim keeps its count.
pub async fn trim_races_appends_and_readers<B: Backend>(backend: B) {
    const STREAMS: usize = 4;
    const KEEP: u64 = 40;
    const BATCHES: u64 = 80;
    let log = backend.open();
    let mut tasks = JoinSet::new();
    for n in 0..STREAMS {
        let (id, token) = writable(&*log).await;
        let total: u64 = (0..BATCHES).map(|b| 1 + b % 7).sum();
        let writer_log = Arc::clone(&log);
        tasks.spawn(async move {
            let mut last = 0;
            for b in 0..BATCHES {
                let size = 1 + b % 7;
                let batch = (last + 1..=last + size).map(|s| text(n, s)).collect();
                last = writer_log.append(id, token, batch).await.unwrap();
                tokio::task::yield_now().await;
            }
            writer_log
                .finish(id, token, StreamState::Finished)
                .await
                .unwrap();
        });
        let trim_log = Arc::clone(&log);
        tasks.spawn(async move {
            loop {
                let first = trim_log.trim(id, keep_last(KEEP)).await.unwrap();
                let meta = trim_log.status(id).await.unwrap();
                assert!(meta.first_seq >= first);
                assert!(meta.first_seq <= meta.last_seq + 1);
                if meta.state.is_terminal() {
                    let first = trim_log.trim(id, keep_last(KEEP)).await.unwrap();
                    assert_eq!(first, total - KEEP + 1);
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        for r in 0..4usize {
            let reader_log = Arc::clone(&log);
            tasks.spawn(async move {
                for _ in 0..r * 5 {
                    tokio::task::yield_now().await;
                }
                let after = if r % 2 == 0 {
                    0
                } else {
                    reader_log.status(id).await.unwrap().last_seq
                };
                let mut reader = reader_log.read(id, after).await.unwrap();
                let mut got = Vec::new();
                while let Some(item) = reader.next().await {
                    got.push(item.unwrap());
                    if r == 2 {
                        // A slow reader, so trims overtake it.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                    }
                }
                let mut prev = after;
                for (seq, record) in &got {
                    assert!(*seq > prev, "stream {n}: {seq} after {prev}");
                    assert_eq!(record, &text(n, *seq));
                    prev = *seq;
                }
                assert_eq!(
                    prev,
                    total.max(after),
                    "stream {n}: reader {r} ends at the last"
                );
            });
        }
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
}
