//! `unbroken listen <url>`: print a stream's events as they arrive, resuming across drops.
//!
//! stdout carries the events only — the data of each event (prefixed `[event] ` when the
//! event has a type other than `message`), or with `--json` one JSON object per line —
//! so it can be piped; connection state goes to stderr.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use futures_util::StreamExt;
use unbroken_client::{EventSource, Policy, Request, State, Update};

/// Arguments of `unbroken listen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stream's URL (http://…).
    url: String,
    /// Print one JSON object per line: {"id", "event", "data"}, and {"retry"} lines.
    #[arg(long)]
    json: bool,
    /// Resume after this event id (sent as Last-Event-ID on the first request).
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Extra request header, as 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Reconnections allowed in a row without receiving an event (default 10).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Keep reconnecting forever.
    #[arg(long, conflicts_with = "max_retries")]
    forever: bool,
}

/// Run the command; `Ok` carries the exit code for a stream that ended as expected.
///
/// # Errors
/// A bad URL or header, or a permanent failure of the stream (wrong content type, a
/// non-retryable status, retries exhausted after errors).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut request = Request::get(&args.url)?;
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header {header:?} is not 'Name: value'"))?;
        request = request.header(name.trim(), value.trim())?;
    }
    request.last_event_id = args.last_event_id.clone();
    let mut policy = Policy::default();
    if args.forever {
        policy.max_retries = None;
    } else if let Some(max) = args.max_retries {
        policy.max_retries = Some(max);
    }

    let mut source = EventSource::new(request, policy)?;
    let mut out = io::stdout().lock();
    while let Some(update) = source.next().await {
        let written = match update? {
            Update::Event(event) => print_event(&mut out, &event, args.json),
            Update::Retry(ms) if args.json => {
                writeln!(out, "{}", serde_json::json!({ "retry": ms }))
            }
            Update::Retry(_) => Ok(()),
            Update::State(state) => {
                report(&state);
                Ok(())
            }
        };
        if let Err(error) = written.and_then(|()| out.flush()) {
            if error.kind() == io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS); // the reader of our stdout went away
            }
            return Err(error).context("writing to stdout");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(out: &mut impl Write, event: &sse::Event, json: bool) -> io::Result<()> {
    if json {
        let id = (!event.id.is_empty()).then_some(event.id.as_str());
        let line = serde_json::json!({ "id": id, "event": event.event, "data": event.data });
        writeln!(out, "{line}")
    } else if event.event == "message" {
        writeln!(out, "{}", event.data)
    } else {
        writeln!(out, "[{}] {}", event.event, event.data)
    }
}

fn report(state: &State) {
    match state {
        State::Connected { attempt: 0 } => {}
        State::Connected { attempt } => eprintln!("reconnected (attempt {attempt})"),
        State::Resumed { last_event_id } => eprintln!("resumed after event {last_event_id}"),
        State::RetryScheduled {
            attempt,
            delay,
            error,
        } => eprintln!(
            "{error}; reconnecting in {:.1} s (attempt {attempt})",
            delay.as_secs_f64()
        ),
        State::Exhausted => {}
    }
}
