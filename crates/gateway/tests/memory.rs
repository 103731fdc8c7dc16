//! Memory stays within the byte budgets while large events are published to readers that
//! do not read (issue 18 §5 and §7). Its own test binary, so the process's peak resident
//! memory (`VmHWM`) is this test's alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Gateway, http};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// A subscriber that sends its request, reads the response head, then never reads again.
async fn stalled_reader(url: &str, path: &str) -> TcpStream {
    let mut socket = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0; 12];
    socket.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_to_stalled_readers_stay_within_the_byte_budgets() {
    const EVENT_BYTES: usize = 900 * 1024;
    const EVENTS: usize = 80;
    const READERS: usize = 16;
    // It runs on SQLite whatever the store: the reruns on other stores would repeat it.
    if std::env::var("UNBROKEN_TEST_STORE").is_ok_and(|store| store != "memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Evicting slow readers is off: this test is about what they hold while connected.
    let gateway = Gateway::start_sqlite(dir.path(), "[limits]\nslow_reader_timeout_ms = 0\n").await;
    let payload = "x".repeat(EVENT_BYTES);
    let publish = |n: usize| {
        let url = format!("{}/v1/topics/big/events", gateway.url);
        let body = json!({"event": "blob", "data": {"n": n, "blob": payload}});
        async move {
            let published = http().post(url).json(&body).send().await.unwrap();
            assert!(published.status().is_success(), "{}", published.status());
        }
    };
    publish(0).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(stalled_reader(&gateway.url, "/v1/topics/big?from=earliest").await);
    }
    let before = status_bytes("VmHWM:");
    for n in 1..EVENTS {
        publish(n).await;
    }
    let grown = status_bytes("VmHWM:").saturating_sub(before);
    let published = (EVENTS * EVENT_BYTES) as u64;
    // 72 MB published to 16 readers that take nothing. Budgets: the open stream's hot
    // tail (256 KiB), each reader's chunk (256 KiB) and rendered batch (64 KiB + one
    // event), the publish in flight (its body, parsed value and record: a few MB), and
    // SQLite's page cache. Holding the events (the old 4,096-record tail) would be 72 MB
    // and more; every reader's copy, 16 times that.
    assert!(
        grown < 32 << 20,
        "peak memory grew {} MB while {} MB were published",
        grown >> 20,
        published >> 20
    );
    drop(readers);
}

#[tokio::test]
async fn a_reader_that_takes_nothing_is_evicted_and_resumes_without_a_loss() {
    let gateway = Gateway::start("[limits]\nslow_reader_timeout_ms = 300\n").await;
    let blob = "y".repeat(256 * 1024);
    let publish = |n: usize| {
        let url = format!("{}/v1/topics/slow/events", gateway.url);
        let body = json!({"event": "blob", "data": {"n": n, "blob": blob}});
        async move {
            let published = http().post(url).json(&body).send().await.unwrap();
            assert!(published.status().is_success(), "{}", published.status());
        }
    };
    publish(0).await;
    let mut stalled = stalled_reader(&gateway.url, "/v1/topics/slow?from=earliest").await;
    // More than the socket buffers hold: writes to the reader stall.
    for n in 1..64 {
        publish(n).await;
    }
    let readers = || {
        gateway
            .state
            .holdings
            .count(gateway::limits::Held::Readers, "anonymous")
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while readers() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was never evicted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The connection was closed: what was sent arrives, then the end.
    let mut received = Vec::new();
    // Closed with data unsent: an end or a reset (an error), either way no more data.
    let _end_or_reset = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stalled.read_to_end(&mut received),
    )
    .await
    .expect("the connection ends");
    let text = String::from_utf8_lossy(&received);
    let last_id = text
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .next_back()
        .expect("some events arrived")
        .to_owned();
    // Resuming from the last id it got delivers the rest, the last event included.
    let resumed = http()
        .get(format!("{}/v1/topics/slow", gateway.url))
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut events = common::Events::new(resumed);
    loop {
        let event = events.next().await.expect("events up to the last");
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        if data["n"] == 63 {
            break;
        }
    }
}
