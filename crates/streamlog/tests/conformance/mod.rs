//! The one conformance suite every `StreamLog` backend must pass. Each test is a generic
//! async function over a [`Backend`] (a factory that opens the log under test on a
//! manual clock); `conformance_suite!` turns them into `#[tokio::test]`s per backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamlog::{
    IdempotencyEntry, IdempotencyOutcome, LogError, ManualClock, NewStream, Record, RecordStream,
    Seq, StreamId, StreamKind, StreamLog, StreamMeta, StreamState, Trim,
};
use tokio::task::JoinSet;

mod open;
mod trim;
pub use open::*;
pub use trim::*;

/// Retention used by every backend in the suite.
pub const TTL: Duration = Duration::from_secs(3600);
/// Lease length used by the suite.
pub const LEASE: Duration = Duration::from_secs(10);

/// A backend under test.
pub trait Backend: Send + Sync + 'static {
    /// Open the log (for durable backends: the same storage every time).
    fn open(&self) -> Arc<dyn StreamLog>;
    /// The clock every log opened by this backend uses.
    fn clock(&self) -> &Arc<ManualClock>;
}

/// Generates one `#[tokio::test]` per conformance test for a backend factory.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::conformance::$test($factory).await;
            }
        )*
    };
    ($factory:expr) => {
        conformance_suite!($factory;
            ordering,
            handover_under_concurrent_appends,
            finish_and_cancel_end_readers,
            leases_fencing_and_expiry,
            takeover_of_dead_holders,
            cancel_requests,
            create_leased_is_create_then_acquire,
            idempotency_keys,
            retention,
            trim_by_count_and_position,
            trim_by_age,
            trim_skips_for_readers,
            trim_races_appends_and_readers,
            nonexistent_stream_errors_cleanly,
            randomised_interleavings,
            open_streams_and_counts,
            large_records_reach_every_reader,
        );
    };
}

pub fn text(stream: usize, seq: Seq) -> Record {
    Record::Text {
        text: format!("{stream}:{seq}:{}", "x".repeat(16)),
    }
}

pub async fn new_stream(log: &dyn StreamLog) -> StreamId {
    let id = StreamId::new();
    let meta = log
        .create(NewStream {
            id,
            owner: "alice".into(),
            kind: StreamKind::Chat,
            request: Bytes::from_static(br#"{"model":"m"}"#),
        })
        .await
        .unwrap();
    assert_eq!(meta.state, StreamState::Open);
    assert_eq!(meta.last_seq, 0);
    assert_eq!(meta.first_seq, 1);
    id
}

/// A stream with a writer lease; returns (id, token).
pub async fn writable(log: &dyn StreamLog) -> (StreamId, u64) {
    let id = new_stream(log).await;
    let lease = log.acquire_lease(id, "w".into(), LEASE).await.unwrap();
    (id, lease.token)
}

pub async fn collect(mut reader: RecordStream) -> Vec<(Seq, Record)> {
    let mut out = Vec::new();
    while let Some(item) = reader.next().await {
        out.push(item.unwrap());
    }
    out
}

/// Assert `got` is exactly records `after+1 ..= last` of stream `n`.
pub fn assert_exact(got: &[(Seq, Record)], n: usize, after: Seq, last: Seq) {
    let expected: Vec<(Seq, Record)> = (after + 1..=last).map(|s| (s, text(n, s))).collect();
    assert_eq!(got.len(), expected.len(), "stream {n}, after {after}");
    assert!(got == expected.as_slice(), "stream {n}, after {after}");
}

pub async fn ordering<B: Backend>(backend: B) {
    let log = backend.open();
    let (id, token) = writable(&*log).await;
    let mut last = 0;
    for size in [1usize, 3, 16, 1, 100, 7] {
        let batch: Vec<Record> = (last + 1..=last + size as u64)
            .map(|s| text(0, s))
            .collect();
        let got = log.append(id, token, batch).await.unwrap();
        assert_eq!(got, last + size as u64);
        last = got;
    }
    assert_eq!(log.status(id).await.unwrap().last_seq, last);
    log.finish(id, token, StreamState::Finished).await.unwrap();
    for after in [0, 1, 4, 20, last - 1, last, last + 5] {
        let got = collect(log.read(id, after).await.unwrap()).await;
        assert_exact(&got, 0, after.min(last), last);
    }
    let meta = log.status(id).await.unwrap();
    assert_eq!(meta.state, StreamState::Finished);
    assert_eq!(meta.owner, "alice");
    assert_eq!(meta.kind, StreamKind::Chat);
    assert_eq!(meta.request, Bytes::from_static(br#"{"model":"m"}"#));
    assert!(meta.lease.is_none());
    // Appending or finishing again is refused.
    let err = log.append(id, token, vec![text(0, 1)]).await.unwrap_err();
    assert!(matches!(err, LogError::AlreadyFinished { .. }), "{err:?}");
    assert!(!err.is_retryable());
    // Ids are unique per log.
    let dup = log
        .create(NewStream {
            id,
            owner: "bob".into(),
            kind: StreamKind::Task,
            request: Bytes::new(),
        })
        .await
        .unwrap_err();
    assert!(matches!(dup, LogError::AlreadyExists(_)), "{dup:?}");
}

pub async fn handover_under_concurrent_appends<B: Backend>(backend: B) {
    const STREAMS: usize = 16;
    const READERS: usize = 6;
    const BATCHES: u64 = 60;
    let log = backend.open();
    let mut tasks = JoinSet::new();
    for n in 0..STREAMS {
        let (id, token) = writable(&*log).await;
        let writer_log = Arc::clone(&log);
        tasks.spawn(async move {
            let mut last = 0;
            for b in 0..BATCHES {
                let size = 1 + (b % 4);
                let batch = (last + 1..=last + size).map(|s| text(n, s)).collect();
                last = writer_log.append(id, token, batch).await.unwrap();
                tokio::task::yield_now().await;
            }
            writer_log
                .finish(id, token, StreamState::Finished)
                .await
                .unwrap();
        });
        for r in 0..READERS {
            let reader_log = Arc::clone(&log);
            tasks.spawn(async move {
                // Start at different moments of the writer's progress, from the
                // beginning or from wherever the log is when the reader arrives.
                for _ in 0..r * 7 {
                    tokio::task::yield_now().await;
                }
                let after = if r % 2 == 0 {
                    0
                } else {
                    reader_log.status(id).await.unwrap().last_seq
                };
                let got = collect(reader_log.read(id, after).await.unwrap()).await;
                let total: u64 = (0..BATCHES).map(|b| 1 + b % 4).sum();
                assert_exact(&got, n, after, total);
            });
        }
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
}

pub async fn finish_and_cancel_end_readers<B: Backend>(backend: B) {
    let log = backend.open();
    for state in [
        StreamState::Finished,
        StreamState::Cancelled,
        StreamState::Failed,
    ] {
        // A reader waiting on an empty stream ends when the stream ends.
        let (id, token) = writable(&*log).await;
        let waiting = log.read(id, 0).await.unwrap();
        let from_later = log.read(id, 5).await.unwrap();
        let waiter = tokio::join!(collect(waiting), async {
            log.append(id, token, (1..=3).map(|s| text(1, s)).collect())
                .await
                .unwrap();
            log.finish(id, token, state).await.unwrap();
        })
        .0;
        assert_exact(&waiter, 1, 0, 3);
        assert!(collect(from_later).await.is_empty());
        assert_eq!(log.status(id).await.unwrap().state, state);
        assert!(collect(log.read(id, 3).await.unwrap()).await.is_empty());
        let err = log
            .finish(id, token, StreamState::Finished)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::AlreadyFinished { state: s, .. } if s == state));
    }
    // `finish` needs a terminal state.
    let (id, token) = writable(&*log).await;
    let err = log.finish(id, token, StreamState::Open).await.unwrap_err();
    assert!(matches!(err, LogError::InvalidArgument(_)), "{err:?}");
    let err = log.append(id, token, Vec::new()).await.unwrap_err();
    assert!(matches!(err, LogError::InvalidArgument(_)), "{err:?}");
}

/// `create_leased` creates the stream with its lease in one step: the holder can write at
/// once, nobody else can acquire, the status shows it, and an id taken is refused.
pub async fn create_leased_is_create_then_acquire(backend: impl Backend) {
    let log = backend.open();
    let clock = backend.clock();
    let id = StreamId::new();
    let new = NewStream {
        id,
        owner: "alice".into(),
        kind: StreamKind::Chat,
        request: Bytes::from_static(br#"{"model":"m"}"#),
    };
    let (meta, lease) = log
        .create_leased(new.clone(), "w".into(), LEASE)
        .await
        .unwrap();
    assert_eq!(
        (meta.id, meta.state, meta.last_seq),
        (id, StreamState::Open, 0)
    );
    assert_eq!(lease.holder, "w");
    assert_eq!(lease.expires_at_ms, clock_now(clock) + 10_000);
    assert_eq!(meta.lease.as_ref(), Some(&lease));
    assert_eq!(meta.fence, lease.token);
    let err = log.acquire_lease(id, "x".into(), LEASE).await.unwrap_err();
    assert!(
        matches!(err, LogError::LeaseHeld { ref holder, .. } if holder == "w"),
        "{err:?}"
    );
    assert_eq!(
        log.append(id, lease.token, vec![text(0, 1)]).await.unwrap(),
        1
    );
    let status = log.status(id).await.unwrap();
    assert_eq!(status.lease.as_ref().map(|l| l.token), Some(lease.token));
    assert_eq!(status.owner, "alice");
    let err = log.create_leased(new, "y".into(), LEASE).await.unwrap_err();
    assert!(
        matches!(err, LogError::AlreadyExists(taken) if taken == id),
        "{err:?}"
    );
    log.finish(id, lease.token, StreamState::Finished)
        .await
        .unwrap();
    assert_eq!(
        collect(log.read(id, 0).await.unwrap()).await,
        vec![(1, text(0, 1))]
    );
}

pub async fn leases_fencing_and_expiry<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let id = new_stream(&*log).await;
    // No lease, no writes.
    let err = log.append(id, 1, vec![text(0, 1)]).await.unwrap_err();
    assert!(
        matches!(err, LogError::StaleToken { current: None, .. }),
        "{err:?}"
    );

    let a = log.acquire_lease(id, "a".into(), LEASE).await.unwrap();
    assert_eq!(a.holder, "a");
    assert_eq!(a.expires_at_ms, clock_now(&clock) + 10_000);
    let err = log.acquire_lease(id, "b".into(), LEASE).await.unwrap_err();
    assert!(
        matches!(err, LogError::LeaseHeld { ref holder, .. } if holder == "a"),
        "{err:?}"
    );
    assert_eq!(log.append(id, a.token, vec![text(0, 1)]).await.unwrap(), 1);

    // Renewal pushes expiry out; the lease is still held just before it.
    clock.advance(Duration::from_secs(8));
    let renewed = log.renew_lease(id, a.token, LEASE).await.unwrap();
    assert_eq!(renewed.token, a.token);
    assert_eq!(renewed.expires_at_ms, clock_now(&clock) + 10_000);
    clock.advance(Duration::from_secs(9));
    assert!(log.acquire_lease(id, "b".into(), LEASE).await.is_err());
    // An expired lease nobody took over still lets its holder write.
    clock.advance(Duration::from_secs(1));
    assert_eq!(log.append(id, a.token, vec![text(0, 2)]).await.unwrap(), 2);

    // Takeover: a strictly greater token fences the old writer off.
    let b = log.acquire_lease(id, "b".into(), LEASE).await.unwrap();
    assert!(b.token > a.token);
    let meta = log.status(id).await.unwrap();
    assert_eq!(meta.lease.as_ref().map(|l| l.token), Some(b.token));
    assert_eq!(meta.fence, b.token);
    for err in [
        log.append(id, a.token, vec![text(0, 3)]).await.unwrap_err(),
        log.finish(id, a.token, StreamState::Finished)
            .await
            .unwrap_err(),
        log.renew_lease(id, a.token, LEASE)
            .await
            .map(|_| ())
            .unwrap_err(),
        log.release_lease(id, a.token).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, LogError::StaleToken { presented, current: Some(c), .. }
                if presented == a.token && c == b.token),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
    assert_eq!(log.append(id, b.token, vec![text(0, 3)]).await.unwrap(), 3);

    // Release: the released token is stale, and the next grant is greater still.
    log.release_lease(id, b.token).await.unwrap();
    assert!(log.status(id).await.unwrap().lease.is_none());
    let err = log.append(id, b.token, vec![text(0, 4)]).await.unwrap_err();
    assert!(matches!(err, LogError::StaleToken { .. }), "{err:?}");
    let c = log.acquire_lease(id, "c".into(), LEASE).await.unwrap();
    assert!(c.token > b.token);
    log.finish(id, c.token, StreamState::Finished)
        .await
        .unwrap();
    let err = log.acquire_lease(id, "d".into(), LEASE).await.unwrap_err();
    assert!(matches!(err, LogError::AlreadyFinished { .. }), "{err:?}");
    assert_exact(&collect(log.read(id, 0).await.unwrap()).await, 0, 0, 3);

    // Concurrent acquires: exactly one wins.
    let id = new_stream(&*log).await;
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let log = Arc::clone(&log);
        tasks.spawn(async move { log.acquire_lease(id, format!("n{i}"), LEASE).await.is_ok() });
    }
    let mut winners = 0;
    while let Some(ok) = tasks.join_next().await {
        winners += usize::from(ok.unwrap());
    }
    assert_eq!(winners, 1);
}

/// Taking a lease from a holder known to be dead, and listing leased open streams.
pub async fn takeover_of_dead_holders<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let dead = log.create_leased(
        NewStream {
            id: StreamId::new(),
            owner: "alice".into(),
            kind: StreamKind::Chat,
            request: Bytes::from_static(br#"{"model":"m"}"#),
        },
        "node/1".into(),
        LEASE,
    );
    let (dead, old) = dead.await.unwrap();
    let idle = new_stream(&*log).await; // open, no lease: not listed
    let (ended, token) = writable(&*log).await;
    log.finish(ended, token, StreamState::Finished)
        .await
        .unwrap();
    let session = log
        .create_leased(
            NewStream {
                id: StreamId::new(),
                owner: "alice".into(),
                kind: StreamKind::Session,
                request: Bytes::new(),
            },
            "node/1".into(),
            LEASE,
        )
        .await
        .unwrap()
        .0;

    let chats = log.leased_streams(StreamKind::Chat).await.unwrap();
    assert_eq!(
        chats,
        vec![(dead.id, old.clone())],
        "idle {idle}, ended {ended}"
    );
    let sessions = log.leased_streams(StreamKind::Session).await.unwrap();
    assert_eq!(
        sessions.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [session.id]
    );
    assert!(
        log.leased_streams(StreamKind::Topic)
            .await
            .unwrap()
            .is_empty()
    );

    // An unexpired lease is taken only from the holder named as dead.
    let err = log
        .take_over_lease(dead.id, "node/2".into(), LEASE, "other/1".into())
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::LeaseHeld { .. }), "{err:?}");
    let new = log
        .take_over_lease(dead.id, "node/2".into(), LEASE, "node/1".into())
        .await
        .unwrap();
    assert!(new.token > old.token);
    assert_eq!(new.holder, "node/2");
    let err = log
        .append(dead.id, old.token, vec![text(0, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::StaleToken { .. }), "{err:?}");
    assert_eq!(
        log.append(dead.id, new.token, vec![text(0, 1)])
            .await
            .unwrap(),
        1
    );
    // The new holder is alive: naming the old one does not take it.
    let err = log
        .take_over_lease(dead.id, "node/3".into(), LEASE, "node/1".into())
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::LeaseHeld { .. }), "{err:?}");
    // Once expired, anyone may take it, as with acquire.
    clock.advance(LEASE);
    let last = log
        .take_over_lease(dead.id, "node/3".into(), LEASE, "nobody".into())
        .await
        .unwrap();
    assert!(last.token > new.token);
    let listed = log.leased_streams(StreamKind::Chat).await.unwrap();
    assert_eq!(listed, vec![(dead.id, last.clone())]);
    log.finish(dead.id, last.token, StreamState::Finished)
        .await
        .unwrap();
    assert!(
        log.leased_streams(StreamKind::Chat)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A cancel asked by another node reaches the writer once, through its next append or
/// renewal. Logs that several nodes cannot share refuse it.
pub async fn cancel_requests<B: Backend>(backend: B) {
    let log = backend.open();
    let (id, token) = writable(&*log).await;
    match log.request_cancel(id).await {
        Err(LogError::InvalidArgument(_)) => return,
        other => other.unwrap(),
    }
    let err = log.append(id, token, vec![text(0, 1)]).await.unwrap_err();
    assert!(
        matches!(err, LogError::CancelRequested(c) if c == id),
        "{err:?}"
    );
    // Told once: the writer's own ending goes through.
    assert_eq!(log.append(id, token, vec![text(0, 1)]).await.unwrap(), 1);
    log.request_cancel(id).await.unwrap();
    let err = log.renew_lease(id, token, LEASE).await.unwrap_err();
    assert!(matches!(err, LogError::CancelRequested(_)), "{err:?}");
    log.finish(id, token, StreamState::Cancelled).await.unwrap();
    let err = log.request_cancel(id).await.unwrap_err();
    assert!(matches!(err, LogError::AlreadyFinished { .. }), "{err:?}");
    let missing = log.request_cancel(StreamId::new()).await.unwrap_err();
    assert!(matches!(missing, LogError::NotFound(_)), "{missing:?}");
}

fn clock_now(clock: &ManualClock) -> u64 {
    streamlog::Clock::now_ms(clock)
}

pub async fn idempotency_keys<B: Backend>(backend: B) {
    let log = backend.open();
    let first = IdempotencyEntry {
        stream: StreamId::new(),
        request_hash: vec![1, 2, 3],
    };
    let second = IdempotencyEntry {
        stream: StreamId::new(),
        request_hash: vec![9],
    };
    let put = |p: &str, k: &str, e: &IdempotencyEntry| {
        log.insert_idempotency_key(p.into(), k.into(), e.clone())
    };
    assert_eq!(
        put("alice", "k1", &first).await.unwrap(),
        IdempotencyOutcome::Inserted
    );
    assert_eq!(
        put("alice", "k1", &second).await.unwrap(),
        IdempotencyOutcome::Existing(first.clone())
    );
    // Keys are per principal.
    assert_eq!(
        put("bob", "k1", &second).await.unwrap(),
        IdempotencyOutcome::Inserted
    );
    // A lookup finds what was inserted, and inserts nothing.
    let find = |p: &str, k: &str| log.find_idempotency_key(p.into(), k.into());
    assert_eq!(find("alice", "k1").await.unwrap(), Some(first.clone()));
    assert_eq!(find("bob", "k1").await.unwrap(), Some(second.clone()));
    assert_eq!(find("alice", "nothing").await.unwrap(), None);
    assert_eq!(find("alice", "nothing").await.unwrap(), None);
    // Concurrent inserts of one key: exactly one wins, all see the winner.
    let mut tasks = JoinSet::new();
    for i in 0..16u8 {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let entry = IdempotencyEntry {
                stream: StreamId::new(),
                request_hash: vec![i],
            };
            let out = log
                .insert_idempotency_key("carol".into(), "race".into(), entry.clone())
                .await
                .unwrap();
            match out {
                IdempotencyOutcome::Inserted => Some(entry),
                IdempotencyOutcome::Existing(_) => None,
            }
        });
    }
    let mut winners = Vec::new();
    while let Some(w) = tasks.join_next().await {
        winners.extend(w.unwrap());
    }
    assert_eq!(winners.len(), 1);
    let again = log
        .insert_idempotency_key("carol".into(), "race".into(), second.clone())
        .await
        .unwrap();
    assert_eq!(again, IdempotencyOutcome::Existing(winners[0].clone()));

    // Releasing for another stream leaves the key; releasing for its own stream frees it
    // for a new one, and only for that principal.
    log.release_idempotency_key("alice".into(), "k1".into(), second.stream)
        .await
        .unwrap();
    assert_eq!(
        put("alice", "k1", &second).await.unwrap(),
        IdempotencyOutcome::Existing(first.clone())
    );
    log.release_idempotency_key("alice".into(), "k1".into(), first.stream)
        .await
        .unwrap();
    assert_eq!(
        put("alice", "k1", &second).await.unwrap(),
        IdempotencyOutcome::Inserted
    );
    assert_eq!(
        put("bob", "k1", &first).await.unwrap(),
        IdempotencyOutcome::Existing(second.clone())
    );
    log.release_idempotency_key("nobody".into(), "none".into(), first.stream)
        .await
        .unwrap();
}

pub async fn retention<B: Backend>(backend: B) {
    let log = backend.open();
    let clock = Arc::clone(backend.clock());
    let key = |stream| IdempotencyEntry {
        stream,
        request_hash: vec![7],
    };
    let (ended, t1) = writable(&*log).await;
    log.append(ended, t1, vec![text(0, 1)]).await.unwrap();
    log.insert_idempotency_key("a".into(), "ended".into(), key(ended))
        .await
        .unwrap();
    log.finish(ended, t1, StreamState::Finished).await.unwrap();
    let (open, _) = writable(&*log).await;
    log.insert_idempotency_key("a".into(), "open".into(), key(open))
        .await
        .unwrap();
    // A key whose stream was never created.
    log.insert_idempotency_key("a".into(), "dangling".into(), key(StreamId::new()))
        .await
        .unwrap();

    clock.advance(TTL / 2);
    let (later, t3) = writable(&*log).await;
    log.finish(later, t3, StreamState::Cancelled).await.unwrap();
    assert_eq!(log.purge_expired().await.unwrap(), 0);

    clock.advance(TTL / 2);
    assert_eq!(log.purge_expired().await.unwrap(), 1);
    assert!(matches!(
        log.status(ended).await,
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(
        log.read(ended, 0).await.err(),
        Some(LogError::NotFound(_))
    ));
    let taken = |k: &'static str| {
        let log = Arc::clone(&log);
        async move {
            let probe = key(StreamId::new());
            let out = log
                .insert_idempotency_key("a".into(), k.into(), probe)
                .await
                .unwrap();
            matches!(out, IdempotencyOutcome::Existing(_))
        }
    };
    assert!(!taken("ended").await, "key of a purged stream is gone");
    assert!(taken("open").await, "key of an open stream stays");
    assert!(
        !taken("dangling").await,
        "dangling key is purged after the ttl"
    );
    assert_eq!(log.status(open).await.unwrap().state, StreamState::Open);
    assert_eq!(
        log.status(later).await.unwrap().state,
        StreamState::Cancelled
    );

    clock.advance(TTL / 2);
    assert_eq!(log.purge_expired().await.unwrap(), 1);
    assert!(matches!(
        log.status(later).await,
        Err(LogError::NotFound(_))
    ));
    assert_eq!(log.purge_expired().await.unwrap(), 0);
    assert!(log.status(open).await.is_ok());
}

pub async fn nonexistent_stream_errors_cleanly<B: Backend>(backend: B) {
    let log = backend.open();
    let id = StreamId::new();
    assert!(matches!(log.read(id, 0).await.err(), Some(LogError::NotFound(x)) if x == id));
    assert!(matches!(log.status(id).await, Err(LogError::NotFound(_))));
    assert!(matches!(
        log.append(id, 1, vec![text(0, 1)]).await,
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(
        log.acquire_lease(id, "a".into(), LEASE).await,
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(
        log.finish(id, 1, StreamState::Finished).await,
        Err(LogError::NotFound(_))
    ));
    for trim in [Trim::default(), keep_last(0), max_age(Duration::ZERO)] {
        assert!(matches!(
            log.trim(id, trim).await,
            Err(LogError::NotFound(x)) if x == id
        ));
    }
    // A malformed id from a URL is a clean parse error.
    for bad in [
        "",
        "../../etc/passwd",
        "0000000000000000000000000000000",
        "ZZ",
    ] {
        assert!(bad.parse::<StreamId>().is_err());
    }
}

/// Seeded random interleavings of appends, readers starting at random positions, and
/// finishes, across several streams: every reader sees exactly the appended sequence.
pub async fn randomised_interleavings<B: Backend>(backend: B) {
    let log = backend.open();
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let streams = rng.random_range(1..=4usize);
        let mut open = Vec::new();
        for _ in 0..streams {
            let (id, token) = writable(&*log).await;
            open.push((id, token, 0u64));
        }
        let mut readers = JoinSet::new();
        let mut finished = HashSet::new();
        while finished.len() < streams {
            let n = rng.random_range(0..streams);
            if finished.contains(&n) {
                continue;
            }
            let (id, token, last) = &mut open[n];
            match rng.random_range(0..10) {
                0..=5 => {
                    let size = rng.random_range(1..=40u64);
                    let batch = (*last + 1..=*last + size).map(|s| text(n, s)).collect();
                    *last = log.append(*id, *token, batch).await.unwrap();
                }
                6..=8 => {
                    let after = rng.random_range(0..=*last + 2);
                    let reader = log.read(*id, after).await.unwrap();
                    let pace = rng.random_range(0..3u32);
                    readers.spawn(async move {
                        let mut reader = reader;
                        let mut got = Vec::new();
                        while let Some(item) = reader.next().await {
                            got.push(item.unwrap());
                            for _ in 0..pace {
                                tokio::task::yield_now().await;
                            }
                        }
                        (n, after, got)
                    });
                }
                _ => {
                    log.finish(*id, *token, StreamState::Finished)
                        .await
                        .unwrap();
                    finished.insert(n);
                }
            }
        }
        while let Some(res) = readers.join_next().await {
            let (n, after, got) = res.unwrap();
            let last = open[n].2;
            assert_exact(&got, n, after.min(last), last);
        }
    }
}
