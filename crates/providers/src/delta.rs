//! [`Delta`]: one piece of an answer as a provider produces it.

use std::pin::Pin;

use futures_util::Stream;

use crate::error::ProviderError;

/// One piece of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Answer text.
    Text(String),
    /// A fragment of a tool call (OpenAI's `tool_calls[i]` delta).
    ToolCall {
        /// Which tool call of the answer this fragment belongs to.
        index: u32,
        /// The call's id, on its first fragment.
        id: Option<String>,
        /// The function name, on its first fragment.
        name: Option<String>,
        /// A fragment of the JSON arguments.
        arguments: String,
    },
    /// Token counts of this upstream request, usually just before the end. A later
    /// `Usage` of the same request replaces an earlier one (Anthropic reports the prompt
    /// at the start and the completion at the end).
    Usage {
        /// Prompt tokens, cached ones included.
        prompt_tokens: u64,
        /// Generated tokens.
        completion_tokens: u64,
        /// Of the prompt tokens, those read from the upstream's prompt cache (billed at
        /// the cached-input price).
        cached_tokens: u64,
    },
    /// The answer ended normally for this reason (`stop`, `length`, `tool_calls`, …).
    /// A stream that ends without a `Finish` was cut short: that is an error, never a
    /// normal end.
    Finish {
        /// The upstream's finish reason.
        reason: String,
    },
}

/// An answer in progress.
pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<Delta, ProviderError>> + Send>>;
