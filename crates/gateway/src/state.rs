//! [`AppState`]: what every handler and supervisor shares, and how it is built from the
//! configuration.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use providers::Provider;
use providers::anthropic::{AnthropicConfig, AnthropicProvider};
use providers::gemini::{GeminiConfig, GeminiProvider};
use providers::openai::{OpenAiConfig, OpenAiProvider};
use providers::simulator::{SimulatorConfig, SimulatorProvider};
use streamlog::StreamLog;
use tokio_util::task::TaskTracker;

use crate::auth::{Keys, Principal};
use crate::config::{
    Config, ProviderConfig, ServerConfig, StoreConfig, StoreKind, SyncMode, TargetConfig,
};
use crate::live::LiveStreams;
use crate::router::{Limits, Model, Models, Target};
use crate::signal::Signal;

/// Builds the provider of a `provider = "local"` target (given the target and its key
/// path for error messages).
pub type LocalFactory<'a> = dyn Fn(&TargetConfig, &str) -> Result<Arc<dyn Provider>, String> + 'a;

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct Shared {
    /// `[server]` settings.
    pub server: ServerConfig,
    /// The stream log.
    pub log: Arc<dyn StreamLog>,
    /// Configured models.
    pub models: Models,
    /// API keys.
    pub keys: Keys,
    /// The principal of every request when auth is off.
    pub anonymous: Principal,
    /// Generations running here.
    pub live: Arc<LiveStreams>,
    /// Owns every supervisor task.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins: readers end, new requests are refused.
    pub shutdown: Signal,
    /// Cancelled when the shutdown grace is over: writers stop where they are.
    pub hard_stop: Signal,
    /// This node's writer name in leases: `{node_id}/{incarnation}`, new for every
    /// process, so a lease of the same node from before a restart is known to be dead.
    pub node: String,
    /// This node's id, kept across restarts (see [`node_id`]).
    pub node_id: String,
    /// How long a writer's lease lasts without renewal (`store.lease_ttl_ms`).
    pub lease_ttl: Duration,
    /// Whether the log can be written (`/ready`).
    pub health: Arc<crate::generation::LogHealth>,
    /// Leases for topic and task writes.
    pub writers: crate::writers::Writers,
    /// Principals allowed to publish to topics (empty: every principal).
    pub publishers: std::collections::HashSet<String>,
    /// `[topics]` settings.
    pub topics: crate::config::TopicsConfig,
    /// Topics this node has served, for retention.
    pub known_topics: std::sync::Mutex<std::collections::HashSet<streamlog::StreamId>>,
    /// What every answer cost.
    pub ledger: Arc<crate::usage::Ledger>,
    /// `[limits]`.
    pub limits: crate::config::LimitsConfig,
    /// `[sessions]`.
    pub sessions: crate::config::SessionsConfig,
    /// `[tasks]`.
    pub task_limits: crate::config::TasksConfig,
    /// `[store] max_record_bytes`.
    pub max_record_bytes: usize,
    /// What each principal holds now (answers generating, readers open).
    pub holdings: crate::limits::Holdings,
    /// Each principal's requests per minute.
    pub rates: crate::limits::Rates,
}

impl Shared {
    /// Take one `what` for `principal` under its `[limits]` cap (answers generating or
    /// readers open), released when the hold is dropped.
    ///
    /// # Errors
    /// 429 `too_many_streams` / `too_many_readers`; 503 when Redis cannot be reached.
    pub async fn hold(
        &self,
        what: crate::limits::Held,
        principal: &Principal,
    ) -> Result<crate::limits::Hold, crate::error::ApiError> {
        let max = match what {
            crate::limits::Held::Streams => self.limits.max_streams_per_principal,
            crate::limits::Held::Readers => self.limits.max_readers_per_principal,
        };
        self.holdings.take(what, principal, max).await
    }

    /// Whether `principal` may ask for an answer now: the `chat` scope, its requests and
    /// tokens per minute (one request is spent).
    ///
    /// # Errors
    /// 403 `insufficient_scope`; 429 `rate_limited` / `tokens_rate_limited`.
    pub async fn admit_answer(&self, principal: &Principal) -> Result<(), crate::error::ApiError> {
        principal.require(crate::auth::Scope::Chat)?;
        self.rates
            .admit(principal, self.limits.requests_per_minute.into(), true)
            .await?;
        self.ledger.admit(principal).await
    }

    /// Whether requests must authenticate (API keys or tokens are configured).
    pub fn auth_enabled(&self) -> bool {
        self.keys.enabled()
    }
}

impl AppState {
    /// Build the state: models and their providers from `config`, over `log`.
    ///
    /// # Errors
    /// A message naming the key at fault (an unset `api_key_env`, a bad keys file).
    pub fn new(config: &Config, log: Arc<dyn StreamLog>) -> Result<Self, String> {
        Self::with_local(config, log, &|_, key: &str| {
            Err(format!(
                "{key}.provider: this build cannot run local models"
            ))
        })
    }

    /// Build the state, with `local` building the providers of `provider = "local"`
    /// targets (the binary links the local model; the gateway library does not).
    ///
    /// # Errors
    /// As [`AppState::new`], and whatever `local` reports.
    pub fn with_local(
        config: &Config,
        log: Arc<dyn StreamLog>,
        local: &LocalFactory<'_>,
    ) -> Result<Self, String> {
        let mut models = Models::default();
        for (m, model) in config.models.iter().enumerate() {
            let mut targets = Vec::new();
            let names = model.target_names();
            for ((t, target), name) in model.targets.iter().enumerate().zip(names) {
                let key = format!("models[{m}].targets[{t}]");
                let provider = match target.provider {
                    ProviderConfig::Local(_) => local(target, &key)?,
                    _ => build_provider(target, &model.name, &key)?,
                };
                let upstream = target.upstream_model(&model.name);
                targets.push(
                    Target::new(provider, upstream, Limits::from_config(target))
                        .named(name)
                        .priced(target.limits.price),
                );
            }
            let mut built = Model::new(model.name.clone(), targets);
            built.deadline = model.deadline_ms.map(Duration::from_millis);
            built.fallback_on.clone_from(&model.fallback_on);
            models.insert(built);
        }
        Ok(Self::with_models(
            config,
            log,
            models,
            Keys::load(&config.auth)?,
        ))
    }

    /// Build the state with models made elsewhere (the local model, tests).
    pub fn with_models(
        config: &Config,
        log: Arc<dyn StreamLog>,
        models: Models,
        keys: Keys,
    ) -> Self {
        let node_id = node_id(config);
        let node = format!("{node_id}/{}", streamlog::StreamId::new());
        Self(Arc::new(Shared {
            server: config.server.clone(),
            ledger: Arc::new(
                crate::usage::Ledger::new(Arc::clone(&log), node.clone())
                    .with_tokens_per_minute(config.limits.tokens_per_minute),
            ),
            limits: config.limits.clone(),
            sessions: config.sessions.clone(),
            task_limits: config.tasks.clone(),
            max_record_bytes: config.store.max_record_bytes,
            holdings: crate::limits::Holdings::new(&log, &node),
            rates: crate::limits::Rates::requests(Some(&log)),
            log,
            models,
            keys,
            anonymous: Principal::new("anonymous", crate::auth::Scopes::ALL),
            live: Arc::new(LiveStreams::default()),
            tasks: TaskTracker::new(),
            shutdown: Signal::new(),
            hard_stop: Signal::new(),
            node,
            node_id,
            lease_ttl: config.store.lease_ttl(),
            health: Arc::default(),
            writers: crate::writers::Writers::default(),
            publishers: config.topics.publishers.iter().cloned().collect(),
            topics: config.topics.clone(),
            known_topics: std::sync::Mutex::default(),
        }))
    }
}

/// This node's id: `server.node_id` if set; with a SQLite store, the one kept in the file
/// `<store.path>.node-id` (created on first start); otherwise a new one. A node that
/// restarts with the same id takes its own unfinished answers over at once instead of
/// waiting for their leases to expire.
fn node_id(config: &Config) -> String {
    if let Some(id) = &config.server.node_id {
        return id.clone();
    }
    let fresh = || format!("node-{}", streamlog::StreamId::new());
    if config.store.kind != StoreKind::Sqlite {
        return fresh();
    }
    let mut path = config.store.path.clone().into_os_string();
    path.push(".node-id");
    let path = std::path::PathBuf::from(path);
    if let Ok(kept) = std::fs::read_to_string(&path)
        && !kept.trim().is_empty()
    {
        return kept.trim().to_owned();
    }
    let id = fresh();
    if let Err(error) = std::fs::write(&path, &id) {
        tracing::warn!(%error, path = %path.display(), "cannot keep the node id; a restart will wait for this node's leases to expire");
    }
    id
}

fn build_provider(
    target: &TargetConfig,
    model: &str,
    key: &str,
) -> Result<Arc<dyn Provider>, String> {
    let api_key = |env: &Option<String>| -> Result<Option<String>, String> {
        match env {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                format!("{key}.api_key_env: the environment variable {var} is not set")
            }),
            None => Ok(None),
        }
    };
    let headers = |extra: &std::collections::BTreeMap<String, String>| {
        extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let connect_timeout = Duration::from_millis(target.limits.connect_timeout_ms);
    let upstream_model = target.upstream_model(model);
    let built: Result<Arc<dyn Provider>, providers::ProviderError> = match &target.provider {
        ProviderConfig::Openai(openai) => {
            let mut config = OpenAiConfig::new(openai.base_url.clone(), upstream_model);
            config.api_key = api_key(&openai.api_key_env)?;
            config.extra_headers = headers(&openai.extra_headers);
            config.connect_timeout = connect_timeout;
            config.continuation = target.continuation();
            if openai.supports_prefill.is_some() {
                tracing::warn!(
                    "{key}.supports_prefill is deprecated: use continuation = \"assistant_message\""
                );
            }
            OpenAiProvider::new(config).map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        ProviderConfig::Anthropic(anthropic) => {
            let mut config = AnthropicConfig::new(anthropic.base_url.clone(), upstream_model);
            config.api_key = api_key(&anthropic.api_key_env)?;
            config.extra_headers = headers(&anthropic.extra_headers);
            config.connect_timeout = connect_timeout;
            config.continuation = target.continuation();
            config
                .anthropic_version
                .clone_from(&anthropic.anthropic_version);
            config.max_tokens = anthropic.max_tokens;
            AnthropicProvider::new(config).map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        ProviderConfig::Gemini(gemini) => {
            let mut config = GeminiConfig::new(gemini.base_url.clone(), upstream_model);
            config.api_key = api_key(&gemini.api_key_env)?;
            config.extra_headers = headers(&gemini.extra_headers);
            config.connect_timeout = connect_timeout;
            GeminiProvider::new(config).map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        ProviderConfig::Local(_) => {
            return Err(format!("{key}: local targets are built by the binary"));
        }
        ProviderConfig::Simulator(sim) => {
            let defaults = SimulatorConfig::default();
            let config = SimulatorConfig {
                tokens: sim.tokens.unwrap_or(defaults.tokens),
                ttft_ms: sim.ttft_ms.unwrap_or(defaults.ttft_ms),
                interval_ms: sim.interval_ms.unwrap_or(defaults.interval_ms),
                seed: sim.seed.unwrap_or(defaults.seed),
                fail_after: sim.fail_after.or(defaults.fail_after),
                error_status: sim.error_status.or(defaults.error_status),
                error_probability: sim.error_probability.unwrap_or(defaults.error_probability),
                error_times: sim.error_times.or(defaults.error_times),
                retry_after_s: sim.retry_after_s.or(defaults.retry_after_s),
                continuation: defaults.continuation,
            };
            Ok(Arc::new(SimulatorProvider::new(config)))
        }
    };
    built.map_err(|e| format!("{key}: {e}"))
}

/// Open the configured stream log.
///
/// # Errors
/// A message naming the store path when it cannot be opened.
pub fn open_log(config: &StoreConfig) -> Result<Arc<dyn StreamLog>, String> {
    let clock: Arc<dyn streamlog::Clock> = Arc::new(streamlog::SystemClock);
    let ttl = Duration::from_secs(config.stream_ttl_s);
    match config.kind {
        StoreKind::Memory => Ok(Arc::new(streamlog::MemoryLog::with_budget(
            clock,
            ttl,
            config.memory_max_bytes,
        ))),
        StoreKind::Sqlite => {
            if let Some(parent) = config.path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("store.path {}: {e}", parent.display()))?;
            }
            let mut sqlite = streamlog::SqliteConfig::new(&config.path);
            sqlite.stream_ttl = ttl;
            sqlite.synchronous = match config.synchronous {
                SyncMode::Normal => streamlog::Synchronous::Normal,
                SyncMode::Full => streamlog::Synchronous::Full,
            };
            let log = streamlog::SqliteLog::open(sqlite, clock)
                .map_err(|e| format!("store.path {}: {e}", config.path.display()))?;
            Ok(Arc::new(log))
        }
        StoreKind::Redis => {
            let mut redis = streamlog::RedisConfig::new(config.url.clone());
            redis.prefix.clone_from(&config.prefix);
            redis.stream_ttl = ttl;
            if let Some(path) = &config.tls_ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("store.tls_ca_file {}: {e}", path.display()))?;
                redis.ca_pem = Some(pem);
            }
            let log = streamlog::RedisLog::open(redis, clock)
                .map_err(|e| format!("store.url {}: {e}", config.url))?;
            Ok(Arc::new(log))
        }
    }
}
