//! `unbroken bench-takeover`: how answers in flight come through a `kill -9`.
//!
//! It runs `unbroken serve` (this same binary) on a fresh SQLite file with the simulator
//! model, starts `--streams` streaming answers, waits until every one has streamed a few
//! tokens, kills the gateway with SIGKILL, and starts it again on the same file. The
//! restarted node takes its own answers over at once; for each answer the bench then
//! reads from the last event the log held and measures the time from the restart (the
//! new process being spawned) to the first continued token, and checks that every
//! answer ends with `[DONE]` and the whole text of an uninterrupted answer.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use tokio::task::JoinSet;

/// Arguments of `unbroken bench-takeover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Answers in flight when the gateway is killed.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Tokens per answer (the simulator's).
    #[arg(long, default_value_t = 1000)]
    tokens: u32,
    /// Milliseconds between the simulator's tokens.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Events each answer streams before the kill.
    #[arg(long, default_value_t = 5)]
    before_kill: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// A `unbroken serve` child, killed when dropped.
struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(dir: &std::path::Path) -> anyhow::Result<Gateway> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut child = std::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.join("unbroken.toml"))
            .arg("--store")
            .arg(format!("sqlite:{}", dir.join("u.db").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start unbroken serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let Some(line) = lines.next() else {
                bail!("unbroken serve exited before listening");
            };
            if let Some(url) = line?.trim().strip_prefix("unbroken listening on ") {
                break url.to_owned();
            }
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Gateway { child, url })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer after the restart.
struct Continued {
    /// From the restart to its first continued token.
    first: Duration,
    /// From the restart to its `[DONE]`.
    done: Duration,
    /// Its whole text, as read from the start.
    text: String,
}

/// Run the bench.
///
/// # Errors
/// When the gateway cannot be started or an answer does not come through whole.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("unbroken-takeover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(
        dir.join("unbroken.toml"),
        format!(
            "[[models]]\nname = \"sim\"\ntargets = [{{ provider = \"simulator\", tokens = {}, interval_ms = {}, max_concurrency = {} }}]\n",
            args.tokens,
            args.interval_ms,
            args.streams.max(1)
        ),
    )?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let body = serde_json::json!({
        "model": "sim",
        "stream": true,
        "messages": [{ "role": "user", "content": "Tell me something." }],
    })
    .to_string();

    let first = Gateway::start(&dir)?;
    let mut started = JoinSet::new();
    for _ in 0..args.streams {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", first.url);
        let body = body.clone();
        let before_kill = args.before_kill;
        started.spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let id = response
                .headers()
                .get("unbroken-stream-id")
                .and_then(|v| v.to_str().ok())
                .context("no stream id")?
                .to_owned();
            let mut events = sse::EventStream::new(response.bytes_stream());
            let mut seen = 0;
            while seen < before_kill {
                match events.next().await {
                    Some(Ok(sse::Frame::Event(_))) => seen += 1,
                    Some(Ok(_)) => {}
                    _ => bail!("the answer ended before the kill"),
                }
            }
            // The reader stays attached until the kill.
            Ok::<_, anyhow::Error>((id, events))
        });
    }
    let mut ids = Vec::new();
    let mut readers = Vec::new();
    while let Some(joined) = started.join_next().await {
        let (id, events) = joined??;
        ids.push(id);
        readers.push(events);
    }
    drop(first); // SIGKILL, then reaped
    drop(readers);

    let restart = Instant::now();
    let second = Gateway::start(&dir)?;
    let listening = restart.elapsed();
    let mut continued = JoinSet::new();
    for id in ids {
        let http = http.clone();
        let url = second.url.clone();
        continued.spawn(async move { follow(&http, &url, &id, restart).await });
    }
    let mut results = Vec::new();
    while let Some(joined) = continued.join_next().await {
        results.push(joined??);
    }
    let expected = results.first().map(|r| r.text.clone()).unwrap_or_default();
    let whole = results.iter().filter(|r| r.text == expected).count();
    let words = expected.split_whitespace().count();
    let mut firsts: Vec<Duration> = results.iter().map(|r| r.first).collect();
    let mut dones: Vec<Duration> = results.iter().map(|r| r.done).collect();
    firsts.sort();
    dones.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |v: &[Duration], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "streams": results.len(),
                "whole": whole,
                "words_per_answer": words,
                "listening_ms": ms(listening),
                "first_continued_ms": { "p50": ms(at(&firsts, 0.5)), "p99": ms(at(&firsts, 0.99)), "max": ms(at(&firsts, 1.0)) },
                "done_ms": { "p50": ms(at(&dones, 0.5)), "max": ms(at(&dones, 1.0)) },
            })
        );
    } else {
        println!(
            "answers killed in flight: {}; finished whole after the restart: {whole} ({words} words each)",
            results.len()
        );
        println!("restart to listening:        {:8.1} ms", ms(listening));
        println!(
            "restart to first continued:  p50 {:8.1} ms   p99 {:8.1} ms   max {:8.1} ms",
            ms(at(&firsts, 0.5)),
            ms(at(&firsts, 0.99)),
            ms(at(&firsts, 1.0))
        );
        println!(
            "restart to [DONE]:           p50 {:8.1} ms   max {:8.1} ms",
            ms(at(&dones, 0.5)),
            ms(at(&dones, 1.0))
        );
    }
    Ok(if whole == results.len() && words == args.tokens as usize {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Read stream `id` from the restarted gateway: from the last event the log held (the
/// first one after it is the first continued token), then the whole text from the start.
async fn follow(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    restart: Instant,
) -> anyhow::Result<Continued> {
    let status = http
        .get(format!("{url}/v1/streams/{id}/status"))
        .send()
        .await?
        .bytes()
        .await?;
    let status: serde_json::Value = serde_json::from_slice(&status)?;
    let held = status["seq"].as_u64().context("no seq")?;
    let response = http
        .get(format!("{url}/v1/streams/{id}"))
        .header("last-event-id", held.to_string())
        .send()
        .await?;
    let mut events = sse::EventStream::new(response.bytes_stream());
    let mut first = None;
    let done = loop {
        match events.next().await {
            Some(Ok(sse::Frame::Event(event))) if event.data == "[DONE]" => {
                break restart.elapsed();
            }
            Some(Ok(sse::Frame::Event(event))) => {
                if event.data.contains("\"error\"") {
                    bail!("stream {id} ended with {}", event.data);
                }
                first.get_or_insert_with(|| restart.elapsed());
            }
            Some(Ok(_)) => {}
            _ => bail!("stream {id} ended without [DONE]"),
        }
    };
    let whole = http
        .get(format!("{url}/v1/streams/{id}"))
        .send()
        .await?
        .bytes()
        .await?;
    let mut text = String::new();
    let mut decoder =
        sse::EventStream::new(futures_util::stream::iter([Ok::<_, std::io::Error>(whole)]));
    while let Some(Ok(frame)) = decoder.next().await {
        if let sse::Frame::Event(event) = frame
            && let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&event.data)
            && let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str()
        {
            text.push_str(piece);
        }
    }
    Ok(Continued {
        first: first.unwrap_or(done),
        done,
        text,
    })
}

/// Removes the bench's directory when dropped.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
