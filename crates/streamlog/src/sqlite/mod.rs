//! The sqlite backend: durable on one node, the default. The database runs in WAL mode
//! with ONE writer thread doing group commit (`writer`): appends from any number of
//! streams are batched into one transaction, and each caller's future resolves only
//! after the transaction holding its batch committed. The last records of every open
//! stream stay in memory (the hot tail, `reader`), so live readers never wait on disk;
//! a stream's tail is dropped when it ends, and capped while it runs at `tail_capacity`
//! records and `tail_bytes` bytes (always keeping the newest record), so a stream of
//! large records pins no more than that. Older records are read from the database on a
//! small pool of read-only connections, in chunks bounded in records and bytes.
//!
//! [`StreamLog::open_streams`] and [`StreamLog::count_open`] read the `streams` table
//! on that pool, through a partial index of open streams by kind and owner, so counting
//! one owner's open streams costs a few index pages, not a scan.
//!
//! [`StreamLog::trim`] is one more writer command: its `DELETE` runs in the same
//! transactions as appends, in order with them, and after the commit the writer drops
//! the trimmed records from the hot tail. Database readers read `first_seq` in the same
//! statement (so the same snapshot) as the records, so a reader overtaken by a trim
//! skips to the first kept record instead of mistaking the gap for lost data.
//!
//! # What an acknowledged append guarantees
//!
//! When `append` returns `Ok(seq)`, the transaction holding the records up to `seq` has
//! committed: it is in the WAL file, and every later reader (in this process or after a
//! restart) sees it. What survives depends on [`Synchronous`]:
//!
//! - [`Synchronous::Normal`] (default, `PRAGMA synchronous=NORMAL`): the commit has been
//!   written to the WAL file but not fsync'd. It survives the process crashing or being
//!   killed (`kill -9`, OOM killer, panic): the data is in the OS page cache and the next
//!   open recovers it from the WAL. It may be lost if the *machine* loses power or the
//!   kernel crashes before the OS flushes (the database itself stays consistent: the
//!   log then ends at an earlier, fully committed batch).
//! - [`Synchronous::Full`] (`PRAGMA synchronous=FULL`): the WAL is fsync'd before the
//!   commit returns, so an acknowledged append also survives power loss. Each batch
//!   pays one fsync; group commit amortises it over every append in the batch.
//!
//! # Checkpoints
//!
//! Copying the WAL back into the database file (a checkpoint) runs on a thread of its
//! own connection, every [`CHECKPOINT_INTERVAL`], in sqlite's `PASSIVE` mode, which
//! never blocks the writer. The writer's own automatic checkpoint (after
//! `WAL_CHECKPOINT_PAGES`) remains as a backstop; it finds the frames already copied,
//! so it is short, and lets sqlite restart the WAL from its beginning. Without the
//! checkpointer, that automatic checkpoint copied up to 40 MB inside a commit and
//! stalled every append (and so every token) behind it for tens of milliseconds.
//!
//! Readers only ever see committed records: the tail is filled after the commit, and
//! the database readers see committed transactions only. So no reader can be shown a
//! seq that a crash would erase and a later writer rewrite differently.

mod reader;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Semaphore, oneshot};

use crate::clock::{Clock, millis};
use crate::cursor::{Head, HeadSource, follow};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamKind,
    StreamMeta, StreamState, Trim,
};
use crate::{DEFAULT_STREAM_TTL, LogFuture, RecordStream, StreamLog};

use reader::{HotMap, ReadPool, SqliteFetch, Subscription};
use writer::{Command, Op, Writer, WriterSettings};

/// WAL pages after which a commit also checkpoints (≈40 MB). A checkpoint syncs the
/// database file, so checkpointing less often than sqlite's default (1000 pages) keeps
/// that cost off most commits.
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// How often the checkpointer thread copies committed WAL frames into the database.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// How hard a commit is pushed to disk; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `synchronous=NORMAL`: acknowledged appends survive a process crash.
    #[default]
    Normal,
    /// `synchronous=FULL`: acknowledged appends also survive power loss.
    Full,
}

/// Settings of a [`SqliteLog`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file (created if missing; `-wal` and `-shm` files live beside it).
    pub path: PathBuf,
    /// Durability of an acknowledged append.
    pub synchronous: Synchronous,
    /// A batch is committed once it holds this many records (default 4096).
    pub max_batch_records: usize,
    /// How long the writer keeps gathering a batch once it has started, when the queue
    /// runs empty, at most (default 500 µs): it waits no longer than its last `COMMIT`
    /// took, since a longer wait costs the batch more than the commit it saves. Applied
    /// only when the previous batch held more than one command, and only while commands
    /// keep arriving (a fifth of it without one ends the wait): with many concurrent
    /// writers it turns many small commits into one large one; a lone sequential writer
    /// never waits (its next append cannot arrive before its current one is
    /// acknowledged), and appends that trickle in (tokens of independent streams) wait at
    /// most a commit's time. Zero commits as soon as the queue is empty.
    pub max_batch_delay: Duration,
    /// Commands queued for the writer at most; callers wait beyond (default 65,536).
    pub max_pending: usize,
    /// Records of each open stream kept in memory for live readers (default 4096).
    pub tail_capacity: usize,
    /// Bytes (stored JSON) of each open stream kept in memory for live readers, at most
    /// (default 256 KiB); the newest record is always kept, however large. Readers
    /// further behind read from the database.
    pub tail_bytes: usize,
    /// Read-only connections for replay and status (default 4).
    pub reader_connections: usize,
    /// How long a stream is kept after it ends (default 24 h).
    pub stream_ttl: Duration,
}

impl SqliteConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Normal,
            max_batch_records: 4096,
            max_batch_delay: Duration::from_micros(500),
            max_pending: 65_536,
            tail_capacity: 4096,
            tail_bytes: 256 * 1024,
            reader_connections: 4,
            stream_ttl: DEFAULT_STREAM_TTL,
        }
    }
}

/// The durable [`StreamLog`] on sqlite. Dropping it drains the writer's queue, stops the
/// writer thread (waiting for it) and ends live readers with [`LogError::Closed`].
pub struct SqliteLog {
    tx: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    hot: Arc<HotMap>,
    pool: Arc<ReadPool>,
    // Declared after `tx`: dropped after it, so the writer sees the channel close first.
    _writer: Joined,
    // Dropping the sender stops the checkpointer, then its thread is joined.
    _checkpointer: (mpsc::Sender<()>, Joined),
}

/// A thread joined when dropped.
struct Joined(Option<std::thread::JoinHandle<()>>, &'static str);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take()
            && handle.join().is_err()
        {
            tracing::error!(thread = self.1, "stream log thread panicked");
        }
    }
}

/// Start the checkpointer thread on its own connection to `path`; it stops when the
/// returned sender is dropped.
fn checkpointer(path: &std::path::Path) -> Result<(mpsc::Sender<()>, Joined), LogError> {
    let conn = Connection::open(path)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("streamlog-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match done {
                    Ok((frames, copied)) => tracing::trace!(frames, copied, "checkpoint"),
                    Err(error) => tracing::warn!(%error, "checkpoint failed"),
                }
            }
        })
        .map_err(LogError::storage)?;
    Ok((stop, Joined(Some(handle), "checkpoint")))
}

impl SqliteLog {
    /// Open (or create) the database and start the writer thread.
    ///
    /// # Errors
    /// Storage errors opening the file or creating the schema.
    pub fn open(config: SqliteConfig, clock: Arc<dyn Clock>) -> Result<Self, LogError> {
        let conn = Connection::open(&config.path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LogError::Storage(
                format!("could not enable WAL (journal_mode={mode})").into(),
            ));
        }
        let sync = match config.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}; {}",
            schema::SCHEMA
        ))?;
        schema::migrate(&conn, clock.now_ms())?;
        conn.set_prepared_statement_cache_capacity(64);

        let hot: Arc<HotMap> = Arc::default();
        let settings = WriterSettings {
            max_batch_records: config.max_batch_records.max(1),
            max_batch_delay: config.max_batch_delay,
            tail_capacity: config.tail_capacity,
            tail_bytes: config.tail_bytes,
            stream_ttl_ms: millis(config.stream_ttl),
        };
        let writer = Writer::new(conn, clock, Arc::clone(&hot), settings);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("streamlog-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(LogError::storage)?;
        let checkpoints = checkpointer(&config.path)?;
        Ok(Self {
            tx,
            permits: Arc::new(Semaphore::new(config.max_pending.max(1))),
            hot,
            pool: Arc::new(ReadPool::new(config.path, config.reader_connections)),
            _writer: Joined(Some(handle), "writer"),
            _checkpointer: checkpoints,
        })
    }

    /// Send an operation to the writer and wait for its answer.
    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Op,
    ) -> Result<T, LogError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| LogError::Closed)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                op: op(reply),
                _permit: permit,
            })
            .map_err(|_| LogError::Closed)?;
        // A dropped reply means the batch was aborted by a storage failure before this
        // command got its own answer.
        rx.await
            .map_err(|_| LogError::Storage("write batch aborted".into()))?
    }

    fn reader(&self, sub: Subscription, after: Seq) -> RecordStream {
        match sub {
            Subscription::Live { rid, head, tail } => follow(
                Arc::new(SqliteFetch {
                    rid,
                    tail: Some(tail),
                    pool: Arc::clone(&self.pool),
                }),
                HeadSource::Live(head),
                after,
            ),
            Subscription::Ended { rid, last } => follow(
                Arc::new(SqliteFetch {
                    rid,
                    tail: None,
                    pool: Arc::clone(&self.pool),
                }),
                HeadSource::Fixed(Head {
                    last,
                    terminal: true,
                }),
                after,
            ),
        }
    }

    async fn read_impl(&self, id: StreamId, after: Seq) -> Result<RecordStream, LogError> {
        let hot = self
            .hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .map(writer::live);
        if let Some(sub) = hot {
            return Ok(self.reader(sub, after));
        }
        let found = self
            .pool
            .run(move |conn| schema::load_control(conn, id))
            .await?;
        let Some((rid, control)) = found else {
            return Err(LogError::NotFound(id));
        };
        let sub = if control.state.is_terminal() {
            Subscription::Ended {
                rid,
                last: control.last_seq,
            }
        } else {
            // An open stream nobody wrote or read since the log opened: the writer makes
            // it hot, in order with its commits.
            self.call(|reply| Op::Subscribe(id, reply)).await?
        };
        Ok(self.reader(sub, after))
    }
}

impl StreamLog for SqliteLog {
    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta> {
        Box::pin(self.call(|reply| Op::Create(new, reply)))
    }

    fn create_leased(
        &self,
        new: NewStream,
        holder: String,
        ttl: Duration,
    ) -> LogFuture<'_, (StreamMeta, Lease)> {
        Box::pin(self.call(move |reply| Op::CreateLeased {
            new,
            holder,
            ttl_ms: millis(ttl),
            reply,
        }))
    }

    fn append(
        &self,
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
    ) -> LogFuture<'_, Seq> {
        Box::pin(async move {
            // Serialised once, here, on the caller's task rather than the writer thread.
            let bodies = records
                .iter()
                .map(Record::to_json)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LogError::Corrupt(e.to_string()))?;
            self.call(|reply| Op::Append {
                id,
                token,
                records,
                bodies,
                reply,
            })
            .await
        })
    }

    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()> {
        Box::pin(self.call(move |reply| Op::Finish {
            id,
            token,
            state,
            reply,
        }))
    }

    fn read(&self, id: StreamId, after: Seq) -> LogFuture<'_, RecordStream> {
        Box::pin(self.read_impl(id, after))
    }

    fn status(&self, id: StreamId) -> LogFuture<'_, StreamMeta> {
        Box::pin(self.pool.run(move |conn| schema::load_meta(conn, id)))
    }

    fn acquire_lease(&self, id: StreamId, holder: String, ttl: Duration) -> LogFuture<'_, Lease> {
        Box::pin(self.call(move |reply| Op::Acquire {
            id,
            holder,
            ttl_ms: millis(ttl),
            replaces: None,
            reply,
        }))
    }

    fn take_over_lease(
        &self,
        id: StreamId,
        holder: String,
        ttl: Duration,
        dead: String,
    ) -> LogFuture<'_, Lease> {
        Box::pin(self.call(move |reply| Op::Acquire {
            id,
            holder,
            ttl_ms: millis(ttl),
            replaces: Some(dead),
            reply,
        }))
    }

    fn leased_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<(StreamId, Lease)>> {
        Box::pin(
            self.pool
                .run(move |conn| schema::leased_streams(conn, kind)),
        )
    }

    fn open_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<StreamMeta>> {
        Box::pin(self.pool.run(move |conn| schema::open_streams(conn, kind)))
    }

    fn count_open(&self, owner: String, kind: StreamKind) -> LogFuture<'_, u64> {
        Box::pin(
            self.pool
                .run(move |conn| schema::count_open(conn, &owner, kind)),
        )
    }

    fn renew_lease(
        &self,
        id: StreamId,
        token: FencingToken,
        ttl: Duration,
    ) -> LogFuture<'_, Lease> {
        Box::pin(self.call(move |reply| Op::Renew {
            id,
            token,
            ttl_ms: millis(ttl),
            reply,
        }))
    }

    fn release_lease(&self, id: StreamId, token: FencingToken) -> LogFuture<'_, ()> {
        Box::pin(self.call(move |reply| Op::Release { id, token, reply }))
    }

    fn trim(&self, id: StreamId, trim: Trim) -> LogFuture<'_, Seq> {
        Box::pin(self.call(move |reply| Op::Trim { id, trim, reply }))
    }

    fn insert_idempotency_key(
        &self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
    ) -> LogFuture<'_, IdempotencyOutcome> {
        Box::pin(self.call(move |reply| Op::InsertKey {
            principal,
            key,
            entry,
            reply,
        }))
    }

    fn find_idempotency_key(
        &self,
        principal: String,
        key: String,
    ) -> LogFuture<'_, Option<IdempotencyEntry>> {
        Box::pin(self.pool.run(move |conn| {
            use rusqlite::OptionalExtension;
            let found: Option<(String, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT stream, request_hash FROM idempotency WHERE principal = ?1 AND key = ?2",
                )?
                .query_row(rusqlite::params![principal, key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((stream, request_hash)) = found else {
                return Ok(None);
            };
            let stream = stream
                .parse()
                .map_err(|e: crate::ParseStreamIdError| LogError::Corrupt(e.to_string()))?;
            Ok(Some(IdempotencyEntry {
                stream,
                request_hash,
            }))
        }))
    }

    fn release_idempotency_key(
        &self,
        principal: String,
        key: String,
        stream: StreamId,
    ) -> LogFuture<'_, ()> {
        Box::pin(self.call(move |reply| Op::ReleaseKey {
            principal,
            key,
            stream,
            reply,
        }))
    }

    fn purge_expired(&self) -> LogFuture<'_, usize> {
        Box::pin(self.call(Op::Purge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::cursor::{FETCH_BYTES, FETCH_CHUNK};
    use futures_util::StreamExt;

    const MIB: usize = 1 << 20;

    fn large(size: usize) -> Record {
        Record::Text {
            text: "x".repeat(size),
        }
    }

    fn tail_bytes(log: &SqliteLog, id: StreamId) -> usize {
        let hot = log.hot.lock().unwrap_or_else(PoisonError::into_inner);
        let tail = hot[&id].tail.read().unwrap_or_else(PoisonError::into_inner);
        tail.bytes()
    }

    /// The hot tail of a stream of 1 MiB records holds only the newest (the byte bound
    /// is below one record), small records fill it up to the bound, and a reader of the
    /// whole stream still gets every record, from the database, in chunks within the
    /// byte bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tail_and_chunks_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SqliteConfig::new(dir.path().join("log.db"));
        config.tail_bytes = 64 * 1024;
        let log = SqliteLog::open(config, Arc::new(SystemClock)).unwrap();
        let new = NewStream {
            id: StreamId::new(),
            owner: "p".into(),
            kind: StreamKind::Topic,
            request: bytes::Bytes::new(),
        };
        let (meta, lease) = log
            .create_leased(new, "w".into(), Duration::from_secs(60))
            .await
            .unwrap();
        let id = meta.id;
        let reader = log.read(id, 0).await.unwrap();
        for _ in 0..3 {
            log.append(id, lease.token, vec![large(MIB)]).await.unwrap();
            let newest = large(MIB).json_len();
            assert_eq!(tail_bytes(&log, id), newest);
        }
        let small = large(1000);
        for _ in 0..400 {
            log.append(id, lease.token, vec![small.clone()])
                .await
                .unwrap();
            assert!(tail_bytes(&log, id) <= 64 * 1024);
        }
        assert!(tail_bytes(&log, id) > 60 * 1024);
        log.finish(id, lease.token, StreamState::Finished)
            .await
            .unwrap();
        let got: Vec<_> = reader.map(Result::unwrap).collect().await;
        assert_eq!(got.len(), 403);
        assert!(got.iter().map(|(seq, _)| *seq).eq(1..=403));

        // The database's chunks: one large record alone, small ones up to the bound.
        let (rid, _) = log
            .pool
            .run(move |conn| schema::load_control(conn, id))
            .await
            .unwrap()
            .unwrap();
        let chunks = log
            .pool
            .run(move |conn| {
                let one = reader::read_range(conn, rid, 0, 3)?;
                let rest = reader::read_range(conn, rid, 3, 3 + FETCH_CHUNK)?;
                Ok((one, rest))
            })
            .await
            .unwrap();
        assert_eq!(chunks.0.records.len(), 1);
        let per_chunk = FETCH_BYTES / small.json_len();
        assert_eq!(chunks.1.records.len(), per_chunk);
        assert_eq!(chunks.1.records[0].0, 4);
    }
}
