//! `[limits]`, `[sessions]`, `[tasks]` and `[topics]`: how much one principal (or
//! everyone) may hold, ask for and keep, and for how long. 0 is no limit throughout.

use serde::Deserialize;

/// `[limits]`: how much one principal (or everyone) may hold at once. 0 is no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections open at once, all clients together; past it a new connection gets 503
    /// with `Retry-After`. Default 10,000.
    pub max_connections: usize,
    /// Answers one principal may have generating at once; one more gets 429
    /// `too_many_streams`. Default 0 (none).
    pub max_streams_per_principal: usize,
    /// SSE responses one principal may have open at once; one more gets 429
    /// `too_many_readers`. Default 0 (none).
    pub max_readers_per_principal: usize,
    /// A reader older than this is ended, resumably (it reconnects with `Last-Event-ID`).
    /// Default 3600 (1 h).
    pub max_reader_age_s: u64,
    /// A reader that takes nothing for this long while events wait for it is evicted,
    /// resumably. Default 30,000 ms.
    pub slow_reader_timeout_ms: u64,
    /// Answers one principal may ask for per minute (a burst of a minute's worth, then
    /// evenly); one more gets 429 `rate_limited` with `Retry-After`. Default 0 (none).
    pub requests_per_minute: u32,
    /// Tokens (prompt and completion, as the upstreams count them) one principal may
    /// spend per minute; past it new answers get 429 `tokens_rate_limited` until the
    /// minute's spending has drained. Default 0 (none).
    pub tokens_per_minute: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_streams_per_principal: 0,
            max_readers_per_principal: 0,
            max_reader_age_s: 3600,
            slow_reader_timeout_ms: 30_000,
            requests_per_minute: 0,
            tokens_per_minute: 0,
        }
    }
}

/// `[sessions]`: chat sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// The most earlier messages (user turns and whole answers) sent upstream with a new
    /// message; older ones stay in the log. Default 40.
    pub max_history_messages: usize,
    /// Sessions one principal may have open; one more gets 429 `too_many_sessions`.
    /// Default 1,000.
    pub max_open_per_principal: u64,
    /// A session with no message for this long is ended (and deleted `stream_ttl_s`
    /// later); a message to it then gets 409 `session_ended`. Default 7 days.
    pub idle_ttl_s: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_history_messages: 40,
            max_open_per_principal: 1_000,
            idle_ttl_s: 7 * 24 * 60 * 60,
        }
    }
}

/// `[tasks]`: tasks with progress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Tasks one principal may have open (not completed or failed); one more gets 429
    /// `too_many_tasks`. Default 1,000.
    pub max_open_per_principal: u64,
    /// A task with no progress for this long is failed with `{"error": "idle"}` (and
    /// deleted `stream_ttl_s` later). Default 24 h.
    pub idle_ttl_s: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            max_open_per_principal: 1_000,
            idle_ttl_s: 24 * 60 * 60,
        }
    }
}

/// `[topics]`: the publish/subscribe hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Principals allowed to publish; empty (default): every principal may.
    pub publishers: Vec<String>,
    /// A topic keeps at most this many events (the oldest go first). Default 10,000.
    pub max_events: u64,
    /// A topic keeps events at most this long, in seconds. Default 24 h.
    pub max_age_s: u64,
    /// How often retention runs, in milliseconds. Default 10 s.
    pub retention_interval_ms: u64,
    /// Topics that may exist at once, all principals together (topics belong to the
    /// system); creating one more gets 429 `too_many_topics`. Default 10,000.
    pub max_topics: u64,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            publishers: Vec::new(),
            max_events: 10_000,
            max_age_s: 24 * 60 * 60,
            retention_interval_ms: 10_000,
            max_topics: 10_000,
        }
    }
}
