//! Fan-out of one topic to many subscribers over real TCP: events delivered per second
//! and publish → receive latency (p50, p99).
//!
//! `cargo bench -p unbroken-gateway --bench topic_fanout -- [SUBSCRIBERS] [EVENTS]`
//! (defaults 10000 and 50). The gateway runs in this process unless `UNBROKEN_URL` names
//! a running one (`unbroken serve`): 10,000 subscribers need 20,000 descriptors when both
//! ends live in one process, more than this machine's hard limit of 20,000 allows with
//! anything else open. Either way the gateway and the subscribers share the machine's
//! cores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use gateway::{AppState, Config};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;

fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let subscribers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let tracker = TaskTracker::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let url = match std::env::var("UNBROKEN_URL") {
        Ok(url) => url,
        Err(_) => {
            let env = [("UNBROKEN__STORE__KIND".to_owned(), "memory".to_owned())];
            let config: Config = Config::load(None, env).unwrap();
            let log = gateway::open_log(&config.store).unwrap();
            let state = AppState::new(&config, log).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tracker.spawn(gateway::run(listener, state, async move {
                let _ = stopped.await;
            }));
            url
        }
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(subscribers * events)));
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    let began = Instant::now();
    let readers = TaskTracker::new();
    for _ in 0..subscribers {
        let (client, url, latencies, connected) = (
            client.clone(),
            url.clone(),
            latencies.clone(),
            connected.clone(),
        );
        readers.spawn(async move {
            let response = client
                .get(format!("{url}/v1/topics/bench"))
                .send()
                .await
                .unwrap();
            connected.add_permits(1);
            let mut frames = sse::EventStream::new(response.bytes_stream());
            let mut mine = Vec::with_capacity(events);
            while mine.len() < events {
                match frames.next().await {
                    Some(Ok(sse::Frame::Event(event))) => {
                        let sent: u64 = event.data.parse().unwrap();
                        mine.push(now_us().saturating_sub(sent));
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            latencies.lock().await.extend(mine);
        });
    }
    let _all = connected
        .acquire_many(u32::try_from(subscribers).unwrap())
        .await
        .unwrap();
    println!(
        "{subscribers} subscribers connected in {:.2?}",
        began.elapsed()
    );

    let publisher = reqwest::Client::new();
    let start = Instant::now();
    for _ in 0..events {
        let body = format!("{{\"event\":\"tick\",\"data\":{}}}", now_us());
        let response = publisher
            .post(format!("{url}/v1/topics/bench/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await; // a paced publisher, 50/s
    }
    readers.close();
    readers.wait().await;
    let elapsed = start.elapsed();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "delivered {} events to {subscribers} subscribers in {elapsed:.2?}: {:.0} events/s; \
         publish→receive p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    let _ = stop.send(());
    tracker.close();
    tracker.wait().await;
}
