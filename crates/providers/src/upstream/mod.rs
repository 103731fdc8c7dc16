//! What every HTTP adapter shares: one [`Upstream`] (URL, headers, connection pool) that
//! POSTs a JSON body and hands back an event-stream response or a classified
//! [`ProviderError`], and [`events`], which turns that response into [`Delta`](crate::Delta)s
//! through a wire-format [`events::WireDecoder`].
//!
//! An error status never shows the upstream's body to clients (it is only logged at debug
//! level), except 400, 413 and 422 — the upstream refusing the request itself — which
//! become [`ProviderError::Rejected`] with the upstream's own `error.message`.
//! https is rustls with the `ring` provider and the platform's certificate verifier.

pub(crate) mod events;
pub(crate) mod prefix;

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProviderError;

/// How much of an error body is read (for the debug log, or a refusal's explanation).
const ERROR_BODY_LIMIT: usize = 4096;
/// The longest upstream explanation passed on to a client, in characters.
const REJECTION_MESSAGE_LIMIT: usize = 1000;
/// How long reading an error body may take before it is given up on.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `Retry-After` honoured; longer ones (or absurd ones like `1e20`) are
/// capped, never a panic.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Install rustls' `ring` crypto provider as the process default, unless one is already
/// installed. The workspace's `reqwest` has no provider of its own, so building a client
/// panics without one; every adapter calls this itself.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// One upstream endpoint: where requests go, the headers every request carries, and a
/// connection pool.
pub(crate) struct Upstream {
    url: String,
    headers: HeaderMap,
    http: reqwest::Client,
}

/// `base_url` without trailing slashes, checked to be `http(s)://…`.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] otherwise.
pub(crate) fn base_url(base_url: &str) -> Result<&str, ProviderError> {
    let base = base_url.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        Ok(base)
    } else {
        Err(ProviderError::InvalidRequest(format!(
            "the upstream base URL must start with http:// or https:// (got {base:?})"
        )))
    }
}

/// A header value the logs never show.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] when `value` is not a valid header value.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, ProviderError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::InvalidRequest("the API key is not a valid header value".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl Upstream {
    /// An upstream at `url` sending `headers` plus the operator's `extra_headers` with
    /// every request (JSON in, an event stream asked for).
    ///
    /// # Errors
    /// [`ProviderError::InvalidRequest`] when a header name or value is invalid, or the
    /// HTTP client cannot be built.
    pub(crate) fn new(
        url: String,
        mut headers: HeaderMap,
        extra_headers: &[(String, String)],
        connect_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        for (name, value) in extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ProviderError::InvalidRequest(format!("invalid upstream header name {name:?}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProviderError::InvalidRequest(format!("invalid value for upstream header {name}"))
            })?;
            headers.append(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|error| {
                ProviderError::InvalidRequest(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self { url, headers, http })
    }

    /// POST `body` and return the response once it is known to be a 200 event stream.
    ///
    /// # Errors
    /// [`ProviderError::Connect`] / [`ProviderError::Timeout`] before headers,
    /// [`ProviderError::Rejected`] for 400/413/422, [`ProviderError::Status`] (with
    /// `Retry-After`) for every other status but 200, and [`ProviderError::Protocol`]
    /// for a 200 that is not `text/event-stream`.
    pub(crate) async fn post(&self, body: Vec<u8>) -> Result<reqwest::Response, ProviderError> {
        let response = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(send_error)?;
        let status = response.status().as_u16();
        if matches!(status, 400 | 413 | 422) {
            return Err(rejected(status, response).await);
        }
        if status != 200 {
            let retry_after = retry_after(response.headers());
            log_error_body(status, response).await;
            return Err(ProviderError::Status {
                status,
                retry_after,
            });
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            tracing::debug!(
                content_type,
                "upstream answered 200 without an event stream"
            );
            return Err(ProviderError::Protocol(format!(
                "the upstream answered with {content_type:?} instead of text/event-stream"
            )));
        }
        Ok(response)
    }
}

/// A response's body as a byte stream whose errors never show the URL (it may hold a key).
pub(crate) fn body(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static {
    futures_util::StreamExt::map(response.bytes_stream(), |chunk| {
        chunk.map_err(|error| error.without_url())
    })
}

/// A failure before the response headers arrived.
fn send_error(error: reqwest::Error) -> ProviderError {
    let error = error.without_url();
    if error.is_timeout() {
        ProviderError::Timeout("connect")
    } else {
        ProviderError::Connect(error.to_string())
    }
}

/// `Retry-After` in seconds (integer or decimal), or the `retry-after-ms` some
/// OpenAI-compatible services send, capped at [`MAX_RETRY_AFTER`]. HTTP dates are not
/// honoured.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = |name: &str, scale: f64| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value / scale)
    };
    let seconds = seconds("retry-after-ms", 1000.0).or_else(|| seconds("retry-after", 1.0))?;
    Some(Duration::from_secs_f64(
        seconds.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// The upstream refused the request: its explanation, from an error body shaped like
/// OpenAI's, Anthropic's or Gemini's (`{"error": {"message", "code"}}`) or the flat shape
/// vLLM and others send (`{"message", "code"}`), bounded to [`REJECTION_MESSAGE_LIMIT`]
/// characters.
async fn rejected(status: u16, response: reqwest::Response) -> ProviderError {
    let body = error_body(response).await;
    tracing::debug!(status, body = %events::truncate(&String::from_utf8_lossy(&body)), "upstream refused the request");
    let (message, code) = rejection(&body);
    ProviderError::Rejected {
        status,
        message: message
            .unwrap_or_else(|| format!("the upstream refused the request (HTTP {status})")),
        code,
    }
}

/// The message and code of an error body, if it has them.
fn rejection(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let error = value
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or(&value);
    let message = error
        .get("message")
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().take(REJECTION_MESSAGE_LIMIT).collect());
    let code = error
        .get("code")
        .and_then(serde_json::Value::as_str)
        .filter(|c| {
            (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(str::to_owned);
    (message, code)
}

/// Read the start of an error body for the debug log; never into an error message.
async fn log_error_body(status: u16, response: reqwest::Response) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let body = error_body(response).await;
    let body = String::from_utf8_lossy(&body);
    tracing::debug!(status, body = %events::truncate(&body), "upstream error response");
}

/// The first [`ERROR_BODY_LIMIT`] bytes of an error body, read for at most
/// [`ERROR_BODY_TIMEOUT`].
async fn error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_the_upstreams_explanation_and_a_plain_code() {
        let openai = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(
            rejection(openai),
            (
                Some("This model's maximum context length is 8192 tokens.".into()),
                Some("context_length_exceeded".into())
            )
        );
        let flat = br#"{"object":"error","message":"max_tokens is too large","type":"BadRequestError","code":400}"#;
        assert_eq!(
            rejection(flat),
            (Some("max_tokens is too large".into()), None)
        );
        let odd_code = br#"{"error":{"message":"no","code":"<script>"}}"#;
        assert_eq!(rejection(odd_code).1, None);
        assert_eq!(rejection(b"<html>Bad Request</html>"), (None, None));
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(5000));
        assert_eq!(
            rejection(long.as_bytes()).0.map(|m| m.chars().count()),
            Some(REJECTION_MESSAGE_LIMIT)
        );
    }

    #[test]
    fn bad_base_urls_and_headers_are_refused() {
        assert!(base_url("ftp://x").is_err());
        assert_eq!(base_url("http://x/v1/").unwrap(), "http://x/v1");
        let extra = [("bad header".to_owned(), "v".to_owned())];
        assert!(matches!(
            Upstream::new(
                "http://x".into(),
                HeaderMap::new(),
                &extra,
                Duration::from_secs(1)
            ),
            Err(ProviderError::InvalidRequest(_))
        ));
    }

    #[test]
    fn retry_after_in_seconds_or_milliseconds_capped_at_an_hour() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.insert("retry-after-ms", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after", HeaderValue::from_static("1e20"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert("retry-after", HeaderValue::from_static("inf"));
        assert_eq!(retry_after(&headers), None);
    }
}
