//! `unbroken bench`: a load generator for OpenAI-compatible streaming chat completions.
//!
//! It keeps `--concurrency` streams open at once, each a fresh `POST …/chat/completions`
//! with `"stream": true`, starting a new one as soon as one ends until `--requests` have
//! been made or `--duration` has passed. Per stream it measures the time to the first
//! content token (TTFT), every gap between two content tokens, the total time and the
//! tokens; at the end it prints p50/p99 of each, tokens per second overall and the errors.
//! The same tool measures the simulator directly and through the gateway, which is how
//! docs/benchmarks-gateway.md compares them.
//!
//! `--api responses` asks `POST …/responses` (`"input"`, `"stream": true`) instead and
//! counts `response.output_text.delta` events; `--api replay` first stores `--stored`
//! responses, then measures `GET …/responses/{id}?stream=true&starting_after=N` of them
//! (N: `--starting-after`): its TTFT is the time to the first replayed event.
//!
//! It is built not to be the bottleneck: one HTTP/1.1 client whose pool holds a connection
//! per stream, a request body serialised once, the `sse` crate's incremental decoder fed
//! straight from the body chunks, one clock reading per network read, and a token
//! recognised by scanning the chunk's text rather than building a JSON tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use tokio::task::JoinSet;

/// Which API a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `POST …/chat/completions`.
    Chat,
    /// `POST …/responses`.
    Responses,
    /// `GET …/responses/{id}?stream=true&starting_after=N` of stored responses.
    Replay,
}

/// Arguments of `unbroken bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The OpenAI-compatible base URL, e.g. `http://127.0.0.1:8080/v1` (a URL that already
    /// ends in `/chat/completions` is used as it is).
    #[arg(long)]
    url: String,
    /// Which API to measure.
    #[arg(long, value_enum, default_value = "chat")]
    pub api: Api,
    /// With `--api replay`: how many responses to store first (128 at a time).
    #[arg(long, default_value_t = 1000)]
    pub stored: usize,
    /// With `--api replay`: the `starting_after` of every read.
    #[arg(long, default_value_t = 10)]
    pub starting_after: u64,
    /// The model to ask.
    #[arg(long)]
    model: String,
    /// Streams open at once.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Requests in all (default: 4 per concurrent stream).
    #[arg(long, short = 'n', conflicts_with = "duration")]
    requests: Option<u64>,
    /// Keep starting requests for this many seconds (those in flight then finish).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// The user message.
    #[arg(long, default_value = "Tell me something.")]
    prompt: String,
    /// An environment variable holding the API key, sent as `Authorization: Bearer`.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Before measuring, each stream slot makes one unmeasured request, so connections
    /// (here and, through a gateway, upstream) are open and pooled: the numbers then
    /// describe streaming, not a burst of TCP connects.
    #[arg(long)]
    warmup: bool,
    /// Spread the slots' first measured requests evenly over this many seconds instead
    /// of starting them all at once. With equal-length answers a burst stays a burst
    /// (every slot ends and restarts in the same millisecond), so without a ramp the
    /// numbers describe C simultaneous arrivals; with one about as long as an answer,
    /// they describe C streams open at once in a steady state.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    ramp_up: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write every measured request to this file as CSV: when it was sent
    /// (milliseconds from the start of the measurement) and its TTFT in milliseconds, to
    /// see whether slow first tokens cluster in time.
    #[arg(long, value_name = "FILE")]
    samples: Option<std::path::PathBuf>,
}

/// When workers stop starting new requests.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Requests(u64),
    Until(Instant),
}

/// What one worker measured over all its streams.
#[derive(Debug, Default)]
struct Samples {
    /// Microseconds from sending the request to the first content token.
    ttft_us: Vec<u64>,
    /// When each request of `ttft_us` was sent, in the same order.
    sent_at: Vec<Instant>,
    /// Microseconds between consecutive content tokens of a stream.
    gap_us: Vec<u64>,
    /// Microseconds from sending the request to the end of a complete answer.
    total_us: Vec<u64>,
    tokens: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// One CSV line per measured request: when it was sent, in milliseconds after `begin`,
    /// and its TTFT in milliseconds, in the order the requests were measured.
    fn csv(&self, begin: Instant) -> String {
        let mut csv = String::from("sent_ms,ttft_ms\n");
        for (sent, ttft) in self.sent_at.iter().zip(&self.ttft_us) {
            let sent = sent.saturating_duration_since(begin).as_secs_f64() * 1000.0;
            let _ = writeln!(csv, "{sent:.3},{:.3}", *ttft as f64 / 1000.0);
        }
        csv
    }

    fn merge(&mut self, other: Samples) {
        self.ttft_us.extend(other.ttft_us);
        self.sent_at.extend(other.sent_at);
        self.gap_us.extend(other.gap_us);
        self.total_us.extend(other.total_us);
        self.tokens += other.tokens;
        self.completed += other.completed;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

/// Run the benchmark and print the report.
///
/// # Errors
/// Bad arguments, a missing API key variable, or a client that cannot be built. Failed
/// requests are counted in the report, not returned.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let base = args.url.trim_end_matches('/');
    let url = match args.api {
        Api::Chat if base.ends_with("/chat/completions") => base.to_owned(),
        Api::Chat => format!("{base}/chat/completions"),
        Api::Responses | Api::Replay => format!("{base}/responses"),
    };
    let key = match &args.api_key_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("--api-key-env {var} is not set"))?)
        }
        None => None,
    };
    let budget = match (args.requests, args.duration) {
        (_, Some(seconds)) if seconds.is_finite() && seconds > 0.0 => {
            Budget::Until(Instant::now() + Duration::from_secs_f64(seconds))
        }
        (_, Some(_)) => bail!("--duration must be a positive number of seconds"),
        (Some(n), None) => Budget::Requests(n),
        (None, None) => Budget::Requests(4 * args.concurrency as u64),
    };

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let body = bytes::Bytes::from(serde_json::to_vec(&match args.api {
        Api::Chat => serde_json::json!({
            "model": args.model,
            "stream": true,
            "messages": [{ "role": "user", "content": args.prompt }],
        }),
        Api::Responses | Api::Replay => serde_json::json!({
            "model": args.model,
            "stream": args.api == Api::Responses,
            "input": args.prompt,
        }),
    })?);
    let mut request = Target {
        client,
        url,
        body,
        key,
        api: args.api,
        replays: Vec::new(),
        next: AtomicU64::new(0),
    };
    if args.api == Api::Replay {
        request.replays = store_responses(&request, args.stored, 128, args.starting_after).await?;
    }
    let request = Arc::new(request);
    let started = Arc::new(AtomicU64::new(0));

    if args.warmup {
        let mut warming = JoinSet::new();
        for _ in 0..args.concurrency {
            let request = request.clone();
            warming.spawn(async move {
                let mut unmeasured = Samples::default();
                one_stream(&request, &mut unmeasured).await;
                unmeasured.errors.values().sum::<u64>()
            });
        }
        let mut failed = 0;
        while let Some(done) = warming.join_next().await {
            failed += done.context("a warm-up request panicked")?;
        }
        if failed > 0 {
            eprintln!("unbroken bench: {failed} warm-up requests failed");
        }
    }
    let budget = match budget {
        // The clock of a --duration run starts after the warm-up.
        Budget::Until(_) => Budget::Until(Instant::now() + duration_of(args.duration)),
        requests => requests,
    };

    if !(args.ramp_up.is_finite() && args.ramp_up >= 0.0) {
        bail!("--ramp-up must be a number of seconds, 0 or more");
    }
    let step = Duration::from_secs_f64(args.ramp_up) / u32::try_from(args.concurrency)?;
    let begin = Instant::now();
    let mut workers = JoinSet::new();
    for slot in 0..args.concurrency {
        let first = begin + step * u32::try_from(slot)?;
        workers.spawn(worker(request.clone(), budget, started.clone(), first));
    }
    let mut all = Samples::default();
    while let Some(done) = workers.join_next().await {
        all.merge(done.context("a bench worker panicked")?);
    }
    let elapsed = begin.elapsed();
    if let Some(path) = &args.samples {
        std::fs::write(path, all.csv(begin))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let report = Report::new(&args, all, elapsed);
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Everything a request needs, shared by the workers.
struct Target {
    client: reqwest::Client,
    url: String,
    body: bytes::Bytes,
    key: Option<String>,
    api: Api,
    /// With `--api replay`: the URLs of the stored responses' replays, read in turn.
    replays: Vec<String>,
    next: AtomicU64,
}

/// Store `n` responses (`concurrency` at a time) and return the URLs replaying each after
/// `starting_after`.
async fn store_responses(
    target: &Target,
    n: usize,
    concurrency: usize,
    starting_after: u64,
) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::with_capacity(n);
    let mut storing = futures_util::stream::iter(0..n)
        .map(|_| async {
            let mut request = target
                .client
                .post(&target.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(target.body.clone());
            if let Some(key) = &target.key {
                request = request.bearer_auth(key);
            }
            let body = request.send().await?.error_for_status()?.bytes().await?;
            let response: serde_json::Value = serde_json::from_slice(&body)?;
            anyhow::Ok(response["id"].as_str().unwrap_or_default().to_owned())
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(id) = storing.next().await {
        let id = id.context("storing a response to replay")?;
        urls.push(format!(
            "{}/{id}?stream=true&starting_after={starting_after}",
            target.url
        ));
    }
    Ok(urls)
}

/// One concurrent stream slot: requests one answer after another until the budget ends.
async fn worker(
    target: Arc<Target>,
    budget: Budget,
    started: Arc<AtomicU64>,
    first: Instant,
) -> Samples {
    let mut samples = Samples::default();
    tokio::time::sleep_until(first.into()).await;
    loop {
        match budget {
            Budget::Requests(n) => {
                if started.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
            }
            Budget::Until(deadline) => {
                if Instant::now() >= deadline {
                    break;
                }
                started.fetch_add(1, Ordering::Relaxed);
            }
        }
        one_stream(&target, &mut samples).await;
    }
    samples
}

/// Make one streaming request and record what it measured into `samples`.
async fn one_stream(target: &Target, samples: &mut Samples) {
    let sent = Instant::now();
    let mut request = if target.api == Api::Replay {
        let at = target.next.fetch_add(1, Ordering::Relaxed) as usize;
        target
            .client
            .get(&target.replays[at % target.replays.len().max(1)])
            .header(reqwest::header::ACCEPT, "text/event-stream")
    } else {
        target
            .client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(target.body.clone())
    };
    if let Some(key) = &target.key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            samples.error(if error.is_connect() {
                "connect"
            } else {
                "request"
            });
            return;
        }
    };
    if !response.status().is_success() {
        samples.error(format!("http {}", response.status().as_u16()));
        return;
    }

    let mut body = response.bytes_stream();
    let mut decoder = sse::Decoder::new();
    let mut first: Option<Instant> = None;
    let mut last = sent;
    let mut tokens = 0u64;
    let mut done = false;
    while let Some(chunk) = body.next().await {
        let now = Instant::now();
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(_) => {
                samples.error("body cut");
                return;
            }
        };
        if decoder.push(&chunk).is_err() {
            samples.error("sse decode");
            return;
        }
        while let Some(frame) = decoder.next_frame() {
            let sse::Frame::Event(event) = frame else {
                continue;
            };
            let token = match target.api {
                Api::Chat => has_content(&event.data),
                Api::Responses => event.event == "response.output_text.delta",
                // A replay's first event is its first token, whatever it is.
                Api::Replay => true,
            };
            if event.data == "[DONE]"
                || event.event == "response.completed"
                || event.event == "response.incomplete"
            {
                done = true;
            } else if event.data.starts_with("{\"error\"") || event.event == "response.failed" {
                samples.error("error event");
                return;
            } else if token {
                tokens += 1;
                match first {
                    None => {
                        first = Some(now);
                        samples.ttft_us.push(micros(now - sent));
                        samples.sent_at.push(sent);
                    }
                    Some(_) => samples.gap_us.push(micros(now - last)),
                }
                last = now;
            }
        }
        if done {
            break;
        }
    }
    if !done {
        samples.error("no [DONE]");
        return;
    }
    samples.total_us.push(micros(sent.elapsed()));
    samples.tokens += tokens;
    samples.completed += 1;
}

/// Whether a chat completion chunk carries a non-empty `delta.content`, found by scanning
/// for `"content"` followed by a string that is not `""` — no JSON tree per token.
fn has_content(data: &str) -> bool {
    let mut rest = data;
    while let Some(at) = rest.find("\"content\"") {
        rest = &rest[at + "\"content\"".len()..];
        let value = rest.trim_start();
        let Some(value) = value.strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        if let Some(text) = value.strip_prefix('"') {
            return !text.starts_with('"');
        }
    }
    false
}

fn duration_of(seconds: Option<f64>) -> Duration {
    Duration::from_secs_f64(seconds.unwrap_or(0.0))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Spread {
    fn of(mut us: Vec<u64>) -> Spread {
        if us.is_empty() {
            return Spread::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the sample at or below.
            let rank = (q * us.len() as f64).ceil() as usize;
            us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Spread {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn json(self) -> serde_json::Value {
        serde_json::json!({ "p50": self.p50, "p99": self.p99, "max": self.max })
    }
}

/// The summary printed at the end.
struct Report {
    url: String,
    model: String,
    concurrency: usize,
    warmup: bool,
    ramp_up: f64,
    completed: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    tokens: u64,
    seconds: f64,
    ttft: Spread,
    gap: Spread,
    total: Spread,
}

impl Report {
    fn new(args: &Args, samples: Samples, elapsed: Duration) -> Report {
        Report {
            url: args.url.clone(),
            model: args.model.clone(),
            concurrency: args.concurrency,
            warmup: args.warmup,
            ramp_up: args.ramp_up,
            completed: samples.completed,
            errors: samples.errors.values().sum(),
            error_kinds: samples.errors,
            tokens: samples.tokens,
            seconds: elapsed.as_secs_f64(),
            ttft: Spread::of(samples.ttft_us),
            gap: Spread::of(samples.gap_us),
            total: Spread::of(samples.total_us),
        }
    }

    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(f64::EPSILON)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url,
            "model": self.model,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "ramp_up_s": self.ramp_up,
            "completed": self.completed,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s(),
            "requests_per_s": self.completed as f64 / self.seconds.max(f64::EPSILON),
            "ttft_ms": self.ttft.json(),
            "inter_token_ms": self.gap.json(),
            "total_ms": self.total.json(),
        })
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} model={} concurrency={}{}{}",
            self.url,
            self.model,
            self.concurrency,
            if self.warmup { " (after warm-up)" } else { "" },
            if self.ramp_up > 0.0 {
                format!(" (ramp-up {} s)", self.ramp_up)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "completed {} in {:.2} s, errors {}, tokens {} ({:.0} tokens/s)",
            self.completed,
            self.seconds,
            self.errors,
            self.tokens,
            self.tokens_per_s()
        );
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(out, "  error {kind}: {n}");
        }
        let _ = writeln!(out, "{:<16}{:>10}{:>10}{:>10}", "ms", "p50", "p99", "max");
        for (name, spread) in [
            ("ttft", self.ttft),
            ("inter-token", self.gap),
            ("total", self.total),
        ] {
            let _ = writeln!(
                out,
                "{name:<16}{:>10.3}{:>10.3}{:>10.3}",
                spread.p50, spread.p99, spread.max
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_found_without_parsing() {
        assert!(has_content(
            r#"{"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}"#
        ));
        assert!(has_content(r#"{"delta": {"content" : "x"}}"#));
        assert!(!has_content(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!has_content(r#"{"choices":[{"delta":{"content":null}}]}"#));
        assert!(!has_content(
            r#"{"choices":[],"usage":{"completion_tokens":3}}"#
        ));
    }

    #[test]
    fn samples_csv_has_one_line_per_first_token() {
        let begin = Instant::now();
        let samples = Samples {
            ttft_us: vec![1500, 250],
            sent_at: vec![begin + Duration::from_micros(2000), begin],
            ..Samples::default()
        };
        assert_eq!(
            samples.csv(begin),
            "sent_ms,ttft_ms\n2.000,1.500\n0.000,0.250\n"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let spread = Spread::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!((spread.p50, spread.p99, spread.max), (50.0, 99.0, 100.0));
        let one = Spread::of(vec![2500]);
        assert_eq!((one.p50, one.p99), (2.5, 2.5));
    }
}
