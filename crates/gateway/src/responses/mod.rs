//! OpenAI's Responses API over the stream log: `POST /v1/responses` asks a chat upstream
//! with the translated request ([`request`]), and the answer is an ordinary chat stream —
//! the same log, supervisor, continuation and takeover as a chat completion. A response
//! is a view of that stream ([`view`]): its events, numbered from 0 by replaying the
//! stream from its first record, so every reader of a response sees the same event under
//! the same `sequence_number`, and `starting_after=N` (or `Last-Event-ID: N`) resumes
//! after any of them.
//!
//! The stream's stored request is the chat completion body with one more key,
//! [`ENVELOPE_KEY`], holding what the response object echoes ([`Envelope`]); adapters
//! never see it (`generation::adapter_request` removes it).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use streamlog::StreamId;

pub mod request;
pub mod view;

/// The key of the stored chat body that marks a response's stream and holds its
/// [`Envelope`].
pub const ENVELOPE_KEY: &str = "unbroken_response";

/// What a response echoes of its request, kept with its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Envelope {
    /// The client-facing model (the stored chat body has it too; kept here so a view
    /// needs no second parse).
    pub model: String,
    /// `instructions`, as given (a system message first in the chat request).
    pub instructions: Option<String>,
    /// `metadata`: up to 16 string values.
    pub metadata: Map<String, Value>,
    /// `tools`, in the Responses form (function tools only).
    pub tools: Vec<Value>,
    /// `tool_choice`, in the Responses form (`"auto"` when not given).
    pub tool_choice: Value,
    /// `parallel_tool_calls` (true when not given).
    pub parallel_tool_calls: bool,
    /// `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `background`.
    pub background: bool,
    /// `store` (true when not given).
    pub store: bool,
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `text` (`{"format": {"type": "text"}}` when not given).
    pub text: Value,
    /// `truncation` (`"disabled"` when not given).
    pub truncation: String,
    /// `user`.
    pub user: Option<String>,
    /// Whether the stored chat messages begin with the `instructions` system message (a
    /// later response continuing this one leaves it out: instructions do not carry over).
    pub instructions_message: bool,
}

/// The response id of the stream `id`: `resp_` and the stream id.
pub fn response_id(id: StreamId) -> String {
    format!("resp_{id}")
}

/// The stream of response id `text`, if it is one.
pub fn stream_of(text: &str) -> Option<StreamId> {
    text.strip_prefix("resp_")?.parse().ok()
}
