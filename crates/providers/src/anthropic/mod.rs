//! [`AnthropicProvider`]: Anthropic's native Messages API (Claude).
//!
//! The adapter always streams: it POSTs `{base_url}/v1/messages` with `stream: true`,
//! the `x-api-key` and `anthropic-version` headers, through the shared `Upstream`
//! (which classifies error statuses), and decodes the named events into
//! [`Delta`](crate::Delta)s. A refusal because the prompt is too long carries the code
//! `context_length_exceeded`, as OpenAI-compatible upstreams report it, so fallback
//! rules match it whichever upstream refused.
//!
//! - `request`: the Chat Completions request as a Messages request.
//! - `stream`: reading the Messages events into deltas.
//! - `prefix`: the output of a continued answer, without the whitespace or echo the
//!   partial answer already holds.

mod request;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ProviderError;
use crate::request::ChatRequest;
use crate::upstream::{self, Upstream, events};
use crate::{Continuation, Provider, ProviderFuture};

/// Anthropic's API root.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version sent in `anthropic-version` unless configured otherwise.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// The `max_tokens` sent when the request sets none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Where and how to reach the Messages API for one model.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// The API root without the version: `https://api.anthropic.com`. `/v1/messages` is
    /// appended.
    pub base_url: String,
    /// The key sent as `x-api-key`, resolved by the gateway from an environment
    /// variable. Never logged (the `Debug` output hides it).
    pub api_key: Option<String>,
    /// The model's name at Anthropic (the gateway's name is replaced by it).
    pub model: String,
    /// The API version sent as `anthropic-version` ([`DEFAULT_VERSION`]).
    pub anthropic_version: String,
    /// The `max_tokens` sent when the request has none ([`DEFAULT_MAX_TOKENS`]).
    pub max_tokens: u32,
    /// Headers sent with every request (`anthropic-beta`, …).
    pub extra_headers: Vec<(String, String)>,
    /// How long establishing a connection (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// How this upstream continues a partial answer: [`Continuation::None`] (current
    /// Claude models refuse a prefill) or [`Continuation::AssistantMessage`] (older
    /// models). Other modes are refused by [`AnthropicProvider::new`].
    pub continuation: Continuation,
}

impl AnthropicConfig {
    /// A config for `model` at `base_url`, without key or extra headers, with
    /// [`DEFAULT_VERSION`], [`DEFAULT_MAX_TOKENS`], a 10 s connect timeout and no
    /// continuation.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            anthropic_version: DEFAULT_VERSION.to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            continuation: Continuation::None,
        }
    }
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self
            .extra_headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("anthropic_version", &self.anthropic_version)
            .field("max_tokens", &self.max_tokens)
            .field("extra_headers", &header_names)
            .field("connect_timeout", &self.connect_timeout)
            .field("continuation", &self.continuation)
            .finish()
    }
}

/// A [`Provider`] for one model of the Messages API. Cheap to clone: clones share one
/// connection pool.
#[derive(Clone)]
pub struct AnthropicProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: AnthropicConfig,
    upstream: Upstream,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl AnthropicProvider {
    /// Build the adapter and its HTTP client (one connection pool per provider).
    ///
    /// # Errors
    /// [`ProviderError::InvalidRequest`] when the base URL is not `http(s)://…`, the
    /// continuation mode is neither `none` nor `assistant_message`, a key, version or
    /// header is not a valid header value, or the HTTP client cannot be built.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        if !matches!(
            config.continuation,
            Continuation::None | Continuation::AssistantMessage
        ) {
            return Err(ProviderError::InvalidRequest(format!(
                "the Anthropic Messages API continues a partial answer only as a trailing \
                 assistant message (continuation = none or assistant_message, got {:?})",
                config.continuation
            )));
        }
        let url = format!("{}/v1/messages", upstream::base_url(&config.base_url)?);
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            headers.insert(
                HeaderName::from_static("x-api-key"),
                upstream::secret_header(key)?,
            );
        }
        let version = HeaderValue::from_str(&config.anthropic_version).map_err(|_| {
            ProviderError::InvalidRequest(
                "the anthropic_version is not a valid header value".into(),
            )
        })?;
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        let upstream = Upstream::new(url, headers, &config.extra_headers, config.connect_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner { config, upstream }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &AnthropicConfig {
        &self.inner.config
    }
}

impl Provider for AnthropicProvider {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    fn continuation(&self) -> Continuation {
        self.inner.config.continuation
    }

    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_> {
        Box::pin(async move {
            let inner = &*self.inner;
            let body = request::body(&request, &inner.config)?;
            let response = inner.upstream.post(body).await.map_err(refusal_code)?;
            let deltas = events::deltas(upstream::body(response), stream::EventDecoder::default());
            Ok(match request.assistant_prefix.as_deref() {
                Some(partial) if !partial.is_empty() => {
                    crate::upstream::prefix::continue_after(deltas, partial, true)
                }
                _ => deltas,
            })
        })
    }
}

/// Give a refusal a code fallback rules can match: `context_length_exceeded` when the
/// prompt is too long, as OpenAI-compatible upstreams say it; otherwise Anthropic's error
/// type, which the shared refusal reader (looking for `error.code`, which Anthropic does
/// not send) cannot see: it is taken from the status by Anthropic's documented table
/// (400 `invalid_request_error`, 413 `request_too_large`). Other errors pass unchanged.
fn refusal_code(error: ProviderError) -> ProviderError {
    match error {
        ProviderError::Rejected {
            status,
            message,
            code,
        } => {
            let code = if message.to_ascii_lowercase().contains("prompt is too long") {
                Some("context_length_exceeded".to_owned())
            } else {
                code.or_else(|| {
                    match status {
                        400 => Some("invalid_request_error"),
                        413 => Some("request_too_large"),
                        _ => None,
                    }
                    .map(str::to_owned)
                })
            };
            ProviderError::Rejected {
                status,
                message,
                code,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut config = AnthropicConfig::new("http://127.0.0.1:1", "claude");
        config.api_key = Some("sk-ant-secret".into());
        config.extra_headers = vec![("anthropic-beta".into(), "beta-secret".into())];
        let provider = AnthropicProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-ant-secret"), "{shown}");
        assert!(!shown.contains("beta-secret"), "{shown}");
        assert!(shown.contains("anthropic-beta"), "{shown}");
    }

    #[test]
    fn defaults_follow_the_messages_api() {
        let config = AnthropicConfig::new(DEFAULT_BASE_URL, "claude");
        assert_eq!(config.anthropic_version, "2023-06-01");
        assert_eq!(config.max_tokens, 4096);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.continuation, Continuation::None);
        let provider = AnthropicProvider::new(config).unwrap();
        assert_eq!(provider.kind(), "anthropic");
        assert!(!provider.supports_prefill());
    }

    #[test]
    fn only_the_assistant_message_continuation_is_accepted() {
        for (mode, accepted) in [
            (Continuation::None, true),
            (Continuation::AssistantMessage, true),
            (Continuation::PrefixFlag, false),
            (Continuation::ContinueFinalMessage, false),
        ] {
            let mut config = AnthropicConfig::new("http://x", "claude");
            config.continuation = mode;
            match AnthropicProvider::new(config) {
                Ok(provider) => {
                    assert!(accepted, "{mode:?}");
                    assert_eq!(provider.continuation(), mode);
                }
                Err(error) => {
                    assert!(!accepted, "{mode:?}");
                    assert!(matches!(error, ProviderError::InvalidRequest(_)));
                }
            }
        }
    }

    #[test]
    fn bad_base_urls_versions_and_headers_are_refused() {
        let refused = |config: AnthropicConfig| {
            matches!(
                AnthropicProvider::new(config),
                Err(ProviderError::InvalidRequest(_))
            )
        };
        assert!(refused(AnthropicConfig::new("ftp://x", "claude")));
        let mut config = AnthropicConfig::new("http://x/", "claude");
        config.anthropic_version = "bad\nversion".into();
        assert!(refused(config));
        let mut config = AnthropicConfig::new("http://x/", "claude");
        config.extra_headers.push(("bad header".into(), "v".into()));
        assert!(refused(config));
        let mut config = AnthropicConfig::new("http://x/", "claude");
        config.api_key = Some("bad\nkey".into());
        assert!(refused(config));
    }

    #[test]
    fn a_prompt_too_long_is_a_context_length_refusal_and_others_keep_the_error_type() {
        let rejected = |status, message: &str, code: Option<&str>| ProviderError::Rejected {
            status,
            message: message.into(),
            code: code.map(str::to_owned),
        };
        let too_long = "prompt is too long: 210000 tokens > 200000 maximum";
        assert_eq!(
            refusal_code(rejected(400, too_long, None)),
            rejected(400, too_long, Some("context_length_exceeded"))
        );
        assert_eq!(
            refusal_code(rejected(400, "max_tokens: too large", None)),
            rejected(400, "max_tokens: too large", Some("invalid_request_error"))
        );
        assert_eq!(
            refusal_code(rejected(413, "Request exceeds the maximum size", None)),
            rejected(
                413,
                "Request exceeds the maximum size",
                Some("request_too_large")
            )
        );
        assert_eq!(
            refusal_code(rejected(422, "odd", Some("own_code"))),
            rejected(422, "odd", Some("own_code"))
        );
        let status = ProviderError::Status {
            status: 529,
            retry_after: None,
        };
        assert_eq!(refusal_code(status.clone()), status);
    }
}
