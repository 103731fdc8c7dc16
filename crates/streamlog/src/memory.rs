//! The in-memory backend, for tests and ephemeral deployments. Each stream is an entry
//! holding its metadata and records behind one mutex plus a `watch` of its head; an
//! append is "durable" the moment it is in the vector, so readers see it at once. Lost on
//! restart. It applies the same `control` rules as the durable backends.
//!
//! A stream keeps its records `first_seq ..= last_seq` in a `VecDeque`, each with its
//! append time (for [`StreamLog::trim`] by age) and size: the record with seq `s` is at
//! index `s - first_seq`, and a trim pops from the front under the same lock as appends
//! and fetches.
//!
//! # The byte budget
//!
//! The log counts the bytes it holds ([`MemoryLog::bytes`]): per record its stored JSON
//! length plus [`RECORD_OVERHEAD`]; per stream [`STREAM_OVERHEAD`] plus its owner and
//! request; per idempotency key [`KEY_OVERHEAD`] plus its principal, key and request
//! hash. The numbers approximate the heap each takes (the JSON length stands for a
//! record's strings and values; the overheads for the structs, map slots and allocator
//! rounding around them). With a budget ([`MemoryLog::with_budget`]), an append or a
//! create that takes the count over it evicts ended streams, with their idempotency
//! keys, in the order they ended, until the count is back under it. Open streams are
//! never evicted and appends to them never refused (an answer in flight finishes); a
//! create that would not fit once every ended stream is gone is refused with
//! [`LogError::Full`]. A reader of an evicted (or purged) stream ends with
//! [`LogError::NotFound`] at its next fetch; its records are freed at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, millis};
use crate::control::Control;
use crate::cursor::{Chunk, ChunkBudget, Fetch, Head, HeadSource, follow};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamKind,
    StreamMeta, StreamState, Trim,
};
use crate::{DEFAULT_STREAM_TTL, LogFuture, RecordStream, StreamLog};

/// Bytes counted per record on top of its JSON: its slot in the stream's deque (append
/// time, size, the `Record` enum: about 100 bytes) and allocator rounding.
pub const RECORD_OVERHEAD: u64 = 128;

/// Bytes counted per stream on top of its owner and request: the entry, its metadata and
/// control state, its head's `watch` channel, its map slots.
pub const STREAM_OVERHEAD: u64 = 1024;

/// Bytes counted per idempotency key on top of its principal, key and request hash: its
/// map slot, entry and index slot.
pub const KEY_OVERHEAD: u64 = 128;

/// An in-memory [`StreamLog`].
pub struct MemoryLog {
    clock: Arc<dyn Clock>,
    stream_ttl_ms: u64,
    /// The byte budget (`u64::MAX`: none).
    max_bytes: u64,
    /// Bytes held (see the module documentation). Changed under the lock of what it
    /// counts (a stream's for its records, the state's for streams and keys), read
    /// without one.
    held: AtomicU64,
    state: Mutex<State>,
}

/// An idempotency key's name: (principal, key).
type KeyName = (String, String);

#[derive(Default)]
struct State {
    streams: HashMap<StreamId, Arc<Entry>>,
    keys: HashMap<Arc<KeyName>, (IdempotencyEntry, u64)>,
    /// The keys naming each stream, to drop them with it (a key of another stream by
    /// now is left alone).
    keys_by_stream: HashMap<StreamId, Vec<Arc<KeyName>>>,
    /// Ended streams in the order they ended: the order of eviction. It may still name
    /// streams purged since.
    ended: VecDeque<StreamId>,
    /// How many open streams each (owner, kind) has.
    open: HashMap<(String, StreamKind), u64>,
}

struct Entry {
    inner: Mutex<Inner>,
    head: watch::Sender<Head>,
}

struct Inner {
    meta: StreamMeta,
    control: Control,
    /// Records `control.first_seq ..= control.last_seq`.
    records: VecDeque<Stored>,
    /// What the stream counts against the budget, its records included.
    bytes: u64,
    /// Evicted or purged: its records are freed, and whoever still holds the entry (a
    /// reader, a call that looked it up just before) is told it is not found.
    gone: bool,
}

/// A stored record.
struct Stored {
    /// Append time, clock ms.
    at: u64,
    /// Its JSON length.
    size: usize,
    record: Record,
}

impl Stored {
    fn counted(&self) -> u64 {
        self.size as u64 + RECORD_OVERHEAD
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a
    // way later callers could observe wrongly (every update is a few assignments), so a
    // poisoned lock is used as is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_bytes(name: &KeyName, entry: &IdempotencyEntry) -> u64 {
    KEY_OVERHEAD + (name.0.len() + name.1.len() + entry.request_hash.len()) as u64
}

impl MemoryLog {
    /// An empty log with the given clock and the default retention (24 h).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_ttl(clock, DEFAULT_STREAM_TTL)
    }

    /// An empty log keeping streams `stream_ttl` after they end.
    pub fn with_ttl(clock: Arc<dyn Clock>, stream_ttl: Duration) -> Self {
        Self::with_budget(clock, stream_ttl, u64::MAX)
    }

    /// An empty log keeping streams `stream_ttl` after they end, or until it holds more
    /// than `max_bytes`: then it evicts ended streams, the one that ended first first
    /// (see the module documentation).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use streamlog::{MemoryLog, SystemClock};
    /// let log = MemoryLog::with_budget(Arc::new(SystemClock), Duration::from_secs(3600), 64 << 20);
    /// assert_eq!(log.bytes(), 0);
    /// ```
    pub fn with_budget(clock: Arc<dyn Clock>, stream_ttl: Duration, max_bytes: u64) -> Self {
        Self {
            clock,
            stream_ttl_ms: millis(stream_ttl),
            max_bytes,
            held: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// The bytes the log holds, as counted against its budget (for a metric).
    pub fn bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn entry(&self, id: StreamId) -> Result<Arc<Entry>, LogError> {
        lock(&self.state)
            .streams
            .get(&id)
            .cloned()
            .ok_or(LogError::NotFound(id))
    }

    /// Run `f` on a stream's control state under its lock; publish the new head.
    fn with_control<T>(
        &self,
        id: StreamId,
        f: impl FnOnce(&mut Inner, u64) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let entry = self.entry(id)?;
        let now = self.clock.now_ms();
        let mut inner = lock(&entry.inner);
        if inner.gone {
            return Err(LogError::NotFound(id));
        }
        let out = f(&mut inner, now)?;
        let head = Head {
            last: inner.control.last_seq,
            terminal: inner.control.state.is_terminal(),
        };
        entry.head.send_if_modified(|h| {
            let changed = *h != head;
            *h = head;
            changed
        });
        Ok(out)
    }

    /// Remove stream `id`, free its records, and drop its idempotency keys. False if it
    /// was gone already.
    fn drop_stream(&self, state: &mut State, id: StreamId) -> bool {
        let Some(entry) = state.streams.remove(&id) else {
            return false;
        };
        let mut inner = lock(&entry.inner);
        inner.gone = true;
        inner.records = VecDeque::new();
        self.held.fetch_sub(inner.bytes, Ordering::Relaxed);
        inner.bytes = 0;
        drop(inner);
        for name in state.keys_by_stream.remove(&id).unwrap_or_default() {
            if state.keys.get(&*name).is_some_and(|(e, _)| e.stream == id)
                && let Some((name, (entry, _))) = state.keys.remove_entry(&*name)
            {
                self.held
                    .fetch_sub(key_bytes(&name, &entry), Ordering::Relaxed);
            }
        }
        true
    }

    /// Evict ended streams, the one that ended first first, until the log holds at most
    /// `target` bytes or none is left.
    fn evict(&self, state: &mut State, target: u64) {
        while self.bytes() > target {
            let Some(id) = state.ended.pop_front() else {
                return;
            };
            if self.drop_stream(state, id) {
                tracing::debug!(stream = %id, held = self.bytes(), "memory log evicted an ended stream");
            }
        }
    }
}

impl Inner {
    fn snapshot(&self) -> StreamMeta {
        let mut meta = self.meta.clone();
        meta.state = self.control.state;
        meta.updated_ms = self.control.updated_ms;
        meta.last_seq = self.control.last_seq;
        meta.first_seq = self.control.first_seq;
        meta.lease = self.control.lease.clone();
        meta.fence = self.control.fence;
        meta
    }
}

impl Fetch for Entry {
    fn fetch(&self, after: Seq, upto: Seq) -> LogFuture<'static, Chunk> {
        let inner = lock(&self.inner);
        if inner.gone {
            return Box::pin(std::future::ready(Err(LogError::NotFound(inner.meta.id))));
        }
        // Records up to `trimmed` are gone; the reader continues after them.
        let trimmed = inner.control.first_seq - 1;
        let after = after.max(trimmed);
        let end = upto.min(inner.control.last_seq).max(after);
        let start = usize::try_from(after - trimmed).unwrap_or(usize::MAX);
        let len = usize::try_from(end - after).unwrap_or(0);
        let mut budget = ChunkBudget::default();
        let records: Vec<(Seq, Record)> = (after + 1..)
            .zip(inner.records.range(start..start + len))
            .take_while(|(_, stored)| budget.admit(stored.size))
            .map(|(seq, stored)| (seq, stored.record.clone()))
            .collect();
        drop(inner);
        Box::pin(std::future::ready(Ok(Chunk { after, records })))
    }
}

impl StreamLog for MemoryLog {
    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta> {
        Box::pin(std::future::ready(self.create_stream(new)))
    }

    fn append(
        &self,
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
    ) -> LogFuture<'_, Seq> {
        let sizes: Vec<usize> = records.iter().map(Record::json_len).collect();
        let result = self.with_control(id, |inner, now| {
            inner.control.append(id, token, records.len(), now)?;
            let stored = records.into_iter().zip(sizes).map(|(record, size)| Stored {
                at: now,
                size,
                record,
            });
            let before = inner.records.len();
            inner.records.extend(stored);
            let added: u64 = inner.records.range(before..).map(Stored::counted).sum();
            inner.bytes += added;
            self.held.fetch_add(added, Ordering::Relaxed);
            Ok(inner.control.last_seq)
        });
        if result.is_ok() && self.bytes() > self.max_bytes {
            self.evict(&mut lock(&self.state), self.max_bytes);
        }
        Box::pin(std::future::ready(result))
    }

    fn appends_at_once(&self) -> bool {
        true
    }

    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()> {
        let result = self.with_control(id, |inner, now| {
            inner.control.finish(id, token, state, now)?;
            Ok((inner.meta.owner.clone(), inner.meta.kind))
        });
        let result = result.map(|(owner, kind)| {
            let mut state = lock(&self.state);
            state.ended.push_back(id);
            close(&mut state.open, owner, kind);
        });
        Box::pin(std::future::ready(result))
    }

    fn read(&self, id: StreamId, after: Seq) -> LogFuture<'_, RecordStream> {
        let result = self.entry(id).map(|entry| {
            let rx = entry.head.subscribe();
            follow(entry, HeadSource::Live(rx), after)
        });
        Box::pin(std::future::ready(result))
    }

    fn status(&self, id: StreamId) -> LogFuture<'_, StreamMeta> {
        let result = self.entry(id).and_then(|entry| {
            let inner = lock(&entry.inner);
            if inner.gone {
                return Err(LogError::NotFound(id));
            }
            Ok(inner.snapshot())
        });
        Box::pin(std::future::ready(result))
    }

    fn acquire_lease(&self, id: StreamId, holder: String, ttl: Duration) -> LogFuture<'_, Lease> {
        let result = self.with_control(id, |inner, now| {
            inner.control.acquire(id, holder, millis(ttl), now, None)
        });
        Box::pin(std::future::ready(result))
    }

    fn take_over_lease(
        &self,
        id: StreamId,
        holder: String,
        ttl: Duration,
        dead: String,
    ) -> LogFuture<'_, Lease> {
        let result = self.with_control(id, |inner, now| {
            inner
                .control
                .acquire(id, holder, millis(ttl), now, Some(&dead))
        });
        Box::pin(std::future::ready(result))
    }

    fn leased_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<(StreamId, Lease)>> {
        let entries: Vec<Arc<Entry>> = lock(&self.state).streams.values().cloned().collect();
        let mut leased = Vec::new();
        for entry in entries {
            let inner = lock(&entry.inner);
            if inner.meta.kind == kind
                && inner.control.state == StreamState::Open
                && let Some(lease) = &inner.control.lease
            {
                leased.push((inner.meta.id, lease.clone()));
            }
        }
        Box::pin(std::future::ready(Ok(leased)))
    }

    fn open_streams(&self, kind: StreamKind) -> LogFuture<'_, Vec<StreamMeta>> {
        let entries: Vec<Arc<Entry>> = lock(&self.state).streams.values().cloned().collect();
        let open = entries
            .iter()
            .filter_map(|entry| {
                let inner = lock(&entry.inner);
                let wanted = !inner.gone
                    && inner.meta.kind == kind
                    && inner.control.state == StreamState::Open;
                wanted.then(|| inner.snapshot())
            })
            .collect();
        Box::pin(std::future::ready(Ok(open)))
    }

    fn count_open(&self, owner: String, kind: StreamKind) -> LogFuture<'_, u64> {
        let count = lock(&self.state)
            .open
            .get(&(owner, kind))
            .copied()
            .unwrap_or(0);
        Box::pin(std::future::ready(Ok(count)))
    }

    fn renew_lease(
        &self,
        id: StreamId,
        token: FencingToken,
        ttl: Duration,
    ) -> LogFuture<'_, Lease> {
        let result = self.with_control(id, |inner, now| {
            inner.control.renew(id, token, millis(ttl), now)
        });
        Box::pin(std::future::ready(result))
    }

    fn release_lease(&self, id: StreamId, token: FencingToken) -> LogFuture<'_, ()> {
        let result = self.with_control(id, |inner, now| inner.control.release(id, token, now));
        Box::pin(std::future::ready(result))
    }

    fn trim(&self, id: StreamId, trim: Trim) -> LogFuture<'_, Seq> {
        let result = self.with_control(id, |inner, now| {
            let Inner {
                control,
                records,
                bytes,
                ..
            } = inner;
            let mut keep_after = control.trim_target(&trim);
            if let Some(cutoff) = Control::age_cutoff(&trim, now) {
                // Only the prefix of old records counts (see `Trim::max_age`).
                let old = records.iter().take_while(|s| s.at < cutoff).count();
                keep_after = keep_after.max(control.first_seq - 1 + old as u64);
            }
            let before = control.first_seq;
            let first = control.trim(keep_after);
            let n = usize::try_from(first - before).unwrap_or(usize::MAX);
            let freed: u64 = records
                .drain(..n.min(records.len()))
                .map(|s| s.counted())
                .sum();
            *bytes -= freed;
            self.held.fetch_sub(freed, Ordering::Relaxed);
            Ok(first)
        });
        Box::pin(std::future::ready(result))
    }

    fn insert_idempotency_key(
        &self,
        principal: String,
        key: String,
        entry: IdempotencyEntry,
    ) -> LogFuture<'_, IdempotencyOutcome> {
        let now = self.clock.now_ms();
        let mut state = lock(&self.state);
        let name = (principal, key);
        let outcome = if let Some((existing, _)) = state.keys.get(&name) {
            IdempotencyOutcome::Existing(existing.clone())
        } else {
            let name = Arc::new(name);
            self.held
                .fetch_add(key_bytes(&name, &entry), Ordering::Relaxed);
            let by_stream = state.keys_by_stream.entry(entry.stream).or_default();
            by_stream.push(Arc::clone(&name));
            state.keys.insert(name, (entry, now));
            IdempotencyOutcome::Inserted
        };
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn find_idempotency_key(
        &self,
        principal: String,
        key: String,
    ) -> LogFuture<'_, Option<IdempotencyEntry>> {
        let state = lock(&self.state);
        let found = state
            .keys
            .get(&(principal, key))
            .map(|(entry, _)| entry.clone());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn release_idempotency_key(
        &self,
        principal: String,
        key: String,
        stream: StreamId,
    ) -> LogFuture<'_, ()> {
        let mut state = lock(&self.state);
        let name = (principal, key);
        if state
            .keys
            .get(&name)
            .is_some_and(|(entry, _)| entry.stream == stream)
            && let Some((name, (entry, _))) = state.keys.remove_entry(&name)
        {
            self.held
                .fetch_sub(key_bytes(&name, &entry), Ordering::Relaxed);
            if let Some(names) = state.keys_by_stream.get_mut(&stream) {
                names.retain(|n| !Arc::ptr_eq(n, &name));
                if names.is_empty() {
                    state.keys_by_stream.remove(&stream);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge_expired(&self) -> LogFuture<'_, usize> {
        let now = self.clock.now_ms();
        let ttl = self.stream_ttl_ms;
        let mut state = lock(&self.state);
        let expired: Vec<StreamId> = state
            .streams
            .iter()
            .filter(|(_, entry)| lock(&entry.inner).control.expired(ttl, now))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.drop_stream(&mut state, *id);
        }
        let State {
            streams,
            keys,
            keys_by_stream,
            ended,
            ..
        } = &mut *state;
        ended.retain(|id| streams.contains_key(id));
        // Keys whose stream never came, once old enough.
        keys.retain(|name, (entry, inserted)| {
            let keep = streams.contains_key(&entry.stream) || inserted.saturating_add(ttl) > now;
            if !keep {
                self.held
                    .fetch_sub(key_bytes(name, entry), Ordering::Relaxed);
            }
            keep
        });
        keys_by_stream.retain(|id, names| {
            names.retain(|n| keys.get(&**n).is_some_and(|(e, _)| e.stream == *id));
            !names.is_empty()
        });
        Box::pin(std::future::ready(Ok(expired.len())))
    }
}

impl MemoryLog {
    /// Create a stream, after evicting ended streams if it would not fit the budget.
    fn create_stream(&self, new: NewStream) -> Result<StreamMeta, LogError> {
        let now = self.clock.now_ms();
        let bytes = STREAM_OVERHEAD + (new.owner.len() + new.request.len()) as u64;
        let mut state = lock(&self.state);
        if state.streams.contains_key(&new.id) {
            return Err(LogError::AlreadyExists(new.id));
        }
        let room = self.max_bytes.saturating_sub(bytes);
        if self.bytes() > room {
            self.evict(&mut state, room);
            if self.bytes() > room {
                return Err(LogError::Full);
            }
        }
        let control = Control::new(now);
        let meta = StreamMeta {
            id: new.id,
            owner: new.owner,
            kind: new.kind,
            request: new.request,
            state: StreamState::Open,
            created_ms: now,
            updated_ms: now,
            last_seq: 0,
            first_seq: control.first_seq,
            lease: None,
            fence: 0,
        };
        let (head, _) = watch::channel(Head::default());
        let entry = Arc::new(Entry {
            inner: Mutex::new(Inner {
                meta: meta.clone(),
                control,
                records: VecDeque::new(),
                bytes,
                gone: false,
            }),
            head,
        });
        self.held.fetch_add(bytes, Ordering::Relaxed);
        state.streams.insert(new.id, entry);
        *state
            .open
            .entry((meta.owner.clone(), meta.kind))
            .or_default() += 1;
        Ok(meta)
    }
}

/// One open stream of `(owner, kind)` ended.
fn close(open: &mut HashMap<(String, StreamKind), u64>, owner: String, kind: StreamKind) {
    let key = (owner, kind);
    if let Some(count) = open.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            open.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::cursor::FETCH_BYTES;

    fn large(size: usize) -> Record {
        Record::Text {
            text: "x".repeat(size),
        }
    }

    /// A fetch takes one large record alone, and small ones up to the byte bound.
    #[tokio::test]
    async fn fetch_chunks_are_bounded_in_bytes() {
        let log = MemoryLog::new(Arc::new(SystemClock));
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
        let small = large(1000);
        let mut batch = vec![large(1 << 20), large(1 << 20)];
        batch.extend(std::iter::repeat_n(small.clone(), 400));
        log.append(meta.id, lease.token, batch).await.unwrap();
        let entry = log.entry(meta.id).unwrap();
        assert_eq!(entry.fetch(0, 402).await.unwrap().records.len(), 1);
        let chunk = entry.fetch(2, 402).await.unwrap();
        assert_eq!(chunk.records.len(), FETCH_BYTES / small.json_len());
        assert_eq!(chunk.records[0].0, 3);
    }
}
