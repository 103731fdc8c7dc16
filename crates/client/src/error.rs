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
    #[error("server answered HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `error.message` of an OpenAI-shaped error body, when the server sent one.
        message: Option<String>,
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

/// The `error.message` of an OpenAI-shaped error body (`{"error":{"message":…}}`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["error"]["message"].as_str().map(str::to_owned)
}

/// Read an error response's body (at most 64 KiB, for at most `within`) for its message.
pub(crate) async fn message_of(response: reqwest::Response, within: Duration) -> Option<String> {
    if response
        .content_length()
        .is_some_and(|length| length > 64 * 1024)
    {
        return None;
    }
    let body = tokio::time::timeout(within, response.bytes())
        .await
        .ok()?
        .ok()?;
    error_message(&body)
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
