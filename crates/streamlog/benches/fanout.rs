//! Live fan-out latency: one writer, 1,000 readers following the same stream; the time
//! from the start of `append` (so including the sqlite commit) to each reader receiving
//! the record. The writer appends the next record only after every reader got the
//! previous one, so this measures wake-up latency, not queueing. Prints p50/p99/max.
//! Redis twice: readers on the writer's own connection (one node), and on a second
//! `RedisLog` (another node: woken through Redis's notification channel).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use streamlog::{
    MemoryLog, NewStream, Record, RedisConfig, RedisLog, SqliteConfig, SqliteLog, StreamId,
    StreamKind, StreamLog, StreamState, SystemClock,
};
use tokio::sync::Notify;

const READERS: usize = 1_000;
const ROUNDS: u64 = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `log` writes; the readers read through `readers_log` (the same log, or another node's).
async fn measure(name: &str, log: Arc<dyn StreamLog>, readers_log: Arc<dyn StreamLog>) {
    let id = StreamId::new();
    log.create(NewStream {
        id,
        owner: "bench".into(),
        kind: StreamKind::Chat,
        request: Bytes::new(),
    })
    .await
    .unwrap();
    let lease = log
        .acquire_lease(id, "bench".into(), Duration::from_secs(3600))
        .await
        .unwrap();
    let base = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(Notify::new());
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let mut reader = readers_log.read(id, 0).await.unwrap();
        let (received, all_in) = (Arc::clone(&received), Arc::clone(&all_in));
        readers.spawn(async move {
            let mut samples = Vec::with_capacity(ROUNDS as usize);
            while let Some(item) = reader.next().await {
                let (_, record) = item.unwrap();
                let now = base.elapsed();
                if let Record::Custom { data, .. } = record {
                    let sent = Duration::from_nanos(data.as_u64().unwrap());
                    samples.push(now - sent);
                }
                if received.fetch_add(1, Ordering::AcqRel) + 1 == READERS {
                    received.store(0, Ordering::Release);
                    all_in.notify_one();
                }
            }
            samples
        });
    }
    for _ in 0..ROUNDS {
        let sent = base.elapsed().as_nanos() as u64;
        let record = Record::Custom {
            event: "tick".into(),
            data: sent.into(),
        };
        log.append(id, lease.token, vec![record]).await.unwrap();
        all_in.notified().await;
    }
    log.finish(id, lease.token, StreamState::Finished)
        .await
        .unwrap();
    let mut all = Vec::with_capacity(READERS * ROUNDS as usize);
    while let Some(r) = readers.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort();
    println!(
        "fanout/{name}: {} samples ({READERS} readers x {ROUNDS} appends): p50 {:?}  p99 {:?}  max {:?}",
        all.len(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all[all.len() - 1],
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: skip the slow
    // part then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let memory: Arc<dyn StreamLog> = Arc::new(MemoryLog::new(Arc::new(SystemClock)));
        measure("memory", Arc::clone(&memory), memory).await;
        let sqlite: Arc<dyn StreamLog> = Arc::new(
            SqliteLog::open(
                SqliteConfig::new(dir.path().join("fanout.db")),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        measure("sqlite", Arc::clone(&sqlite), sqlite).await;
        let server = streamlog::redis::LocalServer::start().unwrap();
        let node = || -> Arc<dyn StreamLog> {
            let config = RedisConfig::new(server.url.clone());
            Arc::new(RedisLog::open(config, Arc::new(SystemClock)).unwrap())
        };
        let a = node();
        measure("redis (one node)", Arc::clone(&a), Arc::clone(&a)).await;
        measure("redis (across nodes)", a, node()).await;
    });
}
