//! A generation's whole life, from the request that starts it to the last record of its
//! stream, including its takeover when the process writing it died.
//!
//! `http/` handlers call in here and render what comes back; nothing here knows HTTP.
//! Errors are [`GenerationError`]s, which `http/` maps to the status a client sees.
//!
//! # Layout
//! - `start`: [`start`] creates the stream with this node's lease, claims the
//!   idempotency key, and runs the writer — as one detached unit, so a request dropped
//!   half-way can never leave a key pointing at a stream nobody writes.
//! - `supervisor`: the writer of one answer: upstream through the router, appends,
//!   lease renewal, `reader_grace`, continuation after an upstream failure, the end.
//! - `lease`: lease holders (node id and incarnation), [`LogHealth`] for `/ready`.
//! - `takeover`: the node's scan for streams whose writer died; continues them.
//! - `follow`: a reader that ends `interrupted` when a stream's writer is gone for good.
//! - `relay`: copies an answer into its session channel (and resumes after takeover).

mod calls;
mod follow;
mod lease;
mod relay;
mod start;
mod supervisor;
mod takeover;

use bytes::Bytes;
use providers::{ChatRequest, ProviderError};
use serde_json::{Map, Value};
use streamlog::{LogError, Record};

pub use follow::{Reading, interrupted, reader, watched};
pub use lease::{LogHealth, node_of};
pub use relay::Relay;
pub use start::{Begun, Start, start};
pub use supervisor::{Outcome, cancellation, end_unwritten};
pub use takeover::scan_periodically;

/// Why a generation could not start, or ended before its first token.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// Every target of the model was busy for its whole queue timeout.
    #[error("every upstream of this model is busy")]
    Busy {
        /// Suggested wait in seconds.
        retry_after: u64,
    },
    /// The upstream refused or failed before the first token.
    #[error("{0}")]
    Upstream(ProviderError),
    /// The stream log refused a write.
    #[error("the stream log: {0}")]
    Log(#[from] LogError),
    /// Cancelled or stopped (shutdown) before the first token.
    #[error("the answer was stopped before it began")]
    Stopped,
    /// The same idempotency key came with a different request body.
    #[error("the idempotency key was used with a different request")]
    IdempotencyMismatch,
    /// A bug: the generation panicked before it began.
    #[error("the generation panicked")]
    Panicked,
}

/// The request adapters receive, from a chat request body that was validated when it
/// came in: `stream` and `stream_options` are the gateway's, `max_completion_tokens` is
/// read as `max_tokens`.
///
/// # Errors
/// When the fields do not fit [`ChatRequest`].
pub fn adapter_request(mut object: Map<String, Value>) -> Result<ChatRequest, serde_json::Error> {
    object.remove("stream");
    object.remove("stream_options");
    object.remove(crate::responses::ENVELOPE_KEY);
    if let Some(max) = object.remove("max_completion_tokens")
        && !object.contains_key("max_tokens")
    {
        object.insert("max_tokens".into(), max);
    }
    serde_json::from_value(Value::Object(object))
}

/// How long an answer nobody reads keeps going when it runs in the background (a
/// Responses API `background: true` response): in effect, until it ends.
pub const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Whether the stored request body is of a response created with `background: true`.
pub fn runs_in_background(body: &Bytes) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|body| {
        body.get(crate::responses::ENVELOPE_KEY)
            .and_then(|envelope| envelope.get("background"))
            .and_then(Value::as_bool)
            == Some(true)
    })
}

/// The model name and adapter request of a chat stream, from its stored request body.
fn stored_request(body: &Bytes) -> Option<(String, ChatRequest)> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let model = object.get("model")?.as_str()?.to_owned();
    Some((model, adapter_request(object).ok()?))
}

/// Every record of stream `id` up to `last` (never follows live).
///
/// # Errors
/// The log's.
pub async fn records_until(
    log: &dyn streamlog::StreamLog,
    id: streamlog::StreamId,
    last: streamlog::Seq,
) -> Result<Vec<Record>, LogError> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let mut records = log.read(id, 0).await?;
    while let Some(item) = records.next().await {
        let (seq, record) = item?;
        out.push(record);
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// An `interrupted` error record saying why and where an answer was cut.
fn interruption(message: String) -> Record {
    Record::Error {
        code: "interrupted".into(),
        message,
    }
}

/// What a stream's records say about the answer so far (for a takeover).
#[derive(Debug, Default)]
struct SoFar {
    /// The text streamed.
    text: String,
    /// Text records (≈ tokens generated).
    pieces: u32,
    /// A record that cannot be continued from text: a tool call, progress, custom.
    other: bool,
    /// The finish reason, when the answer finished but its stream was not ended.
    finish: Option<String>,
    /// An error record, when the answer failed but its stream was not ended.
    error: bool,
    /// The target and model of the last upstream request that served.
    serving: Option<(String, String)>,
}

impl SoFar {
    fn add(&mut self, record: &Record) {
        match record {
            Record::Text { text } => {
                self.text.push_str(text);
                self.pieces = self.pieces.saturating_add(1);
            }
            Record::Usage { .. } => {}
            Record::Upstream { target, model } => {
                self.serving = Some((target.clone(), model.clone()));
            }
            Record::Finish { reason } => self.finish = Some(reason.clone()),
            Record::Error { .. } => self.error = true,
            _ => self.other = true,
        }
    }
}
