//! [`ChatRequest`]: the OpenAI Chat Completions request, as every adapter receives it.
//!
//! Fields the gateway understands are typed; everything else is kept in `extra` and
//! passed through to OpenAI-compatible upstreams unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool` (or `developer`).
    pub role: String,
    /// A string, or an array of content parts; null for assistant tool-call messages.
    #[serde(default)]
    pub content: Value,
    /// Any other field (`name`, `tool_calls`, `tool_call_id`, …), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// The message's text: the string content, or its text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        }
    }
}

/// A chat completion request for one upstream target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The upstream's model name (the gateway has already mapped its own name).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens (`max_completion_tokens` is read into it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Seed for reproducible sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// A partial answer to continue (assistant prefill): the provider generates what
    /// follows it and returns only the new text. Never serialised to upstreams as is.
    #[serde(skip)]
    pub assistant_prefix: Option<String>,
    /// Every other field of the request (`tools`, `stop`, `response_format`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
