//! The stream log: an append-only, ordered, durable log of records per stream, which
//! live readers follow and late readers replay. Every later feature of unbroken — resume,
//! idempotency, sessions, topics, tasks, takeover after a crash — stands on it.
//!
//! # Layout
//!
//! - [`id`]: [`StreamId`] (time-ordered, unguessable, strictly parsed) and [`Seq`].
//! - [`record`]: the protocol-neutral [`Record`] and the stream metadata types.
//! - [`clock`]: the injectable [`Clock`] ([`SystemClock`], [`ManualClock`]).
//! - [`error`]: the one error enum, [`LogError`].
//! - `control` (private): the lease, fencing and state rules all backends share.
//! - `cursor` (private): the reader cursor all backends share (replay, then follow).
//! - [`memory`]: [`MemoryLog`], in-process and ephemeral, with an optional byte budget.
//! - [`sqlite`]: [`SqliteLog`], durable, one writer thread with group commit, hot tail.
//! - [`redis`]: [`RedisLog`], shared by every node of a cluster (Lua scripts, Redis
//!   Streams, a notification channel).
//! - [`retention`]: the periodic driver for [`StreamLog::purge_expired`]. Trimming the
//!   records of streams that never end ([`StreamLog::trim`], for pub/sub topics) is
//!   driven by the caller, which knows each topic's limits.
//!
//! # The trait
//!
//! [`StreamLog`] is object-safe and used as `Arc<dyn StreamLog>`. Its methods return
//! boxed futures ([`LogFuture`]) written by hand rather than through `async-trait`: it is
//! the same cost (one allocation per call, a batch of records per call), adds no
//! dependency or macro, and keeps the `Send` bound and lifetimes visible in the
//! signatures. Arguments are owned (`StreamId` is `Copy`; strings are moved) so the
//! futures borrow nothing but `&self`.
//!
//! # Guarantees
//!
//! - Seqs of a stream are 1, 2, 3 … without gaps; `append` returns the seq of the last
//!   record of its batch.
//! - A reader started with `after = k` yields k+1, k+2, … exactly once each, first from
//!   the store, then live, and ends after the last record of a stream in a terminal
//!   state. The one exception is retention: records [`StreamLog::trim`] deleted before
//!   the reader reached them are skipped silently, and the reader continues with the
//!   first kept record (as a Kafka consumer or a Redis `XREAD` does after trimming);
//!   seqs it yields still only ever rise, and a subscriber sees the gap as a jump in
//!   seq. Trimming never lowers `last_seq`, so appends continue at `last_seq + 1`.
//!   Readers only ever see records that are durable (acknowledged or about to be): a
//!   crash cannot show a client a seq that a later writer rewrites.
//! - Readers are cursors: an append publishes only the new last seq (a
//!   `tokio::sync::watch` per open stream); a slow reader re-reads from the store or the
//!   in-memory tail and never makes the writer buffer for it.
//! - Writes carry a fencing token; only the token of the current lease is accepted.
//! - [`StreamLog::open_streams`] and [`StreamLog::count_open`] reflect every create and
//!   finish acknowledged before them, and an open stream's
//!   [`updated_ms`](StreamMeta::updated_ms) is its last append (or lease change), on
//!   every backend: what a sweeper of idle sessions and tasks, and a per-principal quota
//!   of open streams, stand on.
//!
//! # Memory bounds
//!
//! What the log keeps in memory is bounded in bytes, not only in records, so large
//! records (1 MiB events) cannot pin gigabytes. Sizes are records' stored JSON lengths.
//!
//! - A reader holds one fetched chunk at a time: at most 512 records and 256 KiB (at
//!   least one record, so a larger record goes through alone), on every backend's fetch
//!   path (the cursor's `ChunkBudget`; Redis applies it inside its fetch script).
//! - A hot tail (sqlite's per open stream, Redis's per stream read on a node) keeps at
//!   most its record count and [`SqliteConfig::tail_bytes`] /
//!   [`RedisConfig::tail_bytes`] (256 KiB by default), always at least the newest record;
//!   readers further behind read from the store.
//! - [`MemoryLog::with_budget`] bounds the whole memory store: over budget it evicts
//!   ended streams, the one that ended first first; it never evicts an open stream nor
//!   refuses its appends, and refuses a `create` that cannot fit with
//!   [`LogError::Full`]. [`MemoryLog::bytes`] reports what it holds.
//!
//! # Mapping onto Redis Streams
//!
//! The [`redis`] backend implements this mapping (with a notification channel rather
//! than keyspace notifications, and retention by the log's clock). The trait maps onto
//! Redis without changes: records live in a Redis Stream per
//! stream id, appended with `XADD key <seq>-0 …` (explicit ids, so Redis itself refuses
//! an id at or below the top — a second fence); `read(id, after)` is `XRANGE key
//! (<after>-0 +` for replay followed by `XREAD BLOCK 0 STREAMS key <last>-0` for live
//! records (or keyspace notifications feeding the same [`Head`](cursor) watch); metadata,
//! the lease and the fence are a hash updated by Lua scripts that implement the rules in
//! `control` atomically with the `XADD`; idempotency keys are `SET key value NX`;
//! retention is `EXPIRE` on the stream's keys at `finish`, so `purge_expired` is a no-op.
//! [`StreamLog::trim`] is one Lua script: by position `XTRIM key MINID <keep_after+1>-0`,
//! by count `XTRIM key MAXLEN <max_records>` (exact, not `~`: the trait promises the
//! limit), by age an `XRANGE key - + COUNT n` walk from the head comparing each entry's
//! append-time field `t` (stored by the `XADD`, since the ids carry seqs, not times) up
//! to the first young entry, then `XTRIM MINID` there; the script stores the new
//! `first_seq` in the metadata hash (`MAX` of the old and new, so it never moves back).
//! `XTRIM` leaves the stream's last id, so `XADD`'s top-id check keeps fencing. Readers
//! need nothing extra: `XRANGE (<after>-0 +` simply starts at the first kept entry.

pub mod clock;
mod control;
mod cursor;
pub mod error;
pub mod id;
pub mod memory;
pub mod record;
pub mod redis;
pub mod retention;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::LogError;
pub use id::{ParseStreamIdError, Seq, StreamId};
pub use memory::MemoryLog;
pub use record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamKind,
    StreamMeta, StreamState, Trim, UpstreamRequest,
};
pub use redis::{RedisConfig, RedisLog};
pub use sqlite::{SqliteConfig, SqliteLog, Synchronous};

/// The future every [`StreamLog`] method returns.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send + 'a>>;

/// A reader: the records after a position, replayed and then followed live, ending after
/// the last record of a stream in a terminal state. An error ends it.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<(Seq, Record), LogError>> + Send>>;

/// The stream log. See the crate documentation for the guarantees every backend keeps;
/// the conformance suite in `tests/conformance` checks them.
pub trait StreamLog: Send + Sync + 'static {
    /// Create an open stream with no records and no lease.
    ///
    /// # Errors
    /// [`LogError::AlreadyExists`] if the id is taken; storage errors.
    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta>;

    /// Create an open stream whose writer lease `holder` holds from the start for `ttl`:
    /// [`StreamLog::create`] then [`StreamLog::acquire_lease`], as one operation (one
    /// commit on sqlite, where each commit is a wait on the writer's next batch). The
    /// returned metadata shows the lease.
    ///
    /// # Errors
    /// As [`StreamLog::create`].
    fn create_leased(
        &self,
        new: NewStream,
        holder: String,
        ttl: Duration,
    ) -> LogFuture<'_, (StreamMeta, Lease)> {
        Box::pin(async move {
            let mut meta = self.create(new).await?;
            let lease = self.acquire_lease(meta.id, holder, ttl).await?;
            meta.fence = lease.token;
            meta.lease = Some(lease.clone());
            Ok((meta, lease))
        })
    }

    /// Append a batch of records, atomically, as the writer holding lease `token`.
    /// Resolves once the batch is durable, with the seq of its last record.
    ///
    /// # Errors
    /// [`LogError::NotFound`], [`LogError::StaleToken`] (the caller is no longer the
    /// writer), [`LogError::AlreadyFinished`], [`LogError::InvalidArgument`] for an empty
    /// batch; storage errors.
    fn append(&self, id: StreamId, token: FencingToken, records: Vec<Record>)
    -> LogFuture<'_, Seq>;

    /// End the stream in a terminal `state` and clear its lease; readers end after
    /// delivering every record.
    ///
    /// # Errors
    /// As [`StreamLog::append`]; [`LogError::InvalidArgument`] for `StreamState::Open`.
    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()>;

    /// A reader of every record after `after` (0 = from the first).
    ///
    /// # Errors
    /// [`LogError::NotFound`] if the stream does not exist (checked before the reader is
    /// returned, so the HTTP layer can answer 404 instead of starting a response).
    fn read(&self, id: StreamId, after: Seq) -> LogFuture<'_, RecordStream>;

    /// The stream's metadata.
    ///
    /// # Errors
    /// [`LogError::NotFound`]; storage errors.
    fn status(&self, id: StreamId) -> LogFuture<'_, StreamMeta>;

    /// Take the writer lease for `ttl` if there is none or it has expired. The returned
    /// token is strictly greater than any granted before on this stream.
    ///
    /// # Errors
    /// [`LogError::LeaseHeld`], [`LogError::AlreadyFinished`], [`LogError::NotFound`].
    fn acquire_lease(&self, id: StreamId, holder: String, ttl: Duration) -> LogFuture<'_, Lease>;

    /// Take the writer lease for `ttl` as [`StreamLog::acquire_lease`] does, and also while
    /// the current lease is unexpired but held by `dead`: a holder the caller knows is
    /// gone (this node before it restarted). The token rises, so the dead holder is fenced.
    ///
    /// # Errors
    /// As [`StreamLog::acquire_lease`].
    fn take_over_lease(
        &self,
        id: StreamId,
        holder: String,
        ttl: Duration,
        dead: String,
    ) -> LogFuture<'_, Lease>;

    /// The open streams of `kind` that hold a writer lease (expired or not), with it:
    /// where takeover looks for writers that died.
    ///
    /// # Errors
    /// Storage errors.
    fn leased_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<(StreamId, Lease)>>;

    /// The metadata of every open stream (state `Open`) of `kind`, in no particular
    /// order: what a sweeper ending idle sessions or tasks walks, comparing each
    /// stream's [`StreamMeta::updated_ms`] with the clock. Every backend keeps
    /// `updated_ms` at the stream's last append (or lease change), so `now - updated_ms`
    /// is how long it has been idle.
    ///
    /// Its cost is proportional to the open streams of `kind` (sqlite: one indexed
    /// query and a lookup of each stream's last record; redis: an index of open streams
    /// and one pipelined read of their metadata), so it suits a periodic sweep, not a
    /// request's path.
    ///
    /// The default refuses with [`LogError::InvalidArgument`], for logs outside this
    /// crate written before the method existed; every backend here implements it.
    ///
    /// # Errors
    /// Storage errors.
    fn open_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<StreamMeta>> {
        let _ = kind;
        Box::pin(std::future::ready(Err(LogError::InvalidArgument(
            "this stream log cannot list its open streams",
        ))))
    }

    /// How many open streams of `kind` `owner` owns: the count a per-principal quota
    /// on open sessions or tasks checks before it creates one. It reflects every create
    /// and finish acknowledged before it (the check and the create that follows are
    /// two calls, so concurrent creates of one owner may both pass a check).
    ///
    /// Cheap: a counter (memory), a count over a partial index (sqlite), or a check of
    /// the owner's own index of open streams (redis) — proportional to what `owner` has
    /// open, never to the whole log.
    ///
    /// The default refuses with [`LogError::InvalidArgument`], as
    /// [`StreamLog::open_streams`]'s does.
    ///
    /// # Errors
    /// Storage errors.
    fn count_open(&self, owner: String, kind: StreamKind) -> LogFuture<'_, u64> {
        let _ = (owner, kind);
        Box::pin(std::future::ready(Err(LogError::InvalidArgument(
            "this stream log cannot count its open streams",
        ))))
    }

    /// Extend the lease with `token` to `now + ttl`.
    ///
    /// # Errors
    /// [`LogError::StaleToken`] if `token` is not the current lease (taken over or
    /// released); [`LogError::AlreadyFinished`]; [`LogError::NotFound`].
    fn renew_lease(&self, id: StreamId, token: FencingToken, ttl: Duration)
    -> LogFuture<'_, Lease>;

    /// Give up the lease with `token`; anyone may acquire the stream afterwards.
    ///
    /// # Errors
    /// As [`StreamLog::renew_lease`].
    fn release_lease(&self, id: StreamId, token: FencingToken) -> LogFuture<'_, ()>;

    /// Retention for streams that never end (pub/sub topics): delete the oldest records
    /// of stream `id` that `trim` matches (by position, by count, by age — any limit
    /// that matches deletes), and return the new first kept seq (`first_seq`; it is
    /// `last_seq + 1` if no record is left). Only ever deletes a prefix: the stream
    /// keeps exactly `first_seq ..= last_seq`.
    ///
    /// It is housekeeping, not a write: it needs no lease, works in every state (open or
    /// ended), and changes neither `last_seq` (appends continue at `last_seq + 1`) nor
    /// the lease, the fence or `updated_ms` (so it does not delay
    /// [`StreamLog::purge_expired`]). It is ordered with appends (the count limit counts
    /// every append acknowledged before it), `first_seq` never moves back, and a
    /// trim that deletes nothing is a cheap no-op, so calling it periodically with the
    /// same limits is the intended use. Readers are safe: a reader asking for trimmed
    /// records, or overtaken by a trim while it runs, skips to the first kept record —
    /// see the crate documentation.
    ///
    /// Its cost is proportional to the records it deletes (sqlite deletes on its one
    /// writer thread, between batches of appends), so trimming often keeps each call
    /// short.
    ///
    /// # Errors
    /// [`LogError::NotFound`]; storage errors.
    fn trim(&self, id: StreamId, trim: Trim) -> LogFuture<'_, Seq>;

    /// Atomically map `(principal, key)` to `entry` unless the pair is already mapped;
    /// if it is, return the existing entry. Keys are purged with their stream.
    ///
    /// # Errors
    /// Storage errors.
    fn insert_idempotency_key(
        &self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
    ) -> LogFuture<'_, IdempotencyOutcome>;

    /// The entry `(principal, key)` maps to, if any (a lookup that never inserts).
    ///
    /// # Errors
    /// Storage errors.
    fn find_idempotency_key(
        &self,
        principal: String,
        key: String,
    ) -> LogFuture<'_, Option<IdempotencyEntry>>;

    /// Remove `(principal, key)` if it still maps to `stream`, so that the key can start
    /// a new stream: for an attempt that failed before it produced anything. A key mapped
    /// to another stream, or no key at all, is left as it is.
    ///
    /// # Errors
    /// Storage errors.
    fn release_idempotency_key(
        &self,
        principal: String,
        key: String,
        stream: StreamId,
    ) -> LogFuture<'_, ()>;

    /// Delete every stream that ended at least `stream_ttl` ago, its records and its
    /// idempotency keys (and keys whose stream was never created, `stream_ttl` after
    /// they were inserted). Returns the number of streams deleted.
    ///
    /// # Errors
    /// Storage errors.
    fn purge_expired(&self) -> LogFuture<'_, usize>;

    /// Ask the writer of open stream `id`, wherever it runs, to cancel it: its next append
    /// or lease renewal fails once with [`LogError::CancelRequested`]. Only a log that
    /// several nodes share needs it (on one node the writer is cancelled in-process); the
    /// others refuse with [`LogError::InvalidArgument`].
    ///
    /// # Errors
    /// [`LogError::NotFound`], [`LogError::AlreadyFinished`], storage errors.
    fn request_cancel(&self, id: StreamId) -> LogFuture<'_, ()> {
        let _ = id;
        Box::pin(std::future::ready(Err(LogError::InvalidArgument(
            "cancelling another node's writer needs a log the nodes share",
        ))))
    }

    /// Whether [`StreamLog::append`] completes when first polled (nothing to wait for:
    /// the memory backend), so a writer may as well await it; otherwise (sqlite: another
    /// thread commits it) a writer may send an append and look at its acknowledgement
    /// later. False unless a backend says so.
    fn appends_at_once(&self) -> bool {
        false
    }

    /// The Redis log behind this one, when it is one: its counters
    /// ([`RedisLog::bucket`], [`RedisLog::hold`]) let the nodes that share it count
    /// limits together. `None` for logs of one process.
    fn as_redis(&self) -> Option<&RedisLog> {
        None
    }
}

/// The retention period when none is configured: a stream is kept 24 hours after it ends.
pub const DEFAULT_STREAM_TTL: Duration = Duration::from_secs(24 * 60 * 60);
