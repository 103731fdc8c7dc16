//! Conformance tests of `StreamLog::open_streams` and `StreamLog::count_open` (the idle
//! sweeper's walk and the per-principal quota's count), and of large records going
//! through every byte bound (hot tails, fetch chunks) intact.

use super::*;

/// Create a leased stream of `owner` and `kind`; returns (id, token).
pub async fn owned(log: &dyn StreamLog, owner: &str, kind: StreamKind) -> (StreamId, u64) {
    let new = NewStream {
        id: StreamId::new(),
        owner: owner.into(),
        kind,
        request: Bytes::from_static(b"{}"),
    };
    let (meta, lease) = log.create_leased(new, "w".into(), LEASE).await.unwrap();
    (meta.id, lease.token)
}

/// The open streams of `kind`, sorted by id.
async fn open_of(log: &dyn StreamLog, kind: StreamKind) -> Vec<StreamMeta> {
    let mut open = log.open_streams(kind).await.unwrap();
    open.sort_by_key(|meta| meta.id);
    open
}

/// Each stream's status, sorted by id.
async fn statuses(log: &dyn StreamLog, ids: &[StreamId]) -> Vec<StreamMeta> {
    let mut metas = Vec::new();
    for id in ids {
        metas.push(log.status(*id).await.unwrap());
    }
    metas.sort_by_key(|meta| meta.id);
    metas
}

pub async fn open_streams_and_counts<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let count = |owner: &str, kind| log.count_open(owner.into(), kind);
    let (a1, t1) = owned(&*log, "alice", StreamKind::Session).await;
    clock.advance(Duration::from_secs(1));
    let (a2, t2) = owned(&*log, "alice", StreamKind::Session).await;
    let (task, t3) = owned(&*log, "alice", StreamKind::Task).await;
    let (b1, _) = owned(&*log, "bob", StreamKind::Session).await;
    let no_lease = new_stream(&*log).await; // alice's chat, without a lease
    assert_eq!(count("alice", StreamKind::Session).await.unwrap(), 2);
    assert_eq!(count("alice", StreamKind::Task).await.unwrap(), 1);
    assert_eq!(count("alice", StreamKind::Chat).await.unwrap(), 1);
    assert_eq!(count("bob", StreamKind::Session).await.unwrap(), 1);
    assert_eq!(count("bob", StreamKind::Task).await.unwrap(), 0);
    assert_eq!(count("carol", StreamKind::Session).await.unwrap(), 0);
    // Owners are compared whole (no prefix or separator confusions).
    assert_eq!(count("alic", StreamKind::Session).await.unwrap(), 0);
    assert_eq!(count("alice:1", StreamKind::Session).await.unwrap(), 0);

    // The open streams of a kind, with the metadata `status` shows.
    let sessions = open_of(&*log, StreamKind::Session).await;
    assert_eq!(sessions, statuses(&*log, &[a1, a2, b1]).await);
    let chats = open_of(&*log, StreamKind::Chat).await;
    assert_eq!(chats.iter().map(|m| m.id).collect::<Vec<_>>(), [no_lease]);
    assert!(open_of(&*log, StreamKind::Topic).await.is_empty());

    // `updated_ms` is the last append: what an idle sweeper compares.
    let created = clock_now(&clock);
    clock.advance(Duration::from_secs(30));
    log.append(a1, t1, (1..=3).map(|s| text(1, s)).collect())
        .await
        .unwrap();
    let appended = clock_now(&clock);
    clock.advance(Duration::from_secs(30));
    // A trim is housekeeping, not activity.
    log.trim(a1, keep_last(1)).await.unwrap();
    let sessions = open_of(&*log, StreamKind::Session).await;
    let updated = |id| sessions.iter().find(|m| m.id == id).map(|m| m.updated_ms);
    assert_eq!(updated(a1), Some(appended));
    assert_eq!(updated(a2), Some(created));
    let a1_meta = sessions.iter().find(|m| m.id == a1).unwrap();
    assert_eq!((a1_meta.first_seq, a1_meta.last_seq), (3, 3));
    assert_eq!(sessions, statuses(&*log, &[a1, a2, b1]).await);

    // Ending a stream, in any terminal state, takes it out of both.
    log.finish(a2, t2, StreamState::Cancelled).await.unwrap();
    log.finish(task, t3, StreamState::Failed).await.unwrap();
    assert_eq!(count("alice", StreamKind::Session).await.unwrap(), 1);
    assert_eq!(count("alice", StreamKind::Task).await.unwrap(), 0);
    let ids: Vec<StreamId> = open_of(&*log, StreamKind::Session)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    let mut expected = vec![a1, b1];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(open_of(&*log, StreamKind::Task).await.is_empty());

    // A create refused (the id is taken) counts nothing, for the stream's owner or its
    // own; purging ended streams changes nothing for open ones.
    for (owner, kind) in [
        ("alice", StreamKind::Session),
        ("mallory", StreamKind::Topic),
    ] {
        let dup = NewStream {
            id: a1,
            owner: owner.into(),
            kind,
            request: Bytes::new(),
        };
        assert!(log.create(dup).await.is_err());
    }
    assert_eq!(count("mallory", StreamKind::Topic).await.unwrap(), 0);
    assert!(open_of(&*log, StreamKind::Topic).await.is_empty());
    clock.advance(TTL);
    assert_eq!(log.purge_expired().await.unwrap(), 2);
    assert_eq!(count("alice", StreamKind::Session).await.unwrap(), 1);
    assert_eq!(count("bob", StreamKind::Session).await.unwrap(), 1);
    assert_eq!(open_of(&*log, StreamKind::Session).await.len(), 2);
    // Counting is read-your-writes under concurrent creates.
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let log = Arc::clone(&log);
        tasks.spawn(async move { owned(&*log, "dave", StreamKind::Task).await });
    }
    while let Some(created) = tasks.join_next().await {
        created.unwrap();
    }
    assert_eq!(count("dave", StreamKind::Task).await.unwrap(), 8);
    assert_eq!(open_of(&*log, StreamKind::Task).await.len(), 8);
}

/// A record of about `size` bytes of text, different for every seq.
pub fn large(seq: Seq, size: usize) -> Record {
    Record::Text {
        text: format!("{seq}:{}", "x".repeat(size)),
    }
}

/// Records of 1 MiB, alone and in batches with small ones, pass every byte bound: each
/// reader — live from the start, joining half way, replaying after the end — receives
/// every record exactly once, in order.
pub async fn large_records_reach_every_reader<B: Backend>(backend: B) {
    const MIB: usize = 1 << 20;
    let log = backend.open();
    let (id, token) = writable(&*log).await;
    let read_all = |reader: RecordStream| async move { collect(reader).await };
    let mut readers = JoinSet::new();
    readers.spawn(read_all(log.read(id, 0).await.unwrap()));
    let mut expected: Vec<(Seq, Record)> = Vec::new();
    let mut append = |batch: Vec<Record>| {
        let first = expected.len() as u64 + 1;
        expected.extend((first..).zip(batch.iter().cloned()));
        let last = expected.len() as u64;
        let log = Arc::clone(&log);
        async move {
            assert_eq!(log.append(id, token, batch).await.unwrap(), last);
        }
    };
    append((1..=3).map(|s| text(0, s)).collect()).await;
    for seq in 4..=7 {
        append(vec![large(seq, MIB)]).await;
    }
    let mut middle = log.read(id, 5).await.unwrap();
    let first = middle.next().await.unwrap().unwrap();
    readers.spawn(async move {
        let mut got = vec![first];
        got.extend(collect(middle).await);
        got
    });
    let mut batch = vec![large(8, MIB), large(9, MIB / 2)];
    batch.extend((10..=200).map(|s| text(0, s)));
    batch.push(large(201, 3 * MIB / 2));
    append(batch).await;
    append((202..=210).map(|s| text(0, s)).collect()).await;
    log.finish(id, token, StreamState::Finished).await.unwrap();
    readers.spawn(read_all(log.read(id, 0).await.unwrap()));
    readers.spawn(read_all(log.read(id, 6).await.unwrap()));
    let mut seen = Vec::new();
    while let Some(got) = readers.join_next().await {
        let got = got.unwrap();
        let after = got.first().map_or(0, |(seq, _)| seq - 1);
        let want = &expected[usize::try_from(after).unwrap()..];
        assert_eq!(got.len(), want.len(), "reader after {after}");
        assert!(got == want, "reader after {after}: records differ");
        seen.push(after);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 0, 5, 6]);
}
