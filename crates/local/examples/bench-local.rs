#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
//! Measures the embedded model: load time, time to first token, tokens/s for one stream
//! and for several concurrent streams, and resident memory.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release -p unbroken-local --example bench-local -- [threads] [tokens] [concurrency]
//! ```

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use local::{LocalOptions, LocalProvider, default_model_path};
use providers::{ChatRequest, Delta, Message, Provider};
use serde_json::{Map, Value};

fn request(user: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: local::MODEL_ID.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: Value::String(user.into()),
            extra: Map::new(),
        }],
        temperature: Some(0.0),
        top_p: None,
        max_tokens: Some(max_tokens),
        seed: None,
        assistant_prefix: None,
        extra: Map::new(),
    }
}

struct Run {
    ttft: Duration,
    total: Duration,
    tokens: u64,
    text: String,
}

async fn run(provider: &LocalProvider, request: ChatRequest) -> Run {
    let started = Instant::now();
    let mut stream = provider.stream(request).await.unwrap();
    let mut ttft = None;
    let mut tokens = 0;
    let mut text = String::new();
    while let Some(delta) = stream.next().await {
        match delta.unwrap() {
            Delta::Text(piece) => {
                ttft.get_or_insert_with(|| started.elapsed());
                text.push_str(&piece);
            }
            Delta::Usage {
                completion_tokens, ..
            } => tokens = completion_tokens,
            _ => {}
        }
    }
    Run {
        ttft: ttft.unwrap_or_default(),
        total: started.elapsed(),
        tokens,
        text,
    }
}

/// Decode rate after the first token (the prompt's prefill is in the TTFT).
fn decode_rate(run: &Run) -> f64 {
    (run.tokens.saturating_sub(1)) as f64 / (run.total - run.ttft).as_secs_f64()
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = args.first().copied().unwrap_or(0);
    let tokens = args.get(1).copied().unwrap_or(128) as u32;
    let concurrency = args.get(2).copied().unwrap_or(2);
    let options = LocalOptions {
        threads,
        ..LocalOptions::default()
    };
    println!("load average before: {}", loadavg());
    let started = Instant::now();
    let provider = LocalProvider::load(&default_model_path(), options.clone()).unwrap();
    println!(
        "load: {:.2} s, threads {}, RSS {}",
        started.elapsed().as_secs_f64(),
        options.effective_threads(),
        status("VmRSS:")
    );

    let france = run(&provider, request("What is the capital of France?", 24)).await;
    println!("answer: {:?}", france.text);

    let story = "Write a long story about a dragon who learns to cook.";
    // Warm-up, then three single-stream runs.
    run(&provider, request(story, 16)).await;
    for i in 0..3 {
        let r = run(&provider, request(story, tokens)).await;
        println!(
            "single #{i}: TTFT {:.0} ms, {} tokens, {:.1} tokens/s (decode), {:.1} tokens/s (end to end)",
            r.ttft.as_secs_f64() * 1e3,
            r.tokens,
            decode_rate(&r),
            r.tokens as f64 / r.total.as_secs_f64()
        );
    }

    let started = Instant::now();
    let runs = futures_util::future::join_all(
        (0..concurrency).map(|_| run(&provider, request(story, tokens))),
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    let total: u64 = runs.iter().map(|r| r.tokens).sum();
    for (i, r) in runs.iter().enumerate() {
        println!(
            "concurrent {concurrency} #{i}: TTFT {:.0} ms, {} tokens, {:.1} tokens/s (decode)",
            r.ttft.as_secs_f64() * 1e3,
            r.tokens,
            decode_rate(r)
        );
    }
    println!(
        "concurrent {concurrency}: {total} tokens in {wall:.2} s = {:.1} tokens/s aggregate",
        total as f64 / wall
    );
    println!("RSS now {}, peak {}", status("VmRSS:"), status("VmHWM:"));
    println!("load average after: {}", loadavg());
}
