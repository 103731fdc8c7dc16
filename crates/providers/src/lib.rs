//! Provider adapters: where answers come from.
//!
//! A [`Provider`] turns a [`ChatRequest`] into a [`DeltaStream`] of [`Delta`]s. The
//! gateway's router adds what is common to every upstream — concurrency limits, queues,
//! timeouts, retries, fallback and continuation — so adapters stay small and only
//! translate wire formats.
//!
//! # Layout
//! - [`request`]: [`ChatRequest`] and [`Message`], the OpenAI-shaped request every
//!   adapter receives (with `assistant_prefix` for continuation).
//! - [`delta`]: [`Delta`], one piece of an answer, and the [`DeltaStream`] type.
//! - [`error`]: [`ProviderError`], which knows its status and whether a retry may help.
//! - [`upstream`]: what the HTTP adapters share (posting, error statuses, reading events).
//! - [`openai`]: any Chat Completions-compatible server (OpenAI, vLLM, Ollama, …).
//! - [`anthropic`]: Anthropic's Messages API (Claude).
//! - [`gemini`]: Google's Gemini API (`streamGenerateContent`).
//! - [`simulator`]: synthetic answers with fault injection, for load and fault tests
//!   only — never presented as a model — also servable as a standalone HTTP server.

pub mod anthropic;
pub mod delta;
pub mod error;
pub mod gemini;
pub mod openai;
pub mod request;
pub mod simulator;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;

pub use delta::{Delta, DeltaStream};
pub use error::ProviderError;
pub use request::{ChatRequest, Message};

/// How an upstream continues a partial answer: where the partial answer goes in the
/// request. A provider that cannot continue is never used to continue (no instruction
/// prompt pretends it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Continuation {
    /// It cannot (OpenAI; current Claude models refuse a prefill with 400).
    #[default]
    None,
    /// A trailing assistant message holds the partial answer (llama.cpp server, Ollama,
    /// SGLang, older Claude models); in-process providers continue natively.
    AssistantMessage,
    /// The trailing assistant message carries `"prefix": true` (DeepSeek, Mistral).
    PrefixFlag,
    /// vLLM: `continue_final_message: true` with `add_generation_prompt: false`.
    ContinueFinalMessage,
}

/// The future [`Provider::stream`] returns.
pub type ProviderFuture<'a> =
    Pin<Box<dyn Future<Output = Result<DeltaStream, ProviderError>> + Send + 'a>>;

/// A source of answers.
pub trait Provider: Send + Sync + 'static {
    /// The adapter's kind, for logs and metrics (`"openai"`, `"simulator"`, …).
    fn kind(&self) -> &'static str;

    /// How this provider continues a partial answer ([`ChatRequest::assistant_prefix`]),
    /// if it can.
    fn continuation(&self) -> Continuation;

    /// Whether a partial answer can be continued on this provider.
    fn supports_prefill(&self) -> bool {
        self.continuation() != Continuation::None
    }

    /// Start an answer. The future resolves once the upstream accepted the request
    /// (status 200 and headers received), so an early refusal is an `Err` here, not an
    /// item of the stream. Dropping the stream cancels the upstream request.
    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_>;
}
