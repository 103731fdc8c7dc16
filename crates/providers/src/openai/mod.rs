//! [`OpenAiProvider`]: any Chat Completions-compatible upstream (OpenAI, DeepSeek, vLLM,
//! Ollama, llama.cpp, the [`simulator`](crate::simulator)'s HTTP server, …).
//!
//! The adapter always streams: it POSTs `{base_url}/chat/completions` with `stream: true`
//! and `stream_options.include_usage`, answers an error status with
//! [`ProviderError::Status`] (never the upstream's body, which is only logged at debug
//! level) — except 400, 413 and 422, the upstream refusing the request itself, which
//! become [`ProviderError::Rejected`] with the upstream's own `error.message` — and decodes the event stream with the `sse` crate into [`Delta`](crate::Delta)s.
//! https is rustls with the `ring` provider and the platform's certificate verifier.
//!
//! - `request`: the upstream request body.
//! - `stream`: reading the event stream into deltas.

mod echo;
mod request;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProviderError;
use crate::request::ChatRequest;
use crate::{Continuation, Provider, ProviderFuture};

/// How much of an error body is read (for the debug log, or a refusal's explanation).
const ERROR_BODY_LIMIT: usize = 4096;
/// The longest upstream explanation passed on to a client, in characters.
const REJECTION_MESSAGE_LIMIT: usize = 1000;
/// How long reading an error body may take before it is given up on.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach one OpenAI-compatible upstream.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// The API root, up to and including the version: `https://api.openai.com/v1`.
    /// `/chat/completions` is appended.
    pub base_url: String,
    /// The bearer token, resolved by the gateway from an environment variable. Never
    /// logged (the `Debug` output hides it).
    pub api_key: Option<String>,
    /// The model's name at the upstream (the gateway's name is replaced by it).
    pub model: String,
    /// Headers sent with every request (`OpenAI-Organization`, …).
    pub extra_headers: Vec<(String, String)>,
    /// How long establishing a connection (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// How this upstream continues a partial answer ([`ChatRequest::assistant_prefix`]).
    /// Model-specific, so none by default.
    pub continuation: Continuation,
}

impl OpenAiConfig {
    /// A config for `model` at `base_url`, without key or extra headers, with a 10 s
    /// connect timeout and no continuation.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            continuation: Continuation::None,
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self
            .extra_headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("extra_headers", &header_names)
            .field("connect_timeout", &self.connect_timeout)
            .field("continuation", &self.continuation)
            .finish()
    }
}

/// A [`Provider`] for one OpenAI-compatible upstream and model. Cheap to clone: clones
/// share one connection pool.
#[derive(Clone)]
pub struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiConfig,
    url: String,
    headers: HeaderMap,
    http: reqwest::Client,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Install rustls' `ring` crypto provider as the process default, unless one is already
/// installed. The workspace's `reqwest` has no provider of its own, so building a client
/// panics without one; [`OpenAiProvider::new`] calls this itself.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl OpenAiProvider {
    /// Build the adapter and its HTTP client (one connection pool per provider).
    ///
    /// # Errors
    /// [`ProviderError::InvalidRequest`] when the base URL is not `http(s)://…`, a header
    /// name or value is invalid, or the HTTP client cannot be built.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ProviderError::InvalidRequest(format!(
                "the upstream base URL must start with http:// or https:// (got {base:?})"
            )));
        }
        let url = format!("{base}/chat/completions");
        let mut headers = HeaderMap::new();
        for (name, value) in &config.extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ProviderError::InvalidRequest(format!("invalid upstream header name {name:?}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProviderError::InvalidRequest(format!("invalid value for upstream header {name}"))
            })?;
            headers.append(name, value);
        }
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ProviderError::InvalidRequest("the API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));

        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|error| {
                ProviderError::InvalidRequest(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                url,
                headers,
                http,
            }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }
}

impl Provider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn continuation(&self) -> Continuation {
        self.inner.config.continuation
    }

    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_> {
        Box::pin(async move {
            let inner = &*self.inner;
            let body = request::body(&request, &inner.config.model, inner.config.continuation)?;
            let response = inner
                .http
                .post(&inner.url)
                .headers(inner.headers.clone())
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
            let body = response.bytes_stream();
            let deltas = stream::deltas(futures_util::StreamExt::map(body, |chunk| {
                chunk.map_err(|error| error.without_url())
            }));
            Ok(match request.assistant_prefix.as_deref() {
                Some(prefix) => echo::drop_echo(deltas, prefix),
                None => deltas,
            })
        })
    }
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
/// OpenAI-compatible services send. HTTP dates are not honoured.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// The upstream refused the request: its explanation, from an OpenAI-shaped error body
/// (`{"error": {"message", "code"}}`) or the flat shape vLLM and others send
/// (`{"message", "code"}`), bounded to [`REJECTION_MESSAGE_LIMIT`] characters.
async fn rejected(status: u16, response: reqwest::Response) -> ProviderError {
    let body = error_body(response).await;
    tracing::debug!(status, body = %stream::truncate(&String::from_utf8_lossy(&body)), "upstream refused the request");
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
    tracing::debug!(status, body = %stream::truncate(&body), "upstream error response");
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
    fn the_api_key_never_shows_in_debug_output() {
        let mut config = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
        config.api_key = Some("sk-secret".into());
        let provider = OpenAiProvider::new(config).unwrap();
        assert!(!format!("{provider:?}").contains("sk-secret"));
    }

    #[test]
    fn bad_base_urls_and_headers_are_refused() {
        let config = OpenAiConfig::new("ftp://x", "m");
        assert!(matches!(
            OpenAiProvider::new(config),
            Err(ProviderError::InvalidRequest(_))
        ));
        let mut config = OpenAiConfig::new("http://x/v1/", "m");
        config.extra_headers.push(("bad header".into(), "v".into()));
        assert!(matches!(
            OpenAiProvider::new(config),
            Err(ProviderError::InvalidRequest(_))
        ));
    }

    #[test]
    fn https_upstreams_are_supported() {
        let built = OpenAiProvider::new(OpenAiConfig::new("https://api.openai.com/v1", "m"));
        assert!(built.is_ok());
    }

    #[test]
    fn retry_after_in_seconds_or_milliseconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.insert("retry-after-ms", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
