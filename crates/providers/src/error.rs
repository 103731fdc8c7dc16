//! [`ProviderError`]: what went wrong upstream, and whether trying again may help.

use std::time::Duration;

/// An upstream failure. Messages are ours, never raw upstream bodies, so they are safe to
/// show to clients.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The upstream could not be reached (DNS, refused, TLS, reset before headers).
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The upstream answered with an error status.
    #[error("upstream answered HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
        /// The upstream's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// No response, first token or next token in time.
    #[error("upstream timed out ({0})")]
    Timeout(&'static str),
    /// The upstream stream broke or ended without a finish reason.
    #[error("upstream stream interrupted: {0}")]
    Interrupted(String),
    /// The upstream sent something we could not understand.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The request cannot be served by this provider (bad parameters, missing model).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The upstream refused the request itself (HTTP 400, 413 or 422: a context too long,
    /// a parameter out of range): neither a retry nor another target will change that.
    /// Unlike every other variant, the message is the upstream's own explanation (its
    /// `error.message`, bounded), because it is about the client's request.
    #[error("{message}")]
    Rejected {
        /// The upstream's status.
        status: u16,
        /// The upstream's explanation.
        message: String,
        /// The upstream's error code when it is a plain identifier
        /// (e.g. `context_length_exceeded`).
        code: Option<String>,
    },
}

impl ProviderError {
    /// Whether the request itself is at fault, so that no other target should be tried.
    pub fn is_the_requests_fault(&self) -> bool {
        matches!(
            self,
            ProviderError::InvalidRequest(_) | ProviderError::Rejected { .. }
        )
    }

    /// Whether retrying the same request (or falling back to another target) may help:
    /// connection errors, timeouts, interruptions and 408/429/500/502/503/504, and 529
    /// (Anthropic's "overloaded").
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_)
            | ProviderError::Timeout(_)
            | ProviderError::Interrupted(_) => true,
            ProviderError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 529)
            }
            ProviderError::Protocol(_)
            | ProviderError::InvalidRequest(_)
            | ProviderError::Rejected { .. } => false,
        }
    }

    /// The status a client of the gateway should see when this error ends a request
    /// before its first token.
    pub fn status_code(&self) -> u16 {
        match self {
            ProviderError::Connect(_)
            | ProviderError::Interrupted(_)
            | ProviderError::Protocol(_) => 502,
            ProviderError::Timeout(_) => 504,
            ProviderError::Status { status: 429, .. } => 429,
            ProviderError::Status { status, .. } if *status >= 500 => 502,
            ProviderError::Status { .. } => 502,
            ProviderError::InvalidRequest(_) => 400,
            ProviderError::Rejected { status, .. } => *status,
        }
    }

    /// A stable machine-readable code for error records and JSON errors (for a refusal,
    /// the upstream's own code when it sent a plain one).
    pub fn code(&self) -> &str {
        match self {
            ProviderError::Connect(_) => "upstream_unreachable",
            ProviderError::Status { status: 429, .. } => "upstream_rate_limited",
            ProviderError::Status { .. } => "upstream_error",
            ProviderError::Timeout(_) => "upstream_timeout",
            ProviderError::Interrupted(_) => "upstream_interrupted",
            ProviderError::Protocol(_) => "upstream_protocol_error",
            ProviderError::InvalidRequest(_) => "invalid_request",
            ProviderError::Rejected { code, .. } => code.as_deref().unwrap_or("upstream_rejected"),
        }
    }

    /// The upstream's requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
