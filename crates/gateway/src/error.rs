//! [`ApiError`]: every error a client sees, rendered in OpenAI's shape
//! `{"error":{"message","type","code"}}` with the right status. Messages are ours: no
//! internal error text or upstream body reaches a client — except the explanation of an
//! upstream that refused the request itself ([`providers::ProviderError::Rejected`]),
//! which is about the client's request.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// A stable code, e.g. `model_not_found` (or an upstream's own, e.g.
    /// `context_length_exceeded`).
    pub code: std::borrow::Cow<'static, str>,
    /// A sentence for people.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: impl Into<std::borrow::Cow<'static, str>>,
        message: String,
    ) -> Self {
        Self {
            status,
            kind,
            code: code.into(),
            message,
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    /// 401: no or unknown API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "a valid API key is required: Authorization: Bearer <key>".into(),
        )
    }

    /// 401: a bearer token that was refused, saying why.
    pub fn bad_token(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_token",
            why.to_owned(),
        )
    }

    /// 415: a body that does not say it is JSON.
    pub fn not_json() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json".into(),
        )
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "this endpoint does not answer that HTTP method".into(),
        )
    }

    /// 404: no such thing (or not yours — the two are not told apart).
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    /// 421: the request names another host (a DNS-rebinding page, without auth).
    pub fn misdirected() -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            "invalid_host",
            "this gateway answers only to its own host names; add yours to \
             [server] allowed_hosts"
                .into(),
        )
    }

    /// 403: the principal may not do this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            code,
            message.into(),
        )
    }

    /// 409: the request conflicts with the resource's state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 413: one record (an event, a task's progress or result) is over the limit.
    pub fn record_too_large(index: Option<usize>, limit: usize) -> Self {
        let what = index.map_or_else(|| "the record".to_owned(), |i| format!("events[{i}]"));
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "record_too_large",
            format!("{what} is larger than {limit} bytes ([store] max_record_bytes)"),
        )
    }

    /// 408: the client took too long to send its request body.
    pub fn request_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                after.as_millis()
            ),
        )
    }

    /// 422: an idempotency key reused with a different body.
    pub fn idempotency_mismatch() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body".into(),
        )
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                code,
                message.into(),
            )
        }
    }

    /// 500: something of ours failed; the details go to the log, not the client.
    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "the gateway failed to handle the request; it has been logged".into(),
        )
    }

    /// 503: the gateway is shutting down or its store is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message.into(),
        )
    }

    /// An upstream failure before the first token, after retries and fallback.
    pub fn upstream(error: &providers::ProviderError) -> Self {
        let status = StatusCode::from_u16(error.status_code()).unwrap_or(StatusCode::BAD_GATEWAY);
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status.is_client_error() {
            "invalid_request_error"
        } else {
            "upstream_error"
        };
        // Every 429 says when to come back: the upstream's wait, or a second when it gave
        // none (the SDKs back off by themselves either way).
        let retry_after = error
            .retry_after()
            .map(|d| d.as_secs().max(1))
            .or((status == StatusCode::TOO_MANY_REQUESTS).then_some(1));
        Self {
            retry_after,
            ..Self::new(status, kind, error.code().to_owned(), error.to_string())
        }
    }

    /// 400: a request hyper could not parse, answered before any handler (see
    /// `accept::refusals`): a malformed request line or header, two different
    /// `Content-Length`s, a `Transfer-Encoding` whose last coding is not `chunked`.
    pub fn malformed_http() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "malformed_request",
            "the request is not valid HTTP/1.1: a malformed request line or header, two \
             different Content-Length headers, or a Transfer-Encoding that does not end in \
             chunked"
                .into(),
        )
    }

    /// 414: a request URI longer than an `http::Uri` holds (65,534 bytes).
    pub fn uri_too_long() -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            "uri_too_long",
            "the request URI is longer than 65534 bytes".into(),
        )
    }

    /// 431: a request line and headers larger than the connection's read buffer.
    pub fn head_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "headers_too_large",
            "the request line and headers are too large".into(),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<streamlog::LogError> for ApiError {
    fn from(error: streamlog::LogError) -> Self {
        match error {
            streamlog::LogError::NotFound(_) => {
                ApiError::not_found("stream_not_found", "no such stream")
            }
            error @ streamlog::LogError::Storage(_) => {
                tracing::error!(%error, "the stream log failed");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::unavailable("the stream log is unavailable; try again shortly")
                }
            }
            streamlog::LogError::Full => ApiError {
                code: "store_full".into(),
                retry_after: Some(5),
                ..ApiError::unavailable(
                    "the store's byte budget is spent by answers in flight; try again shortly",
                )
            },
            other => ApiError::internal("stream log", &other),
        }
    }
}

impl From<crate::generation::GenerationError> for ApiError {
    fn from(error: crate::generation::GenerationError) -> Self {
        use crate::generation::GenerationError;
        match error {
            GenerationError::Busy { retry_after } => ApiError::rate_limited(
                "model_busy",
                "every upstream of this model is busy; try again later",
                retry_after,
            ),
            GenerationError::Upstream(error) => ApiError::upstream(&error),
            GenerationError::Log(error) => error.into(),
            GenerationError::Stopped => ApiError::unavailable(error.to_string()),
            GenerationError::IdempotencyMismatch => ApiError::idempotency_mismatch(),
            GenerationError::Panicked => ApiError::internal("the generation panicked", &error),
        }
    }
}
