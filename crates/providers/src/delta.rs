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
    /// Token counts, usually just before the end.
    Usage {
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Generated tokens.
        completion_tokens: u64,
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
