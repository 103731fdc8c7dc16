//! Durability across `kill -9`: this test binary re-executes itself as a child (selected
//! by an environment variable) that appends to four streams of a sqlite log and prints
//! every acknowledged seq; the parent kills it with SIGKILL after reading some acks,
//! reopens the file, takes the streams over, and checks that every acknowledged record
//! is there, in order, with no gap. No sleeps: the parent acts on what the child printed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use streamlog::{
    Clock, ManualClock, NewStream, Record, SqliteConfig, SqliteLog, StreamId, StreamKind,
    StreamLog, StreamState, SystemClock,
};

const CHILD_ENV: &str = "UNBROKEN_STREAMLOG_KILL9_CHILD";
const STREAMS: usize = 4;
const ACKS_BEFORE_KILL: usize = 400;

fn text(n: usize, seq: u64) -> Record {
    Record::Text {
        text: format!("{n}:{seq}"),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_ENV) {
        Ok(path) => runtime.block_on(child(path)),
        Err(_) => {
            runtime.block_on(parent());
            println!("test kill9_keeps_every_acknowledged_append ... ok");
        }
    }
}

/// Append forever, printing `ack <stream> <seq>` after each acknowledged append.
async fn child(path: String) {
    let log: Arc<dyn StreamLog> =
        Arc::new(SqliteLog::open(SqliteConfig::new(path), Arc::new(SystemClock)).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..STREAMS {
        let id = StreamId::new();
        log.create(NewStream {
            id,
            owner: "kill9".into(),
            kind: StreamKind::Chat,
            request: Bytes::new(),
        })
        .await
        .unwrap();
        let lease = log
            .acquire_lease(id, "child".into(), Duration::from_secs(3600))
            .await
            .unwrap();
        tx.send(format!("stream {n} {id}")).unwrap();
        let (log, tx) = (Arc::clone(&log), tx.clone());
        tasks.spawn(async move {
            let mut last = 0u64;
            for i in 0..1_000_000u64 {
                let size = 1 + i % 3;
                let batch = (last + 1..=last + size).map(|s| text(n, s)).collect();
                last = log.append(id, lease.token, batch).await.unwrap();
                if tx.send(format!("ack {n} {last}")).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

async fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill9.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut ids: HashMap<usize, StreamId> = HashMap::new();
    let mut acked: HashMap<usize, u64> = HashMap::new();
    let mut acks = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["stream", n, id] => {
                ids.insert(n.parse().unwrap(), id.parse().unwrap());
            }
            ["ack", n, seq] => {
                let (n, seq): (usize, u64) = (n.parse().unwrap(), seq.parse().unwrap());
                let prev = acked.insert(n, seq).unwrap_or(0);
                assert!(seq > prev);
                acks += 1;
                if acks == ACKS_BEFORE_KILL {
                    // std's `Child::kill` sends SIGKILL on Unix.
                    child.kill().unwrap();
                    break;
                }
            }
            _ => panic!("unexpected child output: {line}"),
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "child must have been killed");
    assert_eq!(ids.len(), STREAMS);

    // Reopen with a clock past the dead writer's lease, take over, end, and replay.
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms() + 2 * 3600 * 1000));
    let log = SqliteLog::open(SqliteConfig::new(&path), clock).unwrap();
    for (n, id) in &ids {
        let meta = log.status(*id).await.unwrap();
        let acked = acked.get(n).copied().unwrap_or(0);
        assert_eq!(meta.state, StreamState::Open);
        assert!(
            meta.last_seq >= acked,
            "stream {n}: acknowledged {acked}, found {}",
            meta.last_seq
        );
        let lease = log
            .acquire_lease(*id, "parent".into(), Duration::from_secs(10))
            .await
            .unwrap();
        log.finish(*id, lease.token, StreamState::Failed)
            .await
            .unwrap();
        let mut reader = log.read(*id, 0).await.unwrap();
        let mut expected = 1;
        while let Some(item) = reader.next().await {
            let (seq, record) = item.unwrap();
            assert_eq!((seq, record), (expected, text(*n, expected)));
            expected += 1;
        }
        assert_eq!(expected - 1, meta.last_seq);
    }
}
