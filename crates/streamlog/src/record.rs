//! The protocol-neutral records a stream holds, and the metadata that describes a
//! stream. Records are what a writer appends (a text delta, a tool-call delta, usage, a
//! finish reason, an error, progress, a custom event); the HTTP layer renders them into
//! each endpoint's wire format. New record kinds are added as new enum variants: the enum
//! is `#[non_exhaustive]` and serialised with an explicit `type` tag, so stored records
//! of older kinds keep decoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{Seq, StreamId};

/// One event in a stream.
///
/// ```
/// use streamlog::Record;
/// let r = Record::Text { text: "Hel".into() };
/// assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"type":"text","text":"Hel"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// A piece of answer text.
    Text {
        /// The text delta.
        text: String,
    },
    /// A delta of one tool call (OpenAI's `tool_calls[i]` chunk shape).
    ToolCall {
        /// Which tool call of the answer this delta belongs to.
        index: u32,
        /// The tool call id, present on the first delta of a call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The function name, present on the first delta of a call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// A fragment of the JSON arguments.
        #[serde(default)]
        arguments: String,
    },
    /// Token usage of the answer, written once before its last record: what the client
    /// sent and received, and what every upstream request it took cost.
    Usage {
        /// Tokens in the prompt (of the first upstream request that answered).
        prompt_tokens: u64,
        /// Tokens generated, over every upstream request: what the client received.
        completion_tokens: u64,
        /// Every upstream request the answer made, in order, failed ones included.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        requests: Vec<UpstreamRequest>,
    },
    /// An upstream request starts serving the answer (the first, or a continuation):
    /// which target and model the records after it come from. Not shown to chat clients
    /// except as the chunks' `model`.
    Upstream {
        /// The target's name.
        target: String,
        /// The model at the upstream.
        model: String,
    },
    /// The answer ended normally (`stop`, `length`, `tool_calls`, …).
    Finish {
        /// The provider's finish reason.
        reason: String,
    },
    /// The answer failed; rendered as an error event.
    Error {
        /// A stable machine-readable code.
        code: String,
        /// A human-readable message (never a raw upstream body).
        message: String,
    },
    /// Progress of a long-running task, as free-form JSON.
    Progress {
        /// The progress payload.
        data: serde_json::Value,
    },
    /// An application-defined event, rendered as SSE `event: <event>`.
    Custom {
        /// The SSE event name.
        event: String,
        /// The payload.
        data: serde_json::Value,
    },
}

/// One upstream request of an answer, and what it cost.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UpstreamRequest {
    /// The target's name.
    pub target: String,
    /// The model at the upstream.
    pub model: String,
    /// How it ended: `ok`, `cut` (broke mid-answer), `cancelled`, `lost` (its writer
    /// stopped), an HTTP status (`429`) or an error code (`upstream_timeout`).
    pub status: String,
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Prompt tokens read from the upstream's cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
    /// True when the upstream reported no usage (a cut stream) and the counts are
    /// estimates: pieces received, and the prompt's characters / 4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// USD, when the target has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Record {
    /// Serialise to the stored JSON form.
    ///
    /// # Errors
    /// Only if a `serde_json::Value` payload cannot be serialised (it always can).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// The length of [`Record::to_json`]'s output, counted without building it: what the
    /// log's byte budgets (hot tails, fetch chunks, the memory store) count a record as
    /// when they have not serialised it anyway.
    pub(crate) fn json_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Serialising a record cannot fail (see `to_json`); if it did, what was written
        // so far is the count.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }
}

/// What a stream is for; decides how the gateway renders and continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// One chat completion.
    Chat,
    /// A long-lived session.
    Session,
    /// A pub/sub topic.
    Topic,
    /// A background task.
    Task,
}

/// Where a stream is in its life. Every state but `Open` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Records may still be appended.
    Open,
    /// Ended normally.
    Finished,
    /// Ended by an error.
    Failed,
    /// Ended by an explicit cancel.
    Cancelled,
}

impl StreamState {
    /// True for every state but `Open`.
    pub fn is_terminal(self) -> bool {
        !matches!(self, StreamState::Open)
    }

    pub(crate) fn to_i64(self) -> i64 {
        match self {
            StreamState::Open => 0,
            StreamState::Finished => 1,
            StreamState::Failed => 2,
            StreamState::Cancelled => 3,
        }
    }

    pub(crate) fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => StreamState::Open,
            1 => StreamState::Finished,
            2 => StreamState::Failed,
            3 => StreamState::Cancelled,
            _ => return None,
        })
    }
}

impl StreamKind {
    pub(crate) fn to_i64(self) -> i64 {
        match self {
            StreamKind::Chat => 0,
            StreamKind::Session => 1,
            StreamKind::Topic => 2,
            StreamKind::Task => 3,
        }
    }

    pub(crate) fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => StreamKind::Chat,
            1 => StreamKind::Session,
            2 => StreamKind::Topic,
            3 => StreamKind::Task,
            _ => return None,
        })
    }
}

/// A fencing token: every lease grant on a stream returns one strictly greater than any
/// granted before on that stream. Appends carry it; older tokens are rejected.
pub type FencingToken = u64;

/// A writer lease on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (e.g. a node id plus a task id).
    pub holder: String,
    /// The fencing token of this grant.
    pub token: FencingToken,
    /// When it expires, in clock milliseconds; after that anyone may acquire it.
    pub expires_at_ms: u64,
}

/// Everything needed to create a stream.
#[derive(Debug, Clone)]
pub struct NewStream {
    /// Its id (usually [`StreamId::new`]).
    pub id: StreamId,
    /// The principal that owns it.
    pub owner: String,
    /// What it is for.
    pub kind: StreamKind,
    /// The originating request, opaque to the log (for chat, the full request body, which
    /// continuation after a takeover needs).
    pub request: Bytes,
}

/// The metadata of a stream, as returned by [`crate::StreamLog::status`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMeta {
    /// Its id.
    pub id: StreamId,
    /// The principal that owns it.
    pub owner: String,
    /// What it is for.
    pub kind: StreamKind,
    /// The originating request.
    pub request: Bytes,
    /// Its state.
    pub state: StreamState,
    /// Creation time, clock milliseconds.
    pub created_ms: u64,
    /// Time of the last change, clock milliseconds: the last append, lease grant, renewal
    /// or release, or the end. Every backend keeps it current for open streams, so
    /// `now - updated_ms` is how long a stream has been idle (what a sweeper of idle
    /// sessions compares, over [`crate::StreamLog::open_streams`]). A trim does not
    /// change it.
    pub updated_ms: u64,
    /// The seq of the last durable record (0 if none). Trimming never lowers it: appends
    /// always continue at `last_seq + 1`.
    pub last_seq: Seq,
    /// The seq of the first record still stored: 1 until [`crate::StreamLog::trim`]
    /// deletes records, `last_seq + 1` when the stream holds none. The stored records are
    /// exactly `first_seq ..= last_seq`; a subscriber that wants everything still kept
    /// ("from earliest") reads after `first_seq - 1`.
    pub first_seq: Seq,
    /// The current writer lease, if any (it may have expired: compare with the clock).
    pub lease: Option<Lease>,
    /// The highest fencing token ever granted on this stream (0 if none).
    pub fence: FencingToken,
}

/// What [`crate::StreamLog::trim`] deletes from the front of a stream: every record
/// matched by at least one of the limits. All limits default to "no limit", so
/// `Trim::default()` deletes nothing.
///
/// ```
/// use std::time::Duration;
/// use streamlog::Trim;
/// // A topic keeping at most 10,000 events, none older than an hour.
/// let policy = Trim {
///     max_records: Some(10_000),
///     max_age: Some(Duration::from_secs(3600)),
///     ..Trim::default()
/// };
/// # drop(policy);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trim {
    /// Delete every record with seq ≤ `keep_after` (0: no limit by position). A value at
    /// or above `last_seq` deletes every record.
    pub keep_after: Seq,
    /// Keep at most this many of the newest records (`Some(0)` deletes every record).
    /// Counted against `last_seq` at the moment the trim runs, in order with appends.
    pub max_records: Option<u64>,
    /// Delete records older than this: appended more than `max_age` before now, by the
    /// log's [`Clock`](crate::Clock). Only a prefix is ever deleted, so the trim stops at
    /// the first record young enough to keep (should the clock have stepped back, an
    /// older record after it is kept until that one ages out too).
    pub max_age: Option<std::time::Duration>,
}

/// An idempotency entry: which stream a (principal, key) pair started, and a hash of
/// the request body so a reuse of the key with a different body can be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyEntry {
    /// The stream the first request with this key created.
    pub stream: StreamId,
    /// A hash of that request's body (the log treats it as opaque bytes).
    pub request_hash: Vec<u8>,
}

/// The result of [`crate::StreamLog::insert_idempotency_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyOutcome {
    /// The key was free and now maps to the given entry.
    Inserted,
    /// The key was already taken; here is what it maps to.
    Existing(IdempotencyEntry),
}
