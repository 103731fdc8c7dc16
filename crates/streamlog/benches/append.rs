//! Append throughput (events/s) with 1, 100 and 10,000 concurrently appending streams,
//! ~100-byte records, single-record appends and batches of 16, memory, sqlite and redis
//! (a throwaway `redis-server` on a Unix socket, no persistence).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use streamlog::{
    MemoryLog, NewStream, Record, RedisConfig, RedisLog, SqliteConfig, SqliteLog, StreamId,
    StreamKind, StreamLog, SystemClock,
};

/// A ~100-byte record (its JSON is 100 bytes).
fn record() -> Record {
    Record::Text {
        text: "x".repeat(78),
    }
}

async fn streams(log: &Arc<dyn StreamLog>, n: usize) -> Vec<(StreamId, u64)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
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
        out.push((id, lease.token));
    }
    out
}

/// Every stream appends `appends` batches of `batch` records, all concurrently.
async fn run(log: &Arc<dyn StreamLog>, streams: &[(StreamId, u64)], appends: usize, batch: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for &(id, token) in streams {
        let log = Arc::clone(log);
        tasks.spawn(async move {
            for _ in 0..appends {
                let records = (0..batch).map(|_| record()).collect();
                log.append(id, token, records).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let redis = streamlog::redis::LocalServer::start().unwrap();
    for backend in ["memory", "sqlite", "redis"] {
        let log: Arc<dyn StreamLog> = match backend {
            "memory" => Arc::new(MemoryLog::new(Arc::new(SystemClock))),
            "redis" => Arc::new(
                RedisLog::open(RedisConfig::new(redis.url.clone()), Arc::new(SystemClock)).unwrap(),
            ),
            _ => Arc::new(
                SqliteLog::open(
                    SqliteConfig::new(dir.path().join("append.db")),
                    Arc::new(SystemClock),
                )
                .unwrap(),
            ),
        };
        for n in [1usize, 100, 10_000] {
            for batch in [1usize, 16] {
                // About 32k events per iteration, at least one append per stream.
                let appends = (32_768 / (n * batch)).max(1);
                let events = (n * appends * batch) as u64;
                group.throughput(Throughput::Elements(events));
                let id = BenchmarkId::new(format!("{backend}/batch{batch}"), format!("{n}streams"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                let s = streams(&log, n).await;
                                let start = Instant::now();
                                run(&log, &s, appends, batch).await;
                                total += start.elapsed();
                            }
                            total
                        })
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
