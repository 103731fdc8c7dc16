//! [`GeminiProvider`]: Google's Gemini API, natively (`streamGenerateContent`).
//!
//! The adapter POSTs `{base_url}/models/{model}:streamGenerateContent?alt=sse` with the
//! key in the `x-goog-api-key` header (never in the URL, which error messages and proxies
//! may show) through the shared `Upstream`, which classifies error statuses. Gemini's
//! refusals are refined here: an input too long gets the code `context_length_exceeded`,
//! as OpenAI names it, and a 400 about our key or project is no refusal of the client's
//! request. Gemini cannot continue a partial answer, so its [`Continuation`] is
//! [`Continuation::None`].
//!
//! - `request`: the Chat Completions request as a `GenerateContentRequest`.
//! - `stream`: reading the `GenerateContentResponse` events into deltas.

mod request;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName};

use crate::error::ProviderError;
use crate::request::ChatRequest;
use crate::upstream::{self, Upstream, events};
use crate::{Continuation, Provider, ProviderFuture};

/// The Gemini API's root, up to and including the version.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The header Gemini reads the API key from.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Where and how to reach the Gemini API for one model.
#[derive(Clone)]
pub struct GeminiConfig {
    /// The API root, up to and including the version: [`DEFAULT_BASE_URL`].
    /// `/models/{model}:streamGenerateContent?alt=sse` is appended.
    pub base_url: String,
    /// The API key, resolved by the gateway from an environment variable, sent as
    /// `x-goog-api-key`. Never logged (the `Debug` output hides it) and never put in the
    /// URL.
    pub api_key: Option<String>,
    /// The model's name at Gemini (`gemini-2.5-flash`), without the `models/` prefix.
    pub model: String,
    /// Headers sent with every request.
    pub extra_headers: Vec<(String, String)>,
    /// How long establishing a connection (TCP and TLS) may take.
    pub connect_timeout: Duration,
}

impl GeminiConfig {
    /// A config for `model` at `base_url` (usually [`DEFAULT_BASE_URL`]), without key or
    /// extra headers, with a 10 s connect timeout.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            extra_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for GeminiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self
            .extra_headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("GeminiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("extra_headers", &header_names)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`Provider`] for one Gemini model. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct GeminiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: GeminiConfig,
    upstream: Upstream,
}

impl fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiProvider")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl GeminiProvider {
    /// Build the adapter and its HTTP client (one connection pool per provider).
    ///
    /// # Errors
    /// [`ProviderError::InvalidRequest`] when the base URL is not `http(s)://…`, the model
    /// name cannot be a URL path segment as it is (empty, or holding `/`, `?`, `#`, `%`,
    /// whitespace or control characters), the key or a header is not a valid header,
    /// or the HTTP client cannot be built.
    pub fn new(config: GeminiConfig) -> Result<Self, ProviderError> {
        let url = stream_url(&config.base_url, &config.model)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            headers.insert(API_KEY_HEADER, upstream::secret_header(key)?);
        }
        let upstream = Upstream::new(url, headers, &config.extra_headers, config.connect_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner { config, upstream }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &GeminiConfig {
        &self.inner.config
    }
}

impl Provider for GeminiProvider {
    fn kind(&self) -> &'static str {
        "gemini"
    }

    fn continuation(&self) -> Continuation {
        Continuation::None
    }

    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_> {
        Box::pin(async move {
            let inner = &*self.inner;
            let body = request::body(&request, &inner.config.model)?;
            let response = inner.upstream.post(body).await.map_err(refusal)?;
            Ok(events::deltas(
                upstream::body(response),
                stream::ResponseDecoder::new(),
            ))
        })
    }
}

/// `{base_url}/models/{model}:streamGenerateContent?alt=sse`.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] for a base URL that is not `http(s)://…` or a model
/// name that is not safe as a path segment.
fn stream_url(base_url: &str, model: &str) -> Result<String, ProviderError> {
    let base = upstream::base_url(base_url)?;
    let unsafe_char =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%');
    if model.is_empty() || model.contains(unsafe_char) {
        return Err(ProviderError::InvalidRequest(format!(
            "the Gemini model name {model:?} must be a plain name such as gemini-2.5-flash \
             (no models/ prefix, no '/', '?', '#', '%' or whitespace)"
        )));
    }
    Ok(format!(
        "{base}/models/{model}:streamGenerateContent?alt=sse"
    ))
}

/// A refusal (400, 413, 422) as Gemini means it. Gemini answers 400 for faults of ours
/// too — an API key it does not accept (`INVALID_ARGUMENT`) or a project it will not serve
/// from here (`FAILED_PRECONDITION`) — which are no fault of the client's request: those
/// become [`ProviderError::Status`], whose message hides Gemini's, so another target may
/// be tried. A refusal because the input is too long ("The input token count (N) exceeds
/// the maximum number of tokens allowed (M).") gets the code `context_length_exceeded`;
/// any other 400 the code `INVALID_ARGUMENT`, the status Google's error table gives it
/// (https://ai.google.dev/gemini-api/docs/generate-content/api-errors), since the shared
/// refusal reader only reads a string `error.code`, and Gemini's is the number.
fn refusal(error: ProviderError) -> ProviderError {
    let ProviderError::Rejected {
        status,
        message,
        code,
    } = error
    else {
        return error;
    };
    let lowercase = message.to_ascii_lowercase();
    if not_the_requests_fault(&lowercase) {
        tracing::warn!(
            status,
            %message,
            "Gemini refused the API key or the project: check the target's configuration"
        );
        return ProviderError::Status {
            status,
            retry_after: None,
        };
    }
    let code =
        if lowercase.contains("input token count") && lowercase.contains("exceeds the maximum") {
            Some("context_length_exceeded".to_owned())
        } else {
            code.or_else(|| (status == 400).then(|| "INVALID_ARGUMENT".to_owned()))
        };
    ProviderError::Rejected {
        status,
        message,
        code,
    }
}

/// Whether a (lowercased) refusal is about our key or project: "API key not valid.",
/// "API Key not found.", "API key expired.", "User location is not supported for the API
/// use.", "Gemini API free tier is not available in your country."
fn not_the_requests_fault(message: &str) -> bool {
    message.contains("api key")
        || message.contains("location is not supported")
        || message.contains("not available in your country")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut config = GeminiConfig::new(DEFAULT_BASE_URL, "gemini-2.5-flash");
        config.api_key = Some("AIza-secret".into());
        let provider = GeminiProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("AIza-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(provider.kind(), "gemini");
        assert_eq!(provider.continuation(), Continuation::None);
        assert!(!provider.supports_prefill());
        assert_eq!(provider.config().model, "gemini-2.5-flash");
    }

    #[test]
    fn the_url_names_the_model_and_asks_for_sse() {
        assert_eq!(
            stream_url(&format!("{DEFAULT_BASE_URL}/"), "gemini-2.5-flash").unwrap(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        for model in [
            "",
            "models/gemini-2.5-flash",
            "gemini?key=x",
            "gemini#x",
            "gemini 2",
            "gemini%2F",
            "gemini\n",
        ] {
            assert!(
                matches!(
                    GeminiProvider::new(GeminiConfig::new(DEFAULT_BASE_URL, model)),
                    Err(ProviderError::InvalidRequest(_))
                ),
                "{model:?}"
            );
        }
    }

    #[test]
    fn bad_base_urls_keys_and_headers_are_refused() {
        let refused = |config: GeminiConfig| {
            matches!(
                GeminiProvider::new(config),
                Err(ProviderError::InvalidRequest(_))
            )
        };
        assert!(refused(GeminiConfig::new("ftp://x", "m")));
        let mut config = GeminiConfig::new(DEFAULT_BASE_URL, "m");
        config.api_key = Some("bad\nkey".into());
        assert!(refused(config));
        let mut config = GeminiConfig::new(DEFAULT_BASE_URL, "m");
        config.extra_headers.push(("bad header".into(), "v".into()));
        assert!(refused(config));
    }

    #[test]
    fn refusals_get_gemini_codes_and_faults_of_ours_are_no_refusals() {
        let rejected = |status, message: &str, code: Option<&str>| ProviderError::Rejected {
            status,
            message: message.into(),
            code: code.map(Into::into),
        };
        let too_long = "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).";
        assert_eq!(
            refusal(rejected(400, too_long, None)),
            rejected(400, too_long, Some("context_length_exceeded"))
        );
        let bad_value = "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"";
        assert_eq!(
            refusal(rejected(400, bad_value, None)),
            rejected(400, bad_value, Some("INVALID_ARGUMENT"))
        );
        assert_eq!(
            refusal(rejected(400, bad_value, Some("OUT_OF_RANGE"))),
            rejected(400, bad_value, Some("OUT_OF_RANGE"))
        );
        assert_eq!(
            refusal(rejected(413, "too large", None)),
            rejected(413, "too large", None)
        );
        for ours in [
            "API key not valid. Please pass a valid API key.",
            "API Key not found. Please pass a valid API key.",
            "API key expired. Please renew the API key.",
            "User location is not supported for the API use.",
            "Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio.",
        ] {
            let error = refusal(rejected(400, ours, None));
            assert_eq!(
                error,
                ProviderError::Status {
                    status: 400,
                    retry_after: None
                },
                "{ours}"
            );
            assert!(!error.is_the_requests_fault());
        }
        let throttled = ProviderError::Status {
            status: 429,
            retry_after: None,
        };
        assert_eq!(refusal(throttled.clone()), throttled);
    }
}
