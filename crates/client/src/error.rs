//! [`ClientError`]: one enum for everything that can stop or interrupt a reader.

use std::time::Duration;

/// Why a connection attempt or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be built (bad URL, bad header). Permanent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection, or the connection failed before the response headers.
    #[error("connection failed: {0}")]
    Connect(#[source] reqwest::Error),
    /// No response headers within the connect timeout.
    #[error("no response within {0:?}")]
    ConnectTimeout(Duration),
    /// The server answered with a status other than 200 (or 204).
    #[error("server answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// Whether the policy lists this status as retryable.
        retryable: bool,
    },
    /// A 200 response that is not `text/event-stream`. Permanent.
    #[error("expected Content-Type text/event-stream, got {0:?}")]
    ContentType(String),
    /// The connection broke while reading the body.
    #[error("connection lost: {0}")]
    Read(#[source] reqwest::Error),
    /// No byte at all (heartbeats included) arrived for the idle timeout.
    #[error("no data for {0:?}")]
    Idle(Duration),
    /// The server sent an event over the size limit. Permanent.
    #[error(transparent)]
    Decode(#[from] sse::DecodeError),
}

impl ClientError {
    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect(_)
            | ClientError::ConnectTimeout(_)
            | ClientError::Read(_)
            | ClientError::Idle(_) => true,
            ClientError::Status { retryable, .. } => *retryable,
            ClientError::InvalidRequest(_)
            | ClientError::ContentType(_)
            | ClientError::Decode(_) => false,
        }
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
