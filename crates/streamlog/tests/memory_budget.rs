//! The memory log's byte budget: what it counts, which streams it evicts and in which
//! order, that open streams are never evicted nor their appends refused, that readers
//! of an evicted stream end cleanly, and the refusal of a create that cannot fit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use streamlog::memory::{KEY_OVERHEAD, RECORD_OVERHEAD, STREAM_OVERHEAD};
use streamlog::{
    IdempotencyEntry, LogError, ManualClock, MemoryLog, NewStream, Record, StreamId, StreamKind,
    StreamLog, StreamState, Trim,
};

const TTL: Duration = Duration::from_secs(3600);

fn log(max_bytes: u64) -> MemoryLog {
    MemoryLog::with_budget(Arc::new(ManualClock::new(1_000_000)), TTL, max_bytes)
}

/// A leased stream of alice's, with request `{}`; returns (id, token).
async fn leased(log: &MemoryLog) -> (StreamId, u64) {
    let new = NewStream {
        id: StreamId::new(),
        owner: "alice".into(),
        kind: StreamKind::Session,
        request: Bytes::from_static(b"{}"),
    };
    let (meta, lease) = log
        .create_leased(new, "w".into(), Duration::from_secs(60))
        .await
        .unwrap();
    (meta.id, lease.token)
}

/// What a stream of [`leased`] counts before its records.
const STREAM: u64 = STREAM_OVERHEAD + 5 + 2;

fn record(size: usize) -> Record {
    Record::Text {
        text: "x".repeat(size),
    }
}

fn counted(record: &Record) -> u64 {
    record.to_json().unwrap().len() as u64 + RECORD_OVERHEAD
}

fn key(stream: StreamId) -> IdempotencyEntry {
    IdempotencyEntry {
        stream,
        request_hash: vec![1, 2],
    }
}

async fn exists(log: &MemoryLog, id: StreamId) -> bool {
    match log.status(id).await {
        Ok(_) => true,
        Err(LogError::NotFound(_)) => false,
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn counts_streams_records_and_keys() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = MemoryLog::with_ttl(clock.clone(), TTL);
    assert_eq!(log.bytes(), 0);
    let (id, token) = leased(&log).await;
    assert_eq!(log.bytes(), STREAM);
    let records = vec![record(100), record(3)];
    let held: u64 = records.iter().map(counted).sum();
    log.append(id, token, records).await.unwrap();
    assert_eq!(log.bytes(), STREAM + held);
    log.insert_idempotency_key("alice".into(), "k".into(), key(id))
        .await
        .unwrap();
    let key_bytes = KEY_OVERHEAD + 5 + 1 + 2;
    assert_eq!(log.bytes(), STREAM + held + key_bytes);
    let trim = Trim {
        max_records: Some(0),
        ..Trim::default()
    };
    log.trim(id, trim).await.unwrap();
    assert_eq!(log.bytes(), STREAM + key_bytes);
    log.release_idempotency_key("alice".into(), "k".into(), id)
        .await
        .unwrap();
    assert_eq!(log.bytes(), STREAM);
    log.finish(id, token, StreamState::Finished).await.unwrap();
    clock.advance(TTL);
    assert_eq!(log.purge_expired().await.unwrap(), 1);
    assert_eq!(log.bytes(), 0);
}

#[tokio::test]
async fn evicts_ended_streams_oldest_ended_first() {
    let log = log(100_000);
    let mut ended = Vec::new();
    for _ in 0..3 {
        let (id, token) = leased(&log).await;
        log.append(id, token, vec![record(20_000)]).await.unwrap();
        ended.push((id, token));
    }
    let [(s1, t1), (s2, t2), (s3, t3)] = ended[..] else {
        unreachable!()
    };
    for (n, id) in [s1, s2].into_iter().enumerate() {
        log.insert_idempotency_key("alice".into(), format!("k{n}"), key(id))
            .await
            .unwrap();
    }
    // They end in the order s2, s1, s3.
    log.finish(s2, t2, StreamState::Finished).await.unwrap();
    log.finish(s1, t1, StreamState::Failed).await.unwrap();
    log.finish(s3, t3, StreamState::Cancelled).await.unwrap();

    let (open, token) = leased(&log).await;
    log.append(open, token, vec![record(30_000)]).await.unwrap();
    assert!(log.bytes() < 100_000);
    assert!(exists(&log, s1).await && exists(&log, s2).await && exists(&log, s3).await);

    // Over the budget: the stream that ended first goes, with its key, and only it.
    log.append(open, token, vec![record(10_000)]).await.unwrap();
    assert!(log.bytes() <= 100_000);
    assert!(!exists(&log, s2).await);
    assert!(exists(&log, s1).await && exists(&log, s3).await);
    let find = |k: &str| log.find_idempotency_key("alice".into(), k.into());
    assert_eq!(find("k1").await.unwrap(), None);
    assert_eq!(find("k0").await.unwrap(), Some(key(s1)));

    // Further over: as many as it takes, in the order they ended.
    log.append(open, token, vec![record(40_000)]).await.unwrap();
    assert!(log.bytes() <= 100_000);
    assert!(!exists(&log, s1).await && !exists(&log, s3).await);
    assert_eq!(find("k0").await.unwrap(), None);
    assert!(matches!(
        log.read(s1, 0).await.err(),
        Some(LogError::NotFound(_))
    ));
    // The open stream kept everything.
    let meta = log.status(open).await.unwrap();
    assert_eq!((meta.first_seq, meta.last_seq), (1, 3));
}

#[tokio::test]
async fn open_streams_are_never_evicted_and_a_create_that_cannot_fit_is_refused() {
    let log = log(50_000);
    let (o1, t1) = leased(&log).await;
    let (o2, t2) = leased(&log).await;
    // Open streams alone go over the budget: their appends still succeed.
    log.append(o1, t1, vec![record(30_000)]).await.unwrap();
    log.append(o2, t2, vec![record(30_000)]).await.unwrap();
    assert!(log.bytes() > 50_000);
    assert!(exists(&log, o1).await && exists(&log, o2).await);

    let new = || NewStream {
        id: StreamId::new(),
        owner: "alice".into(),
        kind: StreamKind::Session,
        request: Bytes::new(),
    };
    let err = log.create(new()).await.unwrap_err();
    assert!(matches!(err, LogError::Full), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "the store's byte budget is spent by open streams"
    );
    let err = log
        .create_leased(new(), "w".into(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Full), "{err:?}");
    assert_eq!(
        log.count_open("alice".into(), StreamKind::Session)
            .await
            .unwrap(),
        2
    );

    // Once one ends, a create evicts it to make room.
    log.finish(o1, t1, StreamState::Finished).await.unwrap();
    assert!(exists(&log, o1).await, "ending alone evicts nothing");
    log.create(new()).await.unwrap();
    assert!(!exists(&log, o1).await);
    assert!(log.bytes() <= 50_000);
    assert_eq!(log.append(o2, t2, vec![record(10)]).await.unwrap(), 2);
}

#[tokio::test]
async fn readers_of_an_evicted_stream_end_with_not_found() {
    let log = log(1_000_000);
    let (id, token) = leased(&log).await;
    // Larger than a fetch chunk in all, so the reader must come back for more.
    let records: Vec<Record> = (0..5).map(|_| record(100_000)).collect();
    log.append(id, token, records).await.unwrap();
    log.finish(id, token, StreamState::Finished).await.unwrap();
    let mut reader = log.read(id, 0).await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap().0, 1);

    let (open, token) = leased(&log).await;
    log.append(open, token, vec![record(600_000)])
        .await
        .unwrap();
    assert!(!exists(&log, id).await);

    // What the reader had fetched already, then NotFound, then the end.
    let mut next = 2;
    loop {
        match reader.next().await {
            Some(Ok((seq, _))) => {
                assert_eq!(seq, next);
                next += 1;
            }
            Some(Err(LogError::NotFound(gone))) => {
                assert_eq!(gone, id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(next < 6, "the reader read past the eviction");
    assert!(reader.next().await.is_none());
    assert!(matches!(
        log.read(id, 0).await.err(),
        Some(LogError::NotFound(_))
    ));
}
