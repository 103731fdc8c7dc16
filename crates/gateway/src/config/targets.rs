//! `[[models]]` and their targets: a tagged enum per provider, so that each provider has
//! exactly its own keys, next to the keys every target shares (limits, retries, the
//! circuit breaker, a name and a price).
//!
//! A target's table is split in two before it is read: the shared keys
//! ([`SHARED_KEYS`]) go to [`TargetLimits`], the rest — `provider` and its own keys — to
//! [`ProviderConfig`]. Both refuse unknown keys, so a key of another provider is an
//! error naming the key (`unknown field \`tokens\``).

use std::collections::BTreeMap;
use std::path::PathBuf;

use providers::ProviderError;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{ConfigError, invalid};

/// `[[models]]`: a model name clients use, and where it is served from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name in requests and in `/v1/models`.
    pub name: String,
    /// Targets in order of preference: later ones are fallbacks.
    pub targets: Vec<TargetConfig>,
    /// The longest a request waits for its first token over every retry and fallback,
    /// in milliseconds (then 504). Default: no bound beyond the targets' own timeouts.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Refusals of the request (an upstream's 400 error code, e.g.
    /// `context_length_exceeded` or `content_filter`) that move the request to the next
    /// target instead of being passed to the client. Default: none — a refusal is the
    /// client's to see, since another target usually refuses the same request too.
    #[serde(default)]
    pub fallback_on: Vec<String>,
}

/// Which adapter a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any Chat Completions-compatible server.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API.
    Gemini,
    /// Synthetic answers for load and fault tests.
    Simulator,
    /// A small GGUF model run in-process on the CPU (built by the binary, see
    /// [`crate::AppState::with_local`]).
    Local,
}

/// One upstream target of a model.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The provider and its own keys.
    pub provider: ProviderConfig,
    /// The keys every target has.
    pub limits: TargetLimits,
}

/// A target's provider, with exactly that provider's keys (`provider = "…"` picks it).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// Any Chat Completions-compatible server (OpenAI, DeepSeek, vLLM, Ollama, …).
    Openai(OpenaiTarget),
    /// Anthropic's Messages API (Claude).
    Anthropic(AnthropicTarget),
    /// Google's Gemini API.
    Gemini(GeminiTarget),
    /// A GGUF model run in-process.
    Local(LocalTarget),
    /// Synthetic answers with fault injection, for load and fault tests only.
    Simulator(SimulatorTarget),
}

/// `provider = "openai"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenaiTarget {
    /// The API root, e.g. `https://api.openai.com/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The upstream's model name (default: the gateway's model name).
    pub model: Option<String>,
    /// Headers sent with every request.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    /// How the upstream continues a partial answer: `none` (default),
    /// `assistant_message`, `prefix_flag` or `continue_final_message`.
    pub continuation: Option<providers::Continuation>,
    /// Deprecated: `true` is `continuation = "assistant_message"`.
    pub supports_prefill: Option<bool>,
}

/// `provider = "anthropic"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicTarget {
    /// Default `https://api.anthropic.com` (`/v1/messages` is appended).
    #[serde(default = "defaults::anthropic_base_url")]
    pub base_url: String,
    /// The environment variable holding the API key (sent as `x-api-key`).
    pub api_key_env: Option<String>,
    /// The upstream's model name (default: the gateway's model name).
    pub model: Option<String>,
    /// The `anthropic-version` header. Default `2023-06-01`.
    #[serde(default = "defaults::anthropic_version")]
    pub anthropic_version: String,
    /// `max_tokens` when the request has none (Anthropic requires one). Default 4096.
    #[serde(default = "defaults::anthropic_max_tokens")]
    pub max_tokens: u32,
    /// Headers sent with every request (`anthropic-beta`, …).
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    /// `none` (default; current Claude models refuse a prefill) or `assistant_message`
    /// (older models continue a trailing assistant turn).
    pub continuation: Option<providers::Continuation>,
}

/// `provider = "gemini"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeminiTarget {
    /// Default `https://generativelanguage.googleapis.com/v1beta`.
    #[serde(default = "defaults::gemini_base_url")]
    pub base_url: String,
    /// The environment variable holding the API key (sent as `x-goog-api-key`).
    pub api_key_env: Option<String>,
    /// The upstream's model name (default: the gateway's model name).
    pub model: Option<String>,
    /// Headers sent with every request.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
}

/// `provider = "local"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTarget {
    /// The GGUF file (default: the cached SmolLM2-135M-Instruct).
    pub path: Option<PathBuf>,
    /// Decoding threads per generation (default: all cores).
    pub threads: Option<usize>,
    /// The model name reported in answers (default: the gateway's model name).
    pub model: Option<String>,
}

/// `provider = "simulator"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorTarget {
    /// Tokens per answer.
    pub tokens: Option<u32>,
    /// Delay before the first token.
    pub ttft_ms: Option<u64>,
    /// Delay between tokens.
    pub interval_ms: Option<u64>,
    /// Seed of the synthetic text.
    pub seed: Option<u64>,
    /// Break the stream after this many tokens.
    pub fail_after: Option<u32>,
    /// Answer with this HTTP status instead …
    pub error_status: Option<u16>,
    /// … with this probability (default 1) …
    pub error_probability: Option<f64>,
    /// … for only the first N requests.
    pub error_times: Option<u32>,
    /// `Retry-After` seconds on those errors.
    pub retry_after_s: Option<u64>,
    /// The model name reported in answers (default: the gateway's model name).
    pub model: Option<String>,
}

/// What a target charges, in US dollars per million tokens. unbroken ships no prices:
/// they are the operator's to set.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt tokens.
    pub input_per_mtok: f64,
    /// Generated tokens.
    pub output_per_mtok: f64,
    /// Prompt tokens read from the upstream's cache (default: the input price).
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    /// The cost in USD of `prompt` tokens (of which `cached` came from the cache) and
    /// `completion` tokens.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        let per_token = |per_mtok: f64| per_mtok / 1_000_000.0;
        (prompt - cached) as f64 * per_token(self.input_per_mtok)
            + cached as f64 * per_token(self.cached_input_per_mtok.unwrap_or(self.input_per_mtok))
            + completion as f64 * per_token(self.output_per_mtok)
    }
}

/// The keys every target has, whatever its provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetLimits {
    /// The target's name in the `Unbroken-Target` header, the status endpoint, usage and
    /// metrics. Default `<provider>:<upstream model>` (with `#<n>` when two targets of a
    /// model would share it).
    pub name: Option<String>,
    /// USD per million tokens, for the usage API and cost metrics. Default: none (cost 0).
    pub price: Option<Price>,
    /// Requests in flight at once; more wait in a FIFO queue. Default 64, and one per
    /// core for `local`.
    pub max_concurrency: Option<usize>,
    /// How long a request may wait in the queue (then 429). Default 10 s: shorter than the
    /// default heartbeat interval, so a streaming client still gets a real 429 rather than
    /// an error event after its headers went out.
    pub queue_timeout_ms: u64,
    /// Time allowed to open the connection (TCP and TLS). Default 10 s.
    pub connect_timeout_ms: u64,
    /// Time allowed from the request to the first token. Default 60 s.
    pub first_token_timeout_ms: u64,
    /// Time allowed between two tokens. Default 60 s.
    pub between_token_timeout_ms: u64,
    /// Retries on the same target of a failure `retry_same_target_on` names, before the
    /// first token. Default 2.
    pub max_retries: u32,
    /// Backoff base for those retries. Default 200 ms (full jitter, factor 2, max 5 s).
    pub retry_base_ms: u64,
    /// The failures retried on the same target: HTTP statuses (`"429"`, `"529"`) or
    /// classes (`"5xx"`), and `"timeout"`, `"connect"`, `"interrupted"`. Default
    /// `["429", "5xx"]`: a timeout or a refused connection goes to the next target at
    /// once.
    pub retry_same_target_on: Vec<String>,
    /// Consecutive failed starts that open the target's circuit breaker (0: never).
    /// Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker skips the target before one probe request. Default 30 s.
    pub breaker_cooldown_ms: u64,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            name: None,
            price: None,
            max_concurrency: None,
            queue_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            first_token_timeout_ms: 60_000,
            between_token_timeout_ms: 60_000,
            max_retries: 2,
            retry_base_ms: 200,
            retry_same_target_on: vec!["429".into(), "5xx".into()],
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
        }
    }
}

/// The keys of [`TargetLimits`], which every provider shares.
pub const SHARED_KEYS: &[&str] = &[
    "name",
    "price",
    "max_concurrency",
    "queue_timeout_ms",
    "connect_timeout_ms",
    "first_token_timeout_ms",
    "between_token_timeout_ms",
    "max_retries",
    "retry_base_ms",
    "retry_same_target_on",
    "breaker_failures",
    "breaker_cooldown_ms",
];

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut own = Map::<String, Value>::deserialize(deserializer)?;
        let mut shared = Map::new();
        for key in SHARED_KEYS {
            if let Some(value) = own.remove(*key) {
                shared.insert((*key).to_owned(), value);
            }
        }
        let limits = TargetLimits::deserialize(Value::Object(shared)).map_err(D::Error::custom)?;
        let provider = ProviderConfig::deserialize(Value::Object(own)).map_err(D::Error::custom)?;
        Ok(Self { provider, limits })
    }
}

mod defaults {
    pub fn anthropic_base_url() -> String {
        "https://api.anthropic.com".into()
    }
    pub fn anthropic_version() -> String {
        "2023-06-01".into()
    }
    pub fn anthropic_max_tokens() -> u32 {
        4096
    }
    pub fn gemini_base_url() -> String {
        "https://generativelanguage.googleapis.com/v1beta".into()
    }
}

impl TargetConfig {
    /// Which adapter.
    pub fn kind(&self) -> ProviderKind {
        match self.provider {
            ProviderConfig::Openai(_) => ProviderKind::Openai,
            ProviderConfig::Anthropic(_) => ProviderKind::Anthropic,
            ProviderConfig::Gemini(_) => ProviderKind::Gemini,
            ProviderConfig::Local(_) => ProviderKind::Local,
            ProviderConfig::Simulator(_) => ProviderKind::Simulator,
        }
    }

    /// The provider's name as configured (`"openai"`, …).
    pub fn provider_name(&self) -> &'static str {
        match self.kind() {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Local => "local",
            ProviderKind::Simulator => "simulator",
        }
    }

    /// The model name at the upstream: its `model` key, else the gateway's model name.
    pub fn upstream_model(&self, gateway_model: &str) -> String {
        let named = match &self.provider {
            ProviderConfig::Openai(t) => t.model.as_ref(),
            ProviderConfig::Anthropic(t) => t.model.as_ref(),
            ProviderConfig::Gemini(t) => t.model.as_ref(),
            ProviderConfig::Local(t) => t.model.as_ref(),
            ProviderConfig::Simulator(t) => t.model.as_ref(),
        };
        named.cloned().unwrap_or_else(|| gateway_model.to_owned())
    }

    /// How the target continues a partial answer (`continuation`, or the deprecated
    /// `supports_prefill = true` as `assistant_message`). Local models continue natively.
    pub fn continuation(&self) -> providers::Continuation {
        use providers::Continuation;
        match &self.provider {
            ProviderConfig::Openai(t) => match (t.continuation, t.supports_prefill) {
                (Some(mode), _) => mode,
                (None, Some(true)) => Continuation::AssistantMessage,
                (None, _) => Continuation::None,
            },
            ProviderConfig::Anthropic(t) => t.continuation.unwrap_or_default(),
            ProviderConfig::Local(_) => Continuation::AssistantMessage,
            ProviderConfig::Gemini(_) | ProviderConfig::Simulator(_) => Continuation::None,
        }
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_concurrency == Some(0) {
            return Err(invalid(
                format!("{key}.max_concurrency"),
                "must be more than 0",
            ));
        }
        if let Some(name) = &limits.name
            && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
        {
            return Err(invalid(
                format!("{key}.name"),
                "must be 1 to 128 characters without control characters",
            ));
        }
        if let Some(price) = &limits.price {
            let prices = [
                Some(price.input_per_mtok),
                Some(price.output_per_mtok),
                price.cached_input_per_mtok,
            ];
            if prices
                .into_iter()
                .flatten()
                .any(|p| !p.is_finite() || p < 0.0)
            {
                return Err(invalid(
                    format!("{key}.price"),
                    "prices must be finite numbers of at least 0",
                ));
            }
        }
        for (i, rule) in limits.retry_same_target_on.iter().enumerate() {
            if RetryRule::parse(rule).is_none() {
                return Err(invalid(
                    format!("{key}.retry_same_target_on[{i}]"),
                    "must be an HTTP status (\"429\"), a class (\"5xx\"), \"timeout\", \
                     \"connect\" or \"interrupted\"",
                ));
            }
        }
        let http_url = |url: &str, name: &str| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else {
                Err(invalid(
                    format!("{key}.{name}"),
                    "must start with http:// or https://",
                ))
            }
        };
        match &self.provider {
            ProviderConfig::Openai(t) => {
                if t.continuation.is_some() && t.supports_prefill.is_some() {
                    return Err(invalid(
                        format!("{key}.supports_prefill"),
                        "is replaced by continuation; set only continuation",
                    ));
                }
                http_url(&t.base_url, "base_url")?;
            }
            ProviderConfig::Anthropic(t) => {
                http_url(&t.base_url, "base_url")?;
                if !matches!(
                    t.continuation,
                    None | Some(
                        providers::Continuation::None | providers::Continuation::AssistantMessage
                    )
                ) {
                    return Err(invalid(
                        format!("{key}.continuation"),
                        "must be none or assistant_message for anthropic",
                    ));
                }
                if t.max_tokens == 0 {
                    return Err(invalid(format!("{key}.max_tokens"), "must be more than 0"));
                }
            }
            ProviderConfig::Gemini(t) => http_url(&t.base_url, "base_url")?,
            ProviderConfig::Local(t) => {
                if t.threads == Some(0) {
                    return Err(invalid(format!("{key}.threads"), "must be more than 0"));
                }
            }
            ProviderConfig::Simulator(t) => {
                if let Some(p) = t.error_probability
                    && !(0.0..=1.0).contains(&p)
                {
                    return Err(invalid(
                        format!("{key}.error_probability"),
                        "must be between 0 and 1",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The targets' names: each `name`, else `<provider>:<upstream model>`, with `#<n>`
    /// (its position, from 1) added where two would be the same.
    pub fn target_names(&self) -> Vec<String> {
        let base: Vec<String> = self
            .targets
            .iter()
            .map(|t| match &t.limits.name {
                Some(name) => name.clone(),
                None => format!("{}:{}", t.provider_name(), t.upstream_model(&self.name)),
            })
            .collect();
        base.iter()
            .enumerate()
            .map(|(i, name)| {
                let shared = base.iter().filter(|other| *other == name).count() > 1;
                if shared && self.targets[i].limits.name.is_none() {
                    format!("{name}#{}", i + 1)
                } else {
                    name.clone()
                }
            })
            .collect()
    }

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "must not be empty"));
        }
        if self.targets.is_empty() {
            return Err(invalid(
                format!("{key}.targets"),
                "needs at least one target",
            ));
        }
        if self.deadline_ms == Some(0) {
            return Err(invalid(format!("{key}.deadline_ms"), "must be more than 0"));
        }
        for (t, target) in self.targets.iter().enumerate() {
            target.validate(&format!("{key}.targets[{t}]"))?;
        }
        let names = self.target_names();
        for (t, name) in names.iter().enumerate() {
            if names[..t].contains(name) {
                return Err(invalid(
                    format!("{key}.targets[{t}].name"),
                    format!("target name {name:?} is used twice in this model"),
                ));
            }
        }
        for (i, code) in self.fallback_on.iter().enumerate() {
            let plain = (1..=64).contains(&code.len())
                && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(invalid(
                    format!("{key}.fallback_on[{i}]"),
                    "must be an error code like context_length_exceeded",
                ));
            }
        }
        Ok(())
    }
}

/// A failure `retry_same_target_on` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRule {
    /// This HTTP status (`"429"`).
    Status(u16),
    /// Every status of this hundred (`"5xx"`: 5).
    Class(u16),
    /// No response, first token or next token in time.
    Timeout,
    /// The upstream could not be reached.
    Connect,
    /// The stream broke before its first token.
    Interrupted,
}

impl RetryRule {
    /// `"429"`, `"5xx"`, `"timeout"`, `"connect"` or `"interrupted"`.
    pub fn parse(rule: &str) -> Option<Self> {
        match rule {
            "timeout" => Some(Self::Timeout),
            "connect" => Some(Self::Connect),
            "interrupted" => Some(Self::Interrupted),
            _ => {
                let bytes = rule.as_bytes();
                if bytes.len() == 3 && bytes[1..].eq_ignore_ascii_case(b"xx") {
                    let class = u16::from(bytes[0].checked_sub(b'0')?);
                    return (1..=5).contains(&class).then_some(Self::Class(class));
                }
                let status: u16 = rule.parse().ok()?;
                (100..=599)
                    .contains(&status)
                    .then_some(Self::Status(status))
            }
        }
    }

    /// Whether `error` is one this rule retries.
    pub fn matches(self, error: &ProviderError) -> bool {
        match (self, error) {
            (Self::Status(want), ProviderError::Status { status, .. }) => *status == want,
            (Self::Class(class), ProviderError::Status { status, .. }) => *status / 100 == class,
            (Self::Timeout, ProviderError::Timeout(_)) => true,
            (Self::Connect, ProviderError::Connect(_)) => true,
            (Self::Interrupted, ProviderError::Interrupted(_)) => true,
            _ => false,
        }
    }
}
