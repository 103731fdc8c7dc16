//! [`OpenAiProvider`]: any Chat Completions-compatible upstream (OpenAI, DeepSeek, vLLM,
//! Ollama, llama.cpp, the [`simulator`](crate::simulator)'s HTTP server, …).
//!
//! The adapter always streams: it POSTs `{base_url}/chat/completions` with `stream: true`
//! and `stream_options.include_usage` through the shared [`Upstream`] (which classifies
//! error statuses) and decodes the event stream into [`Delta`](crate::Delta)s.
//!
//! - `request`: the upstream request body.
//! - `stream`: reading the chunks into deltas.
//! - `echo`: dropping a continued answer's echoed prefix.

mod request;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap};

use crate::error::ProviderError;
use crate::request::ChatRequest;
pub use crate::upstream::install_crypto_provider;
use crate::upstream::{self, Upstream, events};
use crate::{Continuation, Provider, ProviderFuture};

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
    upstream: Upstream,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl OpenAiProvider {
    /// Build the adapter and its HTTP client (one connection pool per provider).
    ///
    /// # Errors
    /// [`ProviderError::InvalidRequest`] when the base URL is not `http(s)://…`, a header
    /// name or value is invalid, or the HTTP client cannot be built.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let url = format!("{}/chat/completions", upstream::base_url(&config.base_url)?);
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            headers.insert(
                AUTHORIZATION,
                upstream::secret_header(&format!("Bearer {key}"))?,
            );
        }
        let upstream = Upstream::new(url, headers, &config.extra_headers, config.connect_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner { config, upstream }),
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
            let response = inner.upstream.post(body).await?;
            let deltas = events::deltas(upstream::body(response), stream::ChunkDecoder::default());
            Ok(match request.assistant_prefix.as_deref() {
                Some(prefix) => crate::upstream::prefix::continue_after(deltas, prefix, false),
                None => deltas,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
