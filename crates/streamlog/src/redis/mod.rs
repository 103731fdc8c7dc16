//! [`RedisLog`]: the stream log in Redis, shared by every node of a cluster of gateways.
//!
//! Each stream is a metadata hash and a Redis Stream of records, both tagged `{id}` so
//! they live in one slot (Redis Cluster works as well as one server). Every write is one
//! Lua script (`scripts`) applying the same rules as the other backends' `control`
//! module: an append checks the lease's fencing token, `XADD`s with explicit ids
//! `<seq>-0`, updates the metadata and publishes the new last seq, atomically — a stale
//! writer's append fails whole. Readers are the shared cursor: they fetch with `XRANGE`
//! (the metadata's first kept seq alongside, in one script) and wait on a per-stream
//! watch that this node's own appends and a subscription to the cluster's notification
//! channel both advance. After the subscription reconnects, every watched stream's head
//! is read again, so a notification lost while Redis was away delays nobody.
//!
//! Retention follows the log's clock, as in the other backends: an ended stream is noted
//! in a sorted set (`ended`, by end time) and [`StreamLog::purge_expired`] deletes it with
//! its records and its idempotency keys (each stream keeps the names of its keys in a set
//! of its own) once `stream_ttl` has passed; a key whose stream was never created goes
//! `stream_ttl` after it was inserted (`keys`, by insert time). As a safety net the
//! stream's keys also `PEXPIRE` `stream_ttl` after it ends. The streams holding a lease
//! are indexed in one set (`leased`). These indexes live in other slots than the stream,
//! so they are updated beside the scripts, not inside them;
//! [`StreamLog::leased_streams`] and the purge read the metadata behind them and drop
//! stale members.
//!
//! Open streams are indexed the same way (`open`): per kind and per owner and kind, two
//! sorted sets scored by creation time, which [`StreamLog::open_streams`] and
//! [`StreamLog::count_open`] read. A stream enters them before its create script runs
//! (so no open stream is ever missing) and leaves them after its finish; readers check
//! each member's state and drop the ended ones, and the missing ones older than a grace
//! period (a create that failed). A log whose Redis holds streams from before the index
//! builds it once, by a `SCAN` of the metadata keys.
//!
//! Memory on this node is bounded in bytes: a watched stream's tail keeps at most
//! `TAIL_CAPACITY` records and [`RedisConfig::tail_bytes`] bytes, and a fetch script
//! returns at most a chunk's bytes (reading its `XRANGE` in pages sized by what it has
//! seen, so neither Redis nor this node holds much more than one chunk).
//!
//! Limits counted across nodes (`counters`): [`RedisLog::bucket`], a per-minute token
//! bucket, and [`RedisLog::hold`], places among at most N holders that lapse unless
//! refreshed — one script on one key each (`<prefix>:limit:bucket:<key>`,
//! `<prefix>:limit:hold:<key>`), on the Redis server's clock, each key expiring once it
//! says nothing.
//!
//! Connections: commands go through redis-rs's `ConnectionManager` (multiplexed, with a
//! response timeout so a stalled Redis is an error, not a hang), made afresh after a
//! connection error; the subscription has a connection of its own on a thread of its own.
//! `rediss://` goes through rustls.
//!
//! # Layout
//! - `scripts`: the Lua scripts; `values`: reading their answers, refusals as errors.
//! - `writes`: creating a stream and taking its lease; `meta`: reading a stream's
//!   metadata; `fetch`: reading records (the watched stream's tail first); `open`: the
//!   index of open streams; `notify`: the notification thread; `retention`: the purge;
//!   `counters`: limits shared by the nodes;
//!   `server`: [`LocalServer`], a throwaway `redis-server` for tests and benches.

mod counters;
mod fetch;
mod meta;
mod notify;
mod open;
mod retention;
mod scripts;
mod server;
mod values;
mod writes;

pub use server::LocalServer;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::watch;

use crate::clock::{Clock, millis};
use crate::cursor::{Head, HeadSource, Tail, follow};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamKind,
    StreamMeta, StreamState, Trim,
};
use crate::{DEFAULT_STREAM_TTL, LogFuture, RecordStream, StreamLog};
use fetch::{RedisFetch, fetch_range};
use values::{answer, corrupt, number, refusal, storage, text, value_at};
use writes::{acquire, create};

/// How a [`RedisLog`] connects.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `rediss://…` (TLS), or `redis+unix:///path`.
    pub url: String,
    /// Prefix of every key (no `{` or `}`).
    pub prefix: String,
    /// How long an ended stream is kept.
    pub stream_ttl: Duration,
    /// A command not answered within this is an error (Redis stalled).
    pub response_timeout: Duration,
    /// For `rediss://`: the PEM certificate(s) of the authority that signed the server's
    /// certificate, when it is not one the system trusts.
    pub ca_pem: Option<Vec<u8>>,
    /// Bytes (stored JSON) of each stream read on this node kept in memory for its
    /// readers, at most (default 256 KiB); the newest record is always kept, however
    /// large. Readers further behind read from Redis.
    pub tail_bytes: usize,
}

impl RedisConfig {
    /// Defaults for `url`: prefix `unbroken`, 24 h retention, 5 s response timeout,
    /// 256 KiB tails.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "unbroken".into(),
            stream_ttl: DEFAULT_STREAM_TTL,
            response_timeout: Duration::from_secs(5),
            ca_pem: None,
            tail_bytes: 256 * 1024,
        }
    }
}

/// The stream log in Redis. See the module documentation.
pub struct RedisLog {
    shared: Arc<Shared>,
    /// Stops the subscription thread when the log is dropped.
    _stop: std::sync::mpsc::Sender<()>,
}

struct Shared {
    client: redis::Client,
    /// The command connection, made on first use and again after a connection error.
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    config: RedisConfig,
    clock: Arc<dyn Clock>,
    /// Every stream read here: its head and its last records.
    heads: Mutex<HashMap<StreamId, Watched>>,
    scripts: Scripts,
    /// The index of open streams is known to cover streams from before it (`open`).
    open_indexed: AtomicBool,
}

/// A stream read on this node: the head its readers wait on, and its last records, which
/// this node's appends and one fetch per notification from other nodes fill, so a
/// thousand readers woken together read memory, not Redis.
struct Watched {
    head: watch::Sender<Head>,
    tail: Arc<std::sync::RwLock<Tail>>,
}

/// Records kept per watched stream (and at most [`RedisConfig::tail_bytes`] bytes).
const TAIL_CAPACITY: usize = 512;

struct Scripts {
    create: Script,
    append: Script,
    finish: Script,
    acquire: Script,
    renew: Script,
    release: Script,
    fetch: Script,
    trim: Script,
    release_key: Script,
    cancel: Script,
}

impl RedisLog {
    /// A log over the Redis at `config.url`. It connects on first use (and reconnects by
    /// itself), so opening needs no runtime and a Redis that is down is an error of each
    /// call, not of start-up.
    ///
    /// # Errors
    /// A malformed URL or prefix.
    pub fn open(config: RedisConfig, clock: Arc<dyn Clock>) -> Result<Self, LogError> {
        if config.prefix.contains(['{', '}']) {
            return Err(LogError::InvalidArgument(
                "the redis key prefix must not contain { or }",
            ));
        }
        if config.url.starts_with("rediss://") {
            // TLS through rustls with the ring provider, as every client of the workspace
            // (a no-op when one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match &config.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(config.url.as_str()),
        }
        .map_err(storage)?;
        let shared = Arc::new(Shared {
            client,
            conn: std::sync::RwLock::default(),
            config,
            clock,
            heads: Mutex::default(),
            open_indexed: AtomicBool::new(false),
            scripts: Scripts {
                create: Script::new(scripts::CREATE),
                append: Script::new(scripts::APPEND),
                finish: Script::new(scripts::FINISH),
                acquire: Script::new(scripts::ACQUIRE),
                renew: Script::new(scripts::RENEW),
                release: Script::new(scripts::RELEASE),
                fetch: Script::new(scripts::FETCH),
                trim: Script::new(scripts::TRIM),
                release_key: Script::new(scripts::RELEASE_KEY),
                cancel: Script::new(scripts::CANCEL),
            },
        });
        let (stop, stopped) = std::sync::mpsc::channel();
        let listener = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("unbroken-redis-notify".into())
            .spawn(move || notify::subscribe(listener, stopped))
            .map_err(|e| LogError::Storage(Box::new(e)))?;
        Ok(Self {
            shared,
            _stop: stop,
        })
    }
}

impl Shared {
    async fn conn(&self) -> Result<ConnectionManager, LogError> {
        let cached = self
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.config.response_timeout))
            .set_connection_timeout(Some(self.config.response_timeout))
            .set_number_of_retries(1);
        let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
        let conn = tokio::time::timeout(self.config.response_timeout, connecting)
            .await
            .map_err(|_| timed_out())?
            .map_err(storage)?;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// `result` of a command; a connection that failed is dropped, so the next command
    /// connects afresh (Redis restarted, or the network came back).
    fn checked<T>(
        &self,
        result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, LogError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_timeout()
                {
                    *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
                }
                Err(storage(error))
            }
            Err(_) => {
                *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
                Err(timed_out())
            }
        }
    }

    fn meta_key(&self, id: StreamId) -> String {
        format!("{}:{{{id}}}:m", self.config.prefix)
    }

    fn records_key(&self, id: StreamId) -> String {
        format!("{}:{{{id}}}:r", self.config.prefix)
    }

    fn leased_key(&self) -> String {
        format!("{}:leased", self.config.prefix)
    }

    fn ended_key(&self) -> String {
        format!("{}:ended", self.config.prefix)
    }

    fn keys_key(&self) -> String {
        format!("{}:keys", self.config.prefix)
    }

    /// The names of stream `id`'s idempotency keys.
    fn stream_keys_key(&self, id: StreamId) -> String {
        format!("{}:{{{id}}}:k", self.config.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:notify", self.config.prefix)
    }

    fn key_key(&self, principal: &str, key: &str) -> String {
        format!(
            "{}:key:{}:{principal}:{key}",
            self.config.prefix,
            principal.len()
        )
    }

    /// Run one command, as a storage error if Redis fails or does not answer in time.
    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LogError> {
        let mut conn = self.conn().await?;
        let answered =
            tokio::time::timeout(self.config.response_timeout, cmd.query_async(&mut conn)).await;
        self.checked(answered)
    }

    async fn run(
        &self,
        script: &Script,
        keys: &[String],
        args: Vec<Vec<u8>>,
    ) -> Result<(String, Vec<Value>), LogError> {
        let mut conn = self.conn().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let answered = tokio::time::timeout(
            self.config.response_timeout,
            invocation.invoke_async(&mut conn),
        )
        .await;
        answer(self.checked(answered)?)
    }

    /// Advance the watched head of `id` (if anyone here reads it) to `last`.
    fn advance(&self, id: StreamId, last: Seq, terminal: bool) {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watched) = heads.get(&id) {
            watched.head.send_if_modified(|h| {
                let changed = last > h.last || (terminal && !h.terminal);
                h.last = h.last.max(last);
                h.terminal |= terminal;
                changed
            });
        }
    }

    /// The tail of `id`, if anyone here reads it.
    fn tail(&self, id: StreamId) -> Option<Arc<std::sync::RwLock<Tail>>> {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads.get(&id).map(|watched| Arc::clone(&watched.tail))
    }

    /// Records `first..` of `id` (with their stored sizes) are durable: keep them for its
    /// readers here, then wake them.
    fn written(&self, id: StreamId, first: Seq, records: Vec<(Record, usize)>) {
        let last = first + records.len() as u64 - 1;
        if let Some(tail) = self.tail(id) {
            tail.write().unwrap_or_else(PoisonError::into_inner).push(
                first,
                records,
                TAIL_CAPACITY,
                self.config.tail_bytes,
            );
        }
        self.advance(id, last, false);
    }

    /// Another node appended to `id` up to `last`: fetch what this node's readers have
    /// not seen once, for all of them, then wake them.
    pub(super) async fn notified(&self, id: StreamId, last: Seq, terminal: bool) {
        if let Some(tail) = self.tail(id) {
            let next = tail.read().unwrap_or_else(PoisonError::into_inner).next();
            let head = self
                .heads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
                .map_or(0, |w| w.head.borrow().last);
            let after = next.saturating_sub(1).max(head);
            if after < last
                && let Ok(chunk) = fetch_range(self, id, after, last).await
                && let Some((first, _)) = chunk.records.first()
            {
                let first = *first;
                let records = chunk.records.into_iter().map(|(_, r)| {
                    let size = r.json_len();
                    (r, size)
                });
                tail.write().unwrap_or_else(PoisonError::into_inner).push(
                    first,
                    records,
                    TAIL_CAPACITY,
                    self.config.tail_bytes,
                );
            }
        }
        self.advance(id, last, terminal);
    }

    async fn index_lease(&self, id: StreamId, kind: StreamKind, leased: bool) {
        let member = format!("{}:{id}", kind.to_i64());
        let verb = if leased { "SADD" } else { "SREM" };
        let done: Result<Value, _> = self
            .command(redis::cmd(verb).arg(self.leased_key()).arg(member))
            .await;
        if let Err(error) = done {
            tracing::warn!(%error, stream = %id, "cannot index the stream's lease");
        }
    }
}

impl StreamLog for RedisLog {
    fn as_redis(&self) -> Option<&RedisLog> {
        Some(self)
    }

    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta> {
        Box::pin(async move { Ok(create(&self.shared, new, None).await?.0) })
    }

    fn create_leased(
        &self,
        new: NewStream,
        holder: String,
        ttl: Duration,
    ) -> LogFuture<'_, (StreamMeta, Lease)> {
        Box::pin(async move {
            let (meta, lease) = create(&self.shared, new, Some((holder, ttl))).await?;
            let lease = lease.ok_or_else(|| corrupt("no lease granted"))?;
            Ok((meta, lease))
        })
    }

    fn append(
        &self,
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
    ) -> LogFuture<'_, Seq> {
        Box::pin(async move {
            if records.is_empty() {
                return Err(LogError::InvalidArgument("append of zero records"));
            }
            let shared = &self.shared;
            let now = shared.clock.now_ms();
            let mut args = vec![
                token.to_string().into_bytes(),
                now.to_string().into_bytes(),
                shared.channel().into_bytes(),
                id.to_string().into_bytes(),
            ];
            let mut sizes = Vec::with_capacity(records.len());
            for record in &records {
                let body = record
                    .to_json()
                    .map_err(|e| LogError::Corrupt(e.to_string()))?;
                sizes.push(body.len());
                args.push(body);
            }
            let keys = [shared.meta_key(id), shared.records_key(id)];
            let (status, values) = shared.run(&shared.scripts.append, &keys, args).await?;
            if status != "ok" {
                return Err(refusal(id, token, &status, &values));
            }
            let first = number(value_at(&values, 0)?)?;
            let last = first + records.len() as u64 - 1;
            shared.written(id, first, records.into_iter().zip(sizes).collect());
            Ok(last)
        })
    }

    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()> {
        Box::pin(async move {
            if !state.is_terminal() {
                return Err(LogError::InvalidArgument("finish needs a terminal state"));
            }
            let shared = &self.shared;
            let meta = shared.status(id).await?;
            let args = vec![
                token.to_string().into_bytes(),
                state.to_i64().to_string().into_bytes(),
                shared.clock.now_ms().to_string().into_bytes(),
                millis(shared.config.stream_ttl)
                    .max(1)
                    .to_string()
                    .into_bytes(),
                shared.channel().into_bytes(),
                id.to_string().into_bytes(),
            ];
            let keys = [shared.meta_key(id), shared.records_key(id)];
            let (status, values) = shared.run(&shared.scripts.finish, &keys, args).await?;
            if status != "ok" {
                return Err(refusal(id, token, &status, &values));
            }
            shared.advance(id, meta.last_seq, true);
            shared.index_lease(id, meta.kind, false).await;
            open::unindex(shared, &meta).await;
            let ended = redis::cmd("ZADD")
                .arg(shared.ended_key())
                .arg(shared.clock.now_ms())
                .arg(id.to_string())
                .clone();
            shared.command::<Value>(&ended).await?;
            Ok(())
        })
    }

    fn read(&self, id: StreamId, after: Seq) -> LogFuture<'_, RecordStream> {
        Box::pin(async move {
            let shared = &self.shared;
            let (rx, tail) = {
                let mut heads = shared.heads.lock().unwrap_or_else(PoisonError::into_inner);
                heads.retain(|_, watched| watched.head.receiver_count() > 0);
                let watched = heads.entry(id).or_insert_with(|| Watched {
                    head: watch::Sender::new(Head::default()),
                    tail: Arc::default(),
                });
                (watched.head.subscribe(), Arc::clone(&watched.tail))
            };
            // Read after subscribing: a notification in between only raises the head.
            let meta = shared.status(id).await?;
            shared.advance(id, meta.last_seq, meta.state.is_terminal());
            let fetch = Arc::new(RedisFetch {
                shared: Arc::clone(shared),
                id,
                tail,
            });
            Ok(follow(fetch, HeadSource::Live(rx), after))
        })
    }

    fn status(&self, id: StreamId) -> LogFuture<'_, StreamMeta> {
        Box::pin(self.shared.status(id))
    }

    fn acquire_lease(&self, id: StreamId, holder: String, ttl: Duration) -> LogFuture<'_, Lease> {
        Box::pin(acquire(&self.shared, id, holder, ttl, String::new()))
    }

    fn take_over_lease(
        &self,
        id: StreamId,
        holder: String,
        ttl: Duration,
        dead: String,
    ) -> LogFuture<'_, Lease> {
        Box::pin(acquire(&self.shared, id, holder, ttl, dead))
    }

    fn leased_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<(StreamId, Lease)>> {
        Box::pin(async move {
            let shared = &self.shared;
            let members: Vec<String> = shared
                .command(redis::cmd("SMEMBERS").arg(shared.leased_key()))
                .await?;
            let wanted = format!("{}:", kind.to_i64());
            let mut leased = Vec::new();
            for member in members {
                let Some(id) = member
                    .strip_prefix(&wanted)
                    .and_then(|id| id.parse::<StreamId>().ok())
                else {
                    continue;
                };
                match shared.status(id).await {
                    Ok(meta) if meta.state == StreamState::Open && meta.lease.is_some() => {
                        leased.extend(meta.lease.map(|lease| (id, lease)));
                    }
                    Ok(_) | Err(LogError::NotFound(_)) => {
                        shared.index_lease(id, kind, false).await;
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(leased)
        })
    }

    fn open_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<StreamMeta>> {
        Box::pin(open::open_streams(&self.shared, kind))
    }

    fn count_open(&self, owner: String, kind: StreamKind) -> LogFuture<'_, u64> {
        Box::pin(async move { open::count_open(&self.shared, &owner, kind).await })
    }

    fn renew_lease(
        &self,
        id: StreamId,
        token: FencingToken,
        ttl: Duration,
    ) -> LogFuture<'_, Lease> {
        Box::pin(async move {
            let shared = &self.shared;
            let args = vec![
                token.to_string().into_bytes(),
                millis(ttl).to_string().into_bytes(),
                shared.clock.now_ms().to_string().into_bytes(),
            ];
            let (status, values) = shared
                .run(&shared.scripts.renew, &[shared.meta_key(id)], args)
                .await?;
            if status != "ok" {
                return Err(refusal(id, token, &status, &values));
            }
            Ok(Lease {
                holder: text(value_at(&values, 0)?)?,
                token,
                expires_at_ms: number(value_at(&values, 1)?)?,
            })
        })
    }

    fn release_lease(&self, id: StreamId, token: FencingToken) -> LogFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let args = vec![
                token.to_string().into_bytes(),
                shared.clock.now_ms().to_string().into_bytes(),
            ];
            let (status, values) = shared
                .run(&shared.scripts.release, &[shared.meta_key(id)], args)
                .await?;
            if status != "ok" {
                return Err(refusal(id, token, &status, &values));
            }
            if let Ok(meta) = shared.status(id).await {
                shared.index_lease(id, meta.kind, false).await;
            }
            Ok(())
        })
    }

    fn trim(&self, id: StreamId, trim: Trim) -> LogFuture<'_, Seq> {
        Box::pin(async move {
            let shared = &self.shared;
            let now = shared.clock.now_ms();
            let cutoff = crate::control::Control::age_cutoff(&trim, now);
            let args = vec![
                trim.keep_after.to_string().into_bytes(),
                trim.max_records
                    .map_or_else(|| "-1".to_owned(), |n| n.to_string())
                    .into_bytes(),
                cutoff
                    .map_or_else(|| "-1".to_owned(), |n| n.to_string())
                    .into_bytes(),
            ];
            let keys = [shared.meta_key(id), shared.records_key(id)];
            let (status, values) = shared.run(&shared.scripts.trim, &keys, args).await?;
            if status != "ok" {
                return Err(refusal(id, 0, &status, &values));
            }
            let first = number(value_at(&values, 0)?)?;
            // This node's readers must not be served the trimmed records from its tail.
            // (Another node's tail keeps them until they leave it: it holds only the
            // newest records, which a trim rarely reaches.)
            if let Some(tail) = shared.tail(id) {
                tail.write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .trim(first);
            }
            Ok(first)
        })
    }

    fn insert_idempotency_key(
        &self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
    ) -> LogFuture<'_, IdempotencyOutcome> {
        Box::pin(async move {
            let shared = &self.shared;
            let hash: String = entry
                .request_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let value = format!("{} {hash}", entry.stream);
            let name = shared.key_key(&principal, &key);
            let previous: Option<String> = shared
                .command(redis::cmd("SET").arg(&name).arg(value).arg("NX").arg("GET"))
                .await?;
            let Some(previous) = previous else {
                // Indexed for retention: with its stream, or alone after the TTL.
                let by_stream = redis::cmd("SADD")
                    .arg(shared.stream_keys_key(entry.stream))
                    .arg(&name)
                    .clone();
                shared.command::<Value>(&by_stream).await?;
                let by_time = redis::cmd("ZADD")
                    .arg(shared.keys_key())
                    .arg(shared.clock.now_ms())
                    .arg(&name)
                    .clone();
                shared.command::<Value>(&by_time).await?;
                return Ok(IdempotencyOutcome::Inserted);
            };
            Ok(IdempotencyOutcome::Existing(key_entry(&previous)?))
        })
    }

    fn find_idempotency_key(
        &self,
        principal: String,
        key: String,
    ) -> LogFuture<'_, Option<IdempotencyEntry>> {
        Box::pin(async move {
            let shared = &self.shared;
            let name = shared.key_key(&principal, &key);
            let value: Option<String> = shared.command(redis::cmd("GET").arg(&name)).await?;
            value.as_deref().map(key_entry).transpose()
        })
    }

    fn release_idempotency_key(
        &self,
        principal: String,
        key: String,
        stream: StreamId,
    ) -> LogFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let keys = [shared.key_key(&principal, &key)];
            let args = vec![stream.to_string().into_bytes()];
            shared.run(&shared.scripts.release_key, &keys, args).await?;
            Ok(())
        })
    }

    fn request_cancel(&self, id: StreamId) -> LogFuture<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let (status, values) = shared
                .run(&shared.scripts.cancel, &[shared.meta_key(id)], Vec::new())
                .await?;
            if status != "ok" {
                return Err(refusal(id, 0, &status, &values));
            }
            Ok(())
        })
    }

    fn purge_expired(&self) -> LogFuture<'_, usize> {
        Box::pin(retention::purge(&self.shared))
    }
}

fn timed_out() -> LogError {
    LogError::Storage(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis did not answer in time",
    )))
}

/// An idempotency key's stored value: `<stream> <hex request hash>`.
fn key_entry(value: &str) -> Result<IdempotencyEntry, LogError> {
    let (stream, hash) = value
        .split_once(' ')
        .ok_or_else(|| corrupt("a key's value"))?;
    let stream = stream.parse().map_err(|_| corrupt("a key's stream"))?;
    let request_hash = (0..hash.len() / 2)
        .map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| corrupt("a key's hash"))?;
    Ok(IdempotencyEntry {
        stream,
        request_hash,
    })
}
