//! `unbroken chat`: ask a question, stream the answer, survive drops.
//!
//! stdout carries the answer text only; stderr names the stream (`stream <id>`) so it can
//! be resumed with `unbroken listen`, and shows the connection state and, at the end, TTFT
//! and tokens/s. Ctrl-C cancels the answer on the server. Exit codes: 0 done, 1 failed,
//! 130 cancelled.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use unbroken_client::chat::{Chat, ChatEvent, cancel};
use unbroken_client::{Policy, State};

/// Arguments of `unbroken chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The question; without it, an interactive session with history (one line a turn).
    prompt: Option<String>,
    /// The gateway's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The model (default: the first the gateway lists).
    #[arg(long)]
    model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// The environment variable holding the API key.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f64>,
}

/// How one answer ended.
enum Outcome {
    Done(String),
    Cancelled,
}

/// Run the command.
///
/// # Errors
/// Permanent failures: the gateway unreachable after retries, an error answer.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let api_key = match &args.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("{var} is not set"))?),
        None => None,
    };
    let model = match &args.model {
        Some(model) => model.clone(),
        None => first_model(&args.url, api_key.as_deref()).await?,
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    if let Some(prompt) = &args.prompt {
        messages.push(json!({ "role": "user", "content": prompt }));
        return Ok(
            match ask(&args, &model, &messages, api_key.as_deref()).await? {
                Outcome::Done(_) => ExitCode::SUCCESS,
                Outcome::Cancelled => ExitCode::from(130),
            },
        );
    }
    eprintln!(
        "chatting with {model} at {} (an empty line or Ctrl-D ends)",
        args.url
    );
    let stdin = io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        messages.push(json!({ "role": "user", "content": line.trim_end() }));
        match ask(&args, &model, &messages, api_key.as_deref()).await? {
            Outcome::Done(answer) => {
                messages.push(json!({ "role": "assistant", "content": answer }));
            }
            Outcome::Cancelled => return Ok(ExitCode::from(130)),
        }
    }
}

async fn ask(
    args: &Args,
    model: &str,
    messages: &[Value],
    api_key: Option<&str>,
) -> anyhow::Result<Outcome> {
    let mut body = json!({ "model": model, "messages": messages, "stream": true });
    if let Some(temperature) = args.temperature {
        body["temperature"] = json!(temperature);
    }
    // Ten reconnections in a row without an event (each event resets the count), at
    // most 10 s apart: an answer is worth waiting for, a dead gateway is not.
    let policy = Policy {
        max_delay: Duration::from_secs(10),
        ..Policy::default()
    };
    let started = Instant::now();
    let mut chat = Chat::start(&args.url, body, api_key, policy)?;
    eprintln!("connecting to {} …", args.url);
    let mut out = io::stdout().lock();
    let mut answer = String::new();
    let mut first_token = None;
    let mut pieces = 0u64;
    let mut completion_tokens = None;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let event = tokio::select! {
            event = chat.next() => event,
            _ = &mut interrupt => {
                if let Some(id) = chat.stream_id() {
                    cancel(&args.url, &id, api_key).await.context("cancelling the stream")?;
                }
                writeln!(out)?;
                eprintln!("cancelled");
                return Ok(Outcome::Cancelled);
            }
        };
        let Some(event) = event else {
            break;
        };
        match event? {
            ChatEvent::Started { stream_id } => eprintln!("stream {stream_id}"),
            ChatEvent::Text(text) => {
                first_token.get_or_insert_with(|| started.elapsed());
                pieces += 1;
                answer.push_str(&text);
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            ChatEvent::Usage {
                completion_tokens: n,
                ..
            } => completion_tokens = Some(n),
            ChatEvent::Finish { reason } if reason != "stop" => {
                eprintln!("\n(finished: {reason})");
            }
            ChatEvent::Finish { .. } => {}
            ChatEvent::Error { code, message } => {
                writeln!(out)?;
                if code == "cancelled" {
                    eprintln!("the answer was cancelled");
                    return Ok(Outcome::Cancelled);
                }
                bail!("the answer failed: {message} ({code})");
            }
            ChatEvent::State(State::RetryScheduled {
                attempt,
                delay,
                error,
            }) => eprintln!(
                "\n[{error}; reconnecting in {:.1} s (attempt {attempt})]",
                delay.as_secs_f64()
            ),
            ChatEvent::State(State::Resumed { last_event_id }) => {
                eprintln!("[resumed after event {last_event_id}]");
            }
            ChatEvent::State(_) => {}
        }
    }
    writeln!(out)?;
    let total = started.elapsed();
    let tokens = completion_tokens.unwrap_or(pieces);
    let ttft = first_token.unwrap_or(total);
    let rate = tokens as f64 / (total - ttft).as_secs_f64().max(1e-3);
    eprintln!(
        "done: {tokens} tokens, TTFT {} ms, {rate:.1} tokens/s",
        ttft.as_millis()
    );
    Ok(Outcome::Done(answer))
}

async fn first_model(url: &str, api_key: Option<&str>) -> anyhow::Result<String> {
    let mut request = unbroken_client::chat::http_client()?
        .get(format!("{}/v1/models", url.trim_end_matches('/')));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let why =
            unbroken_client::error::error_message(&body).unwrap_or_else(|| status.to_string());
        let hint = if status.as_u16() == 401 && api_key.is_none() {
            " (pass --api-key-env VAR, VAR holding the key)"
        } else {
            ""
        };
        anyhow::bail!("the gateway refused to list its models: {why}{hint}");
    }
    let models: Value = serde_json::from_slice(&body).context("the model list is not JSON")?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .context("the gateway lists no models; pass --model")
}
