//! Configuration: a serde struct loaded from TOML plus `UNBROKEN__SECTION__KEY`
//! environment variables, validated at start-up with errors that name the offending key.
//!
//! Environment variables override scalars of the file: `UNBROKEN__SERVER__LISTEN=…` sets
//! `server.listen`. Values parse as TOML scalars (numbers, booleans) and fall back to
//! strings. Lists (`[[models]]`) are set in the file only. Secrets never live here: an
//! upstream key is named by `api_key_env`, and API keys are stored as SHA-256 hashes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod limits;
mod targets;

pub use limits::{LimitsConfig, SessionsConfig, TasksConfig, TopicsConfig};

pub use targets::{
    AnthropicTarget, GeminiTarget, LocalTarget, ModelConfig, OpenaiTarget, Price, ProviderConfig,
    ProviderKind, RetryRule, SHARED_KEYS, SimulatorTarget, TargetConfig, TargetLimits,
};

/// Why the configuration was refused. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted path of the key, e.g. `models[1].targets[0].base_url`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[[models]]`.
    pub models: Vec<ModelConfig>,
    /// `[topics]`.
    pub topics: TopicsConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[sessions]`.
    pub sessions: SessionsConfig,
    /// `[tasks]`.
    pub tasks: TasksConfig,
}

/// `[server]`: the listener and stream behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 past it). Default 1 MiB.
    pub max_body_bytes: usize,
    /// A heartbeat comment is sent on idle streams this often. Default 15 s.
    pub heartbeat_interval_ms: u64,
    /// The `retry:` field sent at the start of every stream. Default 1000 ms.
    pub retry_ms: u64,
    /// A generation with no reader attached for this long is cancelled. Default 60 s.
    pub reader_grace_ms: u64,
    /// On shutdown, writers get this long to finish. Default 10 s.
    pub shutdown_grace_ms: u64,
    /// A client has this long to send a request's headers, and again its body (408).
    /// Default 30 s.
    pub request_read_timeout_ms: u64,
    /// Allow listening on a non-loopback address with no API keys configured.
    pub allow_unauthenticated: bool,
    /// A session channel sends a `progress` event every this many tokens. Default 10.
    pub progress_every: u32,
    /// Browser origins allowed to call the API from other sites (CORS), e.g.
    /// `["https://app.example.com"]`. Empty (default): same-origin only.
    pub cors_origins: Vec<String>,
    /// This node's id in leases. Default: kept in `<store.path>.node-id` (SQLite), so a
    /// restarted node knows its own unfinished answers and takes them over at once.
    pub node_id: Option<String>,
    /// The PEM certificate chain for HTTPS (with `tls_key`); HTTP/2 is offered by ALPN.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for HTTPS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Host names accepted in `Host` when auth is off, besides the listen address and
    /// `localhost` (a page using DNS rebinding names its own host: 421).
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            heartbeat_interval_ms: 15_000,
            retry_ms: 1_000,
            reader_grace_ms: 60_000,
            shutdown_grace_ms: 10_000,
            request_read_timeout_ms: 30_000,
            allow_unauthenticated: false,
            cors_origins: Vec::new(),
            progress_every: 10,
            node_id: None,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    /// `reader_grace_ms` as a duration.
    pub fn reader_grace(&self) -> Duration {
        Duration::from_millis(self.reader_grace_ms)
    }
    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    /// `request_read_timeout_ms` as a duration.
    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_millis(self.request_read_timeout_ms)
    }
}

/// Which stream log backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In memory: fast, lost on restart.
    Memory,
    /// SQLite file: durable, one node.
    Sqlite,
    /// Redis: shared by several nodes.
    Redis,
}

/// `[store]`: the stream log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory`, `sqlite` (default) or `redis`.
    pub kind: StoreKind,
    /// The SQLite file. Default `data/unbroken.db`.
    pub path: PathBuf,
    /// How long a stream is kept after it ends, in seconds. Default 24 h.
    pub stream_ttl_s: u64,
    /// How long a writer's lease lasts without renewal; writers renew at a third of it.
    /// A stream whose writer's lease expired is taken over by another node (or this one).
    /// Default 10,000 ms.
    pub lease_ttl_ms: u64,
    /// The Redis server, with `kind = "redis"`. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every Redis key. Default `unbroken`.
    pub prefix: String,
    /// With a `rediss://` URL: the PEM file of the authority that signed the server's
    /// certificate, when the system does not trust it already.
    pub tls_ca_file: Option<PathBuf>,
    /// The largest record a client may write (a published event, a task's progress or
    /// result), serialised; larger gets 413. Default 1 MiB.
    pub max_record_bytes: usize,
    /// SQLite: `normal` (default: an acknowledged append survives the gateway's crash, not
    /// always a power loss) or `full` (it survives a power loss too; each commit waits for
    /// the disk).
    pub synchronous: SyncMode,
    /// Memory: the bytes of records kept; past it the oldest ended streams are deleted
    /// first, and new streams are refused (503 `store_full`) while open ones alone fill
    /// it. Default 1 GiB.
    pub memory_max_bytes: u64,
}

/// `[store] synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Survives a crash of the process.
    #[default]
    Normal,
    /// Survives a power loss.
    Full,
}

impl StoreConfig {
    /// `lease_ttl_ms` as a duration.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            path: PathBuf::from("data/unbroken.db"),
            stream_ttl_s: 24 * 60 * 60,
            lease_ttl_ms: 10_000,
            url: "redis://127.0.0.1:6379".into(),
            prefix: "unbroken".into(),
            tls_ca_file: None,
            max_record_bytes: 1 << 20,
            synchronous: SyncMode::Normal,
            memory_max_bytes: 1 << 30,
        }
    }
}

/// `[auth]`: API keys, as SHA-256 hashes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.keys]]`.
    pub keys: Vec<ApiKeyConfig>,
    /// A file with one `principal sha256hex` pair per line (`#` comments allowed).
    pub keys_file: Option<PathBuf>,
    /// `[auth.jwt]`: bearer tokens signed by an identity provider.
    pub jwt: Option<JwtConfig>,
}

/// The scopes a key may name (`crate::auth::Scope` gives them meaning).
pub const SCOPES: [&str; 4] = ["chat", "subscribe", "publish", "admin"];

/// `[auth.jwt]`: JSON Web Tokens as bearer credentials. The principal is the token's `sub`,
/// its scopes its `scope` claim (space-separated). The algorithm comes from here, never
/// from the token: HS256 with `hs256_secret_env`, or RS256 / ES256 with the keys of
/// `jwks_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// A JWKS file (JSON `{"keys": [...]}`) with the RS256 / ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`, if set.
    pub issuer: Option<String>,
    /// The required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 60.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

fn default_leeway_s() -> u64 {
    60
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who the key belongs to: streams are bound to this name.
    pub principal: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// What the key may do: `chat`, `subscribe`, `publish`, `admin`. Default: all but
    /// `admin`.
    pub scopes: Option<Vec<String>>,
}

impl Config {
    /// Load `path` (if given) and apply `UNBROKEN__*` variables from `env`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key at fault.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("config: {e}")))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("UNBROKEN__") else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &keys, parse_scalar(&value))
                .map_err(|message| invalid(format!("environment {name}"), message))?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Check values the types alone cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be more than 0"));
        }
        if self.topics.retention_interval_ms == 0 {
            return Err(invalid(
                "topics.retention_interval_ms",
                "must be more than 0",
            ));
        }
        if self.server.request_read_timeout_ms == 0 {
            return Err(invalid(
                "server.request_read_timeout_ms",
                "must be more than 0",
            ));
        }
        if self.store.max_record_bytes == 0 {
            return Err(invalid("store.max_record_bytes", "must be more than 0"));
        }
        if self.store.lease_ttl_ms < 300 {
            return Err(invalid(
                "store.lease_ttl_ms",
                "must be at least 300 (writers renew at a third of it)",
            ));
        }
        if self.store.kind == StoreKind::Redis {
            let url = &self.store.url;
            if !["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(invalid(
                    "store.url",
                    "must be a redis://, rediss:// or redis+unix:// URL",
                ));
            }
            if self.store.prefix.is_empty() || self.store.prefix.contains(['{', '}']) {
                return Err(invalid("store.prefix", "must be non-empty, without { or }"));
            }
        }
        if let Some(id) = &self.server.node_id
            && (id.is_empty() || id.len() > 128 || id.contains(['/', ' ']))
        {
            return Err(invalid(
                "server.node_id",
                "must be 1 to 128 characters, without '/' or spaces",
            ));
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        if self.server.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "server.heartbeat_interval_ms",
                "must be more than 0",
            ));
        }
        for (i, origin) in self.server.cors_origins.iter().enumerate() {
            let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.trim_end_matches('/').contains(['*', ' '])
                && origin.split('/').count() == 3;
            if !valid {
                return Err(invalid(
                    format!("server.cors_origins[{i}]"),
                    "must be an origin like https://app.example.com (no path, no wildcard)",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (m, model) in self.models.iter().enumerate() {
            let key = format!("models[{m}]");
            model.validate(&key)?;
            if !names.insert(model.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("model {:?} is configured twice", model.name),
                ));
            }
        }
        for (k, api_key) in self.auth.keys.iter().enumerate() {
            if api_key.principal.is_empty()
                || api_key.principal.len() > 256
                || api_key.principal.chars().any(char::is_control)
            {
                return Err(invalid(
                    format!("auth.keys[{k}].principal"),
                    "must be 1 to 256 characters without control characters",
                ));
            }
            if let Some(scopes) = &api_key.scopes
                && let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str()))
            {
                return Err(invalid(
                    format!("auth.keys[{k}].scopes"),
                    format!("{bad:?} is not a scope: chat, subscribe, publish or admin"),
                ));
            }
            if parse_sha256(&api_key.sha256).is_none() {
                return Err(invalid(
                    format!("auth.keys[{k}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                ));
            }
        }
        Ok(())
    }
}

/// `"8080"` → integer, `"true"` → boolean, anything else → string.
fn parse_scalar(value: &str) -> toml::Value {
    if let Ok(int) = value.parse::<i64>() {
        return toml::Value::Integer(int);
    }
    if let Ok(float) = value.parse::<f64>()
        && value.contains('.')
    {
        return toml::Value::Float(float);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("needs a key after UNBROKEN__".to_owned()),
        [last] if !last.is_empty() => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] if !first.is_empty() && !rest.is_empty() => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
        _ => Err("empty key segment".to_owned()),
    }
}

/// 64 hex digits → 32 bytes.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unbroken.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_documented_example_loads() {
        let config = load(
            r#"
            [server]
            listen = "127.0.0.1:8080"
            [store]
            kind = "sqlite"
            path = "data/unbroken.db"
            [[models]]
            name = "sim"
            targets = [{ provider = "simulator", tokens = 64, ttft_ms = 50, interval_ms = 10 }]
            [[models]]
            name = "gpt-4.1"
            targets = [{ provider = "openai", base_url = "https://api.openai.com/v1", api_key_env = "OPENAI_API_KEY", model = "gpt-4.1", max_concurrency = 10 }]
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.models.len(), 2);
        assert_eq!(config.models[1].targets[0].limits.max_concurrency, Some(10));
        assert_eq!(config.store.kind, StoreKind::Sqlite);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = load("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("listen_port"), "{error}");
    }

    #[test]
    fn a_wrongly_typed_value_is_refused_by_name() {
        let error = load("[server]\nreader_grace_ms = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("reader_grace_ms"), "{error}");
        let error = load("", &[("UNBROKEN__SERVER__HEARTBEAT_INTERVAL_MS", "often")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("heartbeat_interval_ms"), "{error}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("UNBROKEN__SERVER__LISTEN", "127.0.0.1:9"),
                ("UNBROKEN__SERVER__READER_GRACE_MS", "5"),
                ("UNBROKEN__STORE__KIND", "memory"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9);
        assert_eq!(config.server.reader_grace_ms, 5);
        assert_eq!(config.store.kind, StoreKind::Memory);
    }

    #[test]
    fn continuation_is_a_mode_and_supports_prefill_its_deprecated_alias() {
        let target = |extra: &str| {
            load(
                &format!(
                    "[[models]]\nname = \"m\"\ntargets = [{{ provider = \"openai\", base_url = \"http://x\"{extra} }}]\n"
                ),
                &[],
            )
        };
        let mode = |extra: &str| target(extra).unwrap().models[0].targets[0].continuation();
        assert_eq!(mode(""), providers::Continuation::None);
        assert_eq!(
            mode(", continuation = \"prefix_flag\""),
            providers::Continuation::PrefixFlag
        );
        assert_eq!(
            mode(", supports_prefill = true"),
            providers::Continuation::AssistantMessage
        );
        let both = target(", supports_prefill = true, continuation = \"none\"")
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("models[0].targets[0].supports_prefill"),
            "{both}"
        );
        assert!(target(", continuation = \"guess\"").is_err());
    }

    #[test]
    fn each_provider_has_exactly_its_own_keys() {
        let target = |keys: &str| {
            load(
                &format!("[[models]]\nname = \"m\"\ntargets = [{{ {keys} }}]\n"),
                &[],
            )
        };
        let error = target("provider = \"openai\", base_url = \"http://x\", tokens = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `tokens`"), "{error}");
        assert!(error.contains("models.targets"), "{error}");
        let error = target("provider = \"openai\"").unwrap_err().to_string();
        assert!(error.contains("missing field `base_url`"), "{error}");
        let error = target("provider = \"gemini\", anthropic_version = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown field `anthropic_version`"),
            "{error}"
        );
        let error = target("provider = \"claude\"").unwrap_err().to_string();
        assert!(error.contains("unknown variant `claude`"), "{error}");
        // The shared keys go with every provider.
        let config = target(
            "provider = \"anthropic\", model = \"claude-sonnet-4-5\", max_retries = 1, \
             name = \"claude\", price = { input_per_mtok = 3.0, output_per_mtok = 15.0 }",
        )
        .unwrap();
        let claude = &config.models[0].targets[0];
        assert_eq!(claude.kind(), ProviderKind::Anthropic);
        assert_eq!(claude.limits.max_retries, 1);
        assert_eq!(config.models[0].target_names(), ["claude"]);
        let ProviderConfig::Anthropic(anthropic) = &claude.provider else {
            panic!("not anthropic");
        };
        assert_eq!(anthropic.base_url, "https://api.anthropic.com");
        assert_eq!(anthropic.max_tokens, 4096);
        let error = target("provider = \"anthropic\", continuation = \"prefix_flag\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("models[0].targets[0].continuation"),
            "{error}"
        );
        let error = target("provider = \"simulator\", retry_same_target_on = [\"often\"]")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("models[0].targets[0].retry_same_target_on[0]"),
            "{error}"
        );
    }

    #[test]
    fn target_names_default_to_provider_and_model_and_must_differ() {
        let config = load(
            "[[models]]\nname = \"m\"\ntargets = [\n  { provider = \"simulator\" },\n  { provider = \"simulator\" },\n  { provider = \"gemini\", model = \"gemini-2.5-flash\" },\n]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.models[0].target_names(),
            ["simulator:m#1", "simulator:m#2", "gemini:gemini-2.5-flash"]
        );
        let error = load(
            "[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", name = \"a\" }, { provider = \"simulator\", name = \"a\" }]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("models[0].targets[1].name"), "{error}");
    }

    #[test]
    fn bad_api_key_hashes_are_refused() {
        let error = load("[[auth.keys]]\nprincipal = \"a\"\nsha256 = \"xyz\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("auth.keys[0].sha256"), "{error}");
    }
}
