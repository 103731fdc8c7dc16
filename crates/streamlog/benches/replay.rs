//! Replay of 10,000 ~100-byte records from storage: a finished stream in a freshly
//! reopened log (sqlite: nothing in the hot tail; redis: a new connection, as another
//! node's), read from seq 0; time to the first and to the last record. Prints the median
//! and best of several runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use streamlog::{
    NewStream, Record, RedisConfig, RedisLog, SqliteConfig, SqliteLog, StreamId, StreamKind,
    StreamLog, StreamState, SystemClock,
};

const RECORDS: u64 = 10_000;
const RUNS: usize = 15;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.db");
    let sqlite = || -> Arc<dyn StreamLog> {
        Arc::new(SqliteLog::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap())
    };
    rt.block_on(replay("sqlite", &sqlite));
    let server = streamlog::redis::LocalServer::start().unwrap();
    let redis = || -> Arc<dyn StreamLog> {
        let config = RedisConfig::new(server.url.clone());
        Arc::new(RedisLog::open(config, Arc::new(SystemClock)).unwrap())
    };
    rt.block_on(replay("redis", &redis));
}

/// Write the stream through one log from `open`, then replay it through fresh ones.
async fn replay(name: &str, open: &dyn Fn() -> Arc<dyn StreamLog>) {
    {
        let id = StreamId::new();
        {
            let log = open();
            log.create(NewStream {
                id,
                owner: "bench".into(),
                kind: StreamKind::Chat,
                request: Bytes::new(),
            })
            .await
            .unwrap();
            let lease = log
                .acquire_lease(id, "bench".into(), Duration::from_secs(60))
                .await
                .unwrap();
            for chunk in 0..RECORDS / 100 {
                let batch = (0..100)
                    .map(|i| Record::Text {
                        text: format!("{:078}", chunk * 100 + i),
                    })
                    .collect();
                log.append(id, lease.token, batch).await.unwrap();
            }
            log.finish(id, lease.token, StreamState::Finished)
                .await
                .unwrap();
        }
        let mut first = Vec::new();
        let mut last = Vec::new();
        for _ in 0..RUNS {
            let log = open();
            let start = Instant::now();
            let mut reader = log.read(id, 0).await.unwrap();
            let mut n = 0u64;
            while let Some(item) = reader.next().await {
                item.unwrap();
                n += 1;
                if n == 1 {
                    first.push(start.elapsed());
                }
            }
            last.push(start.elapsed());
            assert_eq!(n, RECORDS);
        }
        first.sort();
        last.sort();
        println!(
            "replay/{name} {RECORDS} records: first record median {:?} (best {:?}); last record median {:?} (best {:?}); {:.0} records/s",
            first[RUNS / 2],
            first[0],
            last[RUNS / 2],
            last[0],
            RECORDS as f64 / last[RUNS / 2].as_secs_f64()
        );
    }
}
