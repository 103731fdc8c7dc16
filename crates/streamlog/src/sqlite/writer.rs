//! The single writer thread of the sqlite backend, doing group commit. Every mutation
//! (create, append, finish, leases, idempotency keys, trim, purge) is a [`Command`] sent
//! over a channel; the thread takes the first command and gathers every command already
//! queued, up to `max_batch_records` records. If the previous batch held more than one
//! command it also waits for more — concurrent writers whose appends were just
//! acknowledged are about to send their next ones — but no longer than the last
//! `COMMIT` took (the cost the wait can save; at most `max_batch_delay`), and only while
//! they keep coming: a gap of a fifth of `max_batch_delay` with none ends the wait, so
//! appends that arrive on their own, like tokens, are not held back. A batch holding a
//! command that starts a stream (its creation or its first records) does not linger,
//! and those commands commit first, in a transaction of their own: a new stream's first
//! token then waits behind no other stream's tokens (no stream's commands are reordered;
//! see `Writer::take_starts`). It applies a batch in
//! one transaction and commits. Only then does it push appended records into the
//! hot tails, publish the new heads to readers, and answer the callers — so an
//! acknowledged append, and anything a reader sees, is committed. The thread keeps the
//! control state (seq, lease, fence) of the streams it touched in memory, so an append
//! costs only its `INSERT`s: a stream's row is rewritten (once per batch) when its lease,
//! state or first seq changes, and an open stream's `last_seq` is read back from its
//! records when loaded (`schema::catch_up`). A trim is a
//! range `DELETE` in the same transaction, so it orders with the appends around it; the
//! hot tail drops the trimmed records after the commit.

use std::collections::{HashMap, hash_map};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::clock::Clock;
use crate::control::Control;
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamMeta,
    StreamState, Trim,
};
use crate::sqlite::reader::{HotMap, Subscription};
use crate::sqlite::schema::{load_control, store_control, to_i64, to_u64};

mod publish;
mod starts;

use publish::fail;
pub(crate) use publish::live;

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// One request to the writer, holding a permit of the pending-commands semaphore.
pub(crate) struct Command {
    pub op: Op,
    pub _permit: OwnedSemaphorePermit,
}

/// The operations the writer performs.
pub(crate) enum Op {
    Create(NewStream, Reply<StreamMeta>),
    CreateLeased {
        new: NewStream,
        holder: String,
        ttl_ms: u64,
        reply: Reply<(StreamMeta, Lease)>,
    },
    Append {
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
        bodies: Vec<Vec<u8>>,
        reply: Reply<Seq>,
    },
    Finish {
        id: StreamId,
        token: FencingToken,
        state: StreamState,
        reply: Reply<()>,
    },
    Acquire {
        id: StreamId,
        holder: String,
        ttl_ms: u64,
        /// A dead holder whose unexpired lease may be taken.
        replaces: Option<String>,
        reply: Reply<Lease>,
    },
    Renew {
        id: StreamId,
        token: FencingToken,
        ttl_ms: u64,
        reply: Reply<Lease>,
    },
    Release {
        id: StreamId,
        token: FencingToken,
        reply: Reply<()>,
    },
    InsertKey {
        principal: String,
        key: String,
        entry: IdempotencyEntry,
        reply: Reply<IdempotencyOutcome>,
    },
    ReleaseKey {
        principal: String,
        key: String,
        stream: StreamId,
        reply: Reply<()>,
    },
    Trim {
        id: StreamId,
        trim: Trim,
        reply: Reply<Seq>,
    },
    Purge(Reply<usize>),
    Subscribe(StreamId, Reply<Subscription>),
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::Append { records, .. } => records.len(),
            _ => 1,
        }
    }
}

/// While gathering a batch, the writer stops waiting once no command came for
/// `max_batch_delay / LINGER_GAP_DIVISOR`: writers answering an acknowledgement send
/// within microseconds of each other, independent ones (a stream's next token) do not.
const LINGER_GAP_DIVISOR: u32 = 5;

/// The settings the writer needs.
pub(crate) struct WriterSettings {
    pub max_batch_records: usize,
    pub max_batch_delay: Duration,
    pub tail_capacity: usize,
    pub tail_bytes: usize,
    pub stream_ttl_ms: u64,
}

/// Records with their stored (JSON) sizes, for the hot tail's byte bound.
type SizedRecords = Vec<(Record, usize)>;

/// The outcome of one command, waiting for the commit.
enum Done {
    Create(Reply<StreamMeta>, Result<(i64, StreamMeta), LogError>),
    CreateLeased(
        Reply<(StreamMeta, Lease)>,
        Result<(i64, StreamMeta, Lease), LogError>,
    ),
    /// The stream, its first new seq, and the records with their stored sizes.
    Append(Reply<Seq>, Result<(StreamId, Seq, SizedRecords), LogError>),
    Finish(Reply<()>, Result<(StreamId, Seq), LogError>),
    Lease(Reply<Lease>, Result<Lease, LogError>),
    Unit(Reply<()>, Result<(), LogError>),
    Key(
        Reply<IdempotencyOutcome>,
        Result<IdempotencyOutcome, LogError>,
    ),
    /// The stream and its new first kept seq.
    Trim(Reply<Seq>, Result<(StreamId, Seq), LogError>),
    Purge(Reply<usize>, Result<Vec<StreamId>, LogError>),
    Subscribe(StreamId, Reply<Subscription>),
}

struct Cached {
    rid: i64,
    control: Control,
    /// Changed in this batch and not yet written back.
    dirty: bool,
}

/// The cached control state of a stream, loading it on a miss.
fn cached<'a>(
    cache: &'a mut HashMap<StreamId, Cached>,
    conn: &Connection,
    id: StreamId,
) -> Result<&'a mut Cached, LogError> {
    match cache.entry(id) {
        hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
        hash_map::Entry::Vacant(v) => {
            let (rid, control) = load_control(conn, id)?.ok_or(LogError::NotFound(id))?;
            Ok(v.insert(Cached {
                rid,
                control,
                dirty: false,
            }))
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    hot: Arc<HotMap>,
    settings: WriterSettings,
    cache: HashMap<StreamId, Cached>,
    dirty: Vec<StreamId>,
}

/// A storage failure is reported to every caller of the failed batch; the error type is
/// not `Clone`, so each gets its own copy of the message.
fn batch_failed(e: &LogError) -> LogError {
    LogError::Storage(e.to_string().into())
}

impl Writer {
    pub fn new(
        conn: Connection,
        clock: Arc<dyn Clock>,
        hot: Arc<HotMap>,
        settings: WriterSettings,
    ) -> Self {
        Self {
            conn,
            clock,
            hot,
            settings,
            cache: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// Serve commands until every sender is gone, then end every live reader.
    pub fn run(mut self, rx: Receiver<Command>) {
        let span = tracing::info_span!("streamlog.sqlite.writer");
        let _enter = span.enter();
        let mut batch = Vec::new();
        let mut previous = 0usize;
        // What the last commit itself took: the cost a linger can save.
        let mut commit_cost = Duration::ZERO;
        while let Ok(first) = rx.recv() {
            let started = Instant::now();
            // Linger for more commands only when the last batch showed concurrent
            // writers (a lone sequential writer would just pay the delay on every
            // append), and no longer than a commit takes: waiting longer to save one
            // commit costs every command of the batch more than the commit would.
            let linger = if previous > 1 {
                self.settings.max_batch_delay.min(commit_cost)
            } else {
                Duration::ZERO
            };
            let gap = self.settings.max_batch_delay / LINGER_GAP_DIVISOR;
            let mut weight = first.op.weight();
            // A new stream's first token waits for this batch: it is not held back for
            // company.
            let mut starting = self.starts_stream(&first.op);
            batch.push(first);
            while weight < self.settings.max_batch_records {
                let next = match rx.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) if linger.is_zero() || starting => None,
                    Err(_) => rx
                        .recv_timeout(linger.saturating_sub(started.elapsed()).min(gap))
                        .ok(),
                };
                let Some(cmd) = next else { break };
                weight += cmd.op.weight();
                starting |= self.starts_stream(&cmd.op);
                batch.push(cmd);
            }
            let commands = batch.len();
            previous = commands;
            let mut first = if starting {
                self.take_starts(&mut batch)
            } else {
                Vec::new()
            };
            let starts = first.len();
            for part in [&mut first, &mut batch] {
                if !part.is_empty()
                    && let Some(cost) = self.process(part)
                {
                    commit_cost = cost;
                }
            }
            tracing::trace!(commands, starts, records = weight, elapsed = ?started.elapsed(), ?commit_cost, "batch committed");
        }
        // Dropping the heads ends every live reader with `LogError::Closed`.
        self.hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Apply and commit a batch, then publish it; how long its `COMMIT` took.
    fn process(&mut self, batch: &mut Vec<Command>) -> Option<Duration> {
        let now = self.clock.now_ms();
        let mut done = Vec::with_capacity(batch.len());
        let outcome = self.apply_all(batch.drain(..), now, &mut done);
        match outcome {
            Ok(commit) => {
                for d in done {
                    self.publish(d);
                }
                Some(commit)
            }
            Err(e) => {
                tracing::error!(error = %e, "stream log batch failed; rolled back");
                // The cached control state may reflect the rolled-back batch.
                self.cache.clear();
                self.dirty.clear();
                for d in done {
                    fail(d, &e);
                }
                None
            }
        }
    }

    /// Apply `commands` in one transaction; how long its `COMMIT` took.
    fn apply_all(
        &mut self,
        commands: impl Iterator<Item = Command>,
        now: u64,
        done: &mut Vec<Done>,
    ) -> Result<Duration, LogError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            for cmd in commands {
                let d = self.apply(cmd.op, now)?;
                done.push(d);
            }
            self.flush_dirty()?;
            let commit = Instant::now();
            self.conn.execute_batch("COMMIT")?;
            Ok(commit.elapsed())
        })();
        if result.is_err() {
            // Best effort: the transaction may already be gone.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn flush_dirty(&mut self) -> Result<(), LogError> {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.cache.get_mut(&id) {
                c.dirty = false;
                store_control(&self.conn, c.rid, &c.control)?;
            }
        }
        Ok(())
    }

    /// Apply a control change to a cached stream. `Err` of the outer result aborts the
    /// batch (storage failure); `Err` inside only rejects this command.
    fn change<T>(
        &mut self,
        id: StreamId,
        f: impl FnOnce(&mut Control) -> Result<T, LogError>,
    ) -> Result<Result<T, LogError>, LogError> {
        self.change_row(id, true, f)
    }

    /// As [`Writer::change`]; `store` says whether the stream's row must be rewritten
    /// (an append's does not: see `schema::catch_up`).
    fn change_row<T>(
        &mut self,
        id: StreamId,
        store: bool,
        f: impl FnOnce(&mut Control) -> Result<T, LogError>,
    ) -> Result<Result<T, LogError>, LogError> {
        let c = match cached(&mut self.cache, &self.conn, id) {
            Ok(c) => c,
            Err(e @ LogError::NotFound(_)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let out = f(&mut c.control);
        if store && out.is_ok() && !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
        Ok(out)
    }

    fn apply(&mut self, op: Op, now: u64) -> Result<Done, LogError> {
        Ok(match op {
            Op::Create(new, reply) => {
                let r = self.create(new, now)?;
                Done::Create(reply, r)
            }
            Op::CreateLeased {
                new,
                holder,
                ttl_ms,
                reply,
            } => {
                let r = match self.create(new, now)? {
                    Ok((rid, mut meta)) => self
                        .change(meta.id, |c| c.acquire(meta.id, holder, ttl_ms, now, None))?
                        .map(|lease| {
                            meta.fence = lease.token;
                            meta.updated_ms = now;
                            meta.lease = Some(lease.clone());
                            (rid, meta, lease)
                        }),
                    Err(e) => Err(e),
                };
                Done::CreateLeased(reply, r)
            }
            Op::Append {
                id,
                token,
                records,
                bodies,
                reply,
            } => {
                let r = self.change_row(id, false, |c| c.append(id, token, records.len(), now))?;
                let r = match r {
                    Ok(first) => {
                        let rid = cached(&mut self.cache, &self.conn, id)?.rid;
                        let mut stmt = self.conn.prepare_cached(
                            "INSERT INTO records (rid, seq, body, appended_ms)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?;
                        for (i, body) in bodies.iter().enumerate() {
                            stmt.execute(rusqlite::params![
                                rid,
                                to_i64(first + i as u64),
                                body,
                                to_i64(now)
                            ])?;
                        }
                        let sized = records
                            .into_iter()
                            .zip(bodies.iter().map(Vec::len))
                            .collect();
                        Ok((id, first, sized))
                    }
                    Err(e) => Err(e),
                };
                Done::Append(reply, r)
            }
            Op::Finish {
                id,
                token,
                state,
                reply,
            } => {
                let r = self.change(id, |c| {
                    c.finish(id, token, state, now)?;
                    Ok((id, c.last_seq))
                })?;
                Done::Finish(reply, r)
            }
            Op::Acquire {
                id,
                holder,
                ttl_ms,
                replaces,
                reply,
            } => Done::Lease(
                reply,
                self.change(id, |c| {
                    c.acquire(id, holder, ttl_ms, now, replaces.as_deref())
                })?,
            ),
            Op::Renew {
                id,
                token,
                ttl_ms,
                reply,
            } => Done::Lease(reply, self.change(id, |c| c.renew(id, token, ttl_ms, now))?),
            Op::Release { id, token, reply } => {
                Done::Unit(reply, self.change(id, |c| c.release(id, token, now))?)
            }
            Op::InsertKey {
                principal,
                key,
                entry,
                reply,
            } => Done::Key(reply, Ok(self.insert_key(principal, key, entry, now)?)),
            Op::ReleaseKey {
                principal,
                key,
                stream,
                reply,
            } => {
                self.release_key(&principal, &key, stream)?;
                Done::Unit(reply, Ok(()))
            }
            Op::Trim { id, trim, reply } => Done::Trim(reply, self.trim(id, &trim, now)?),
            Op::Purge(reply) => Done::Purge(reply, Ok(self.purge(now)?)),
            Op::Subscribe(id, reply) => Done::Subscribe(id, reply),
        })
    }

    fn create(
        &mut self,
        new: NewStream,
        now: u64,
    ) -> Result<Result<(i64, StreamMeta), LogError>, LogError> {
        let control = Control::new(now);
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO streams (id, owner, kind, request, state, created_ms, updated_ms,
             last_seq, fence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, 0)
             ON CONFLICT (id) DO NOTHING",
            )?
            .execute(rusqlite::params![
                new.id.to_string(),
                new.owner,
                new.kind.to_i64(),
                new.request.as_ref(),
                control.state.to_i64(),
                to_i64(now),
            ])?;
        if changed == 0 {
            return Ok(Err(LogError::AlreadyExists(new.id)));
        }
        let rid = self.conn.last_insert_rowid();
        let meta = StreamMeta {
            id: new.id,
            owner: new.owner,
            kind: new.kind,
            request: new.request,
            state: control.state,
            created_ms: now,
            updated_ms: now,
            last_seq: 0,
            first_seq: control.first_seq,
            lease: None,
            fence: 0,
        };
        self.cache.insert(
            new.id,
            Cached {
                rid,
                control,
                dirty: false,
            },
        );
        Ok(Ok((rid, meta)))
    }

    fn insert_key(
        &mut self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
        now: u64,
    ) -> Result<IdempotencyOutcome, LogError> {
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO idempotency (principal, key, stream, request_hash, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (principal, key) DO NOTHING",
            )?
            .execute(rusqlite::params![
                principal,
                key,
                entry.stream.to_string(),
                entry.request_hash,
                to_i64(now)
            ])?;
        if changed == 1 {
            return Ok(IdempotencyOutcome::Inserted);
        }
        let (stream, request_hash): (String, Vec<u8>) = self
            .conn
            .prepare_cached(
                "SELECT stream, request_hash FROM idempotency WHERE principal = ?1 AND key = ?2",
            )?
            .query_row(rusqlite::params![principal, key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let stream = stream
            .parse()
            .map_err(|e: crate::ParseStreamIdError| LogError::Corrupt(e.to_string()))?;
        Ok(IdempotencyOutcome::Existing(IdempotencyEntry {
            stream,
            request_hash,
        }))
    }

    /// Remove `(principal, key)` if it still maps to `stream`.
    fn release_key(
        &mut self,
        principal: &str,
        key: &str,
        stream: StreamId,
    ) -> Result<(), LogError> {
        self.conn
            .prepare_cached(
                "DELETE FROM idempotency WHERE principal = ?1 AND key = ?2 AND stream = ?3",
            )?
            .execute(rusqlite::params![principal, key, stream.to_string()])?;
        Ok(())
    }

    /// Delete the records `trim` matches; the outer `Err` aborts the batch.
    fn trim(
        &mut self,
        id: StreamId,
        trim: &Trim,
        now: u64,
    ) -> Result<Result<(StreamId, Seq), LogError>, LogError> {
        let c = match cached(&mut self.cache, &self.conn, id) {
            Ok(c) => c,
            Err(e @ LogError::NotFound(_)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let (rid, first, last) = (c.rid, c.control.first_seq, c.control.last_seq);
        let mut keep_after = c.control.trim_target(trim);
        if let Some(cutoff) = Control::age_cutoff(trim, now)
            && keep_after < last
        {
            // The first record young enough to keep: a scan in seq order of the old
            // prefix (about to be deleted anyway), so it costs what the trim deletes.
            let young: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM records WHERE rid = ?1 AND seq >= ?2 AND appended_ms >= ?3
                     ORDER BY seq LIMIT 1",
                )?
                .query_row(rusqlite::params![rid, to_i64(first), to_i64(cutoff)], |r| {
                    r.get(0)
                })
                .optional()?;
            let by_age = young.map_or(last, |seq| to_u64(seq).saturating_sub(1));
            keep_after = keep_after.max(by_age);
        }
        let c = cached(&mut self.cache, &self.conn, id)?;
        let new_first = c.control.trim(keep_after);
        if new_first > first {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
            self.conn
                .prepare_cached("DELETE FROM records WHERE rid = ?1 AND seq >= ?2 AND seq < ?3")?
                .execute(rusqlite::params![rid, to_i64(first), to_i64(new_first)])?;
        }
        Ok(Ok((id, new_first)))
    }

    fn purge(&mut self, now: u64) -> Result<Vec<StreamId>, LogError> {
        // Control changes earlier in this batch must be visible to the query.
        self.flush_dirty()?;
        let cutoff = to_i64(now.saturating_sub(self.settings.stream_ttl_ms));
        let expired: Vec<(i64, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT rid, id FROM streams WHERE state != 0 AND updated_ms <= ?1",
            )?;
            let rows = stmt.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut purged = Vec::with_capacity(expired.len());
        for (rid, id) in expired {
            self.conn
                .prepare_cached("DELETE FROM records WHERE rid = ?1")?
                .execute([rid])?;
            self.conn
                .prepare_cached("DELETE FROM idempotency WHERE stream = ?1")?
                .execute([&id])?;
            self.conn
                .prepare_cached("DELETE FROM streams WHERE rid = ?1")?
                .execute([rid])?;
            if let Ok(id) = id.parse::<StreamId>() {
                self.cache.remove(&id);
                purged.push(id);
            }
        }
        self.conn
            .prepare_cached(
                "DELETE FROM idempotency WHERE created_ms <= ?1
                 AND NOT EXISTS (SELECT 1 FROM streams WHERE streams.id = idempotency.stream)",
            )?
            .execute([cutoff])?;
        Ok(purged)
    }
}
