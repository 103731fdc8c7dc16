//! The in-memory backend, for tests and ephemeral deployments. Each stream is an entry
//! holding its metadata and records behind one mutex plus a `watch` of its head; an
//! append is "durable" the moment it is in the vector, so readers see it at once. Lost on
//! restart. It applies the same `control` rules as the durable backends.
//!
//! A stream keeps its records `first_seq ..= last_seq` in a `VecDeque`, each with its
//! append time (for [`StreamLog::trim`] by age): the record with seq `s` is at index
//! `s - first_seq`, and a trim pops from the front under the same lock as appends and
//! fetches.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, millis};
use crate::control::Control;
use crate::cursor::{Chunk, FETCH_CHUNK, Fetch, Head, HeadSource, follow};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::{
    FencingToken, IdempotencyEntry, IdempotencyOutcome, Lease, NewStream, Record, StreamKind,
    StreamMeta, StreamState, Trim,
};
use crate::{DEFAULT_STREAM_TTL, LogFuture, RecordStream, StreamLog};

/// An in-memory [`StreamLog`].
pub struct MemoryLog {
    clock: Arc<dyn Clock>,
    stream_ttl_ms: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    streams: HashMap<StreamId, Arc<Entry>>,
    keys: HashMap<(String, String), (IdempotencyEntry, u64)>,
}

struct Entry {
    inner: Mutex<Inner>,
    head: watch::Sender<Head>,
}

struct Inner {
    meta: StreamMeta,
    control: Control,
    /// Records `control.first_seq ..= control.last_seq` with their append times (ms).
    records: VecDeque<(u64, Record)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a
    // way later callers could observe wrongly (every update is a few assignments), so a
    // poisoned lock is used as is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryLog {
    /// An empty log with the given clock and the default retention (24 h).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_ttl(clock, DEFAULT_STREAM_TTL)
    }

    /// An empty log keeping streams `stream_ttl` after they end.
    pub fn with_ttl(clock: Arc<dyn Clock>, stream_ttl: Duration) -> Self {
        Self {
            clock,
            stream_ttl_ms: millis(stream_ttl),
            state: Mutex::new(State::default()),
        }
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
        // Records up to `trimmed` are gone; the reader continues after them.
        let trimmed = inner.control.first_seq - 1;
        let after = after.max(trimmed);
        let end = upto
            .min(after + FETCH_CHUNK)
            .min(inner.control.last_seq)
            .max(after);
        let start = usize::try_from(after - trimmed).unwrap_or(usize::MAX);
        let len = usize::try_from(end - after).unwrap_or(0);
        let records: Vec<(Seq, Record)> = (after + 1..=end)
            .zip(
                inner
                    .records
                    .range(start..start + len)
                    .map(|(_, r)| r.clone()),
            )
            .collect();
        drop(inner);
        Box::pin(std::future::ready(Ok(Chunk { after, records })))
    }
}

impl StreamLog for MemoryLog {
    fn create(&self, new: NewStream) -> LogFuture<'_, StreamMeta> {
        let now = self.clock.now_ms();
        let mut state = lock(&self.state);
        let result =
            if let std::collections::hash_map::Entry::Vacant(slot) = state.streams.entry(new.id) {
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
                    }),
                    head,
                });
                slot.insert(entry);
                Ok(meta)
            } else {
                Err(LogError::AlreadyExists(new.id))
            };
        Box::pin(std::future::ready(result))
    }

    fn append(
        &self,
        id: StreamId,
        token: FencingToken,
        records: Vec<Record>,
    ) -> LogFuture<'_, Seq> {
        let result = self.with_control(id, |inner, now| {
            inner.control.append(id, token, records.len(), now)?;
            inner.records.extend(records.into_iter().map(|r| (now, r)));
            Ok(inner.control.last_seq)
        });
        Box::pin(std::future::ready(result))
    }

    fn appends_at_once(&self) -> bool {
        true
    }

    fn finish(&self, id: StreamId, token: FencingToken, state: StreamState) -> LogFuture<'_, ()> {
        let result =
            self.with_control(id, |inner, now| inner.control.finish(id, token, state, now));
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
        let result = self.entry(id).map(|entry| lock(&entry.inner).snapshot());
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
                control, records, ..
            } = inner;
            let mut keep_after = control.trim_target(&trim);
            if let Some(cutoff) = Control::age_cutoff(&trim, now) {
                // Only the prefix of old records counts (see `Trim::max_age`).
                let old = records.iter().take_while(|(at, _)| *at < cutoff).count();
                keep_after = keep_after.max(control.first_seq - 1 + old as u64);
            }
            let before = control.first_seq;
            let first = control.trim(keep_after);
            records.drain(..usize::try_from(first - before).unwrap_or(usize::MAX));
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
        let outcome = match state.keys.entry((principal, key)) {
            std::collections::hash_map::Entry::Occupied(o) => {
                IdempotencyOutcome::Existing(o.get().0.clone())
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((entry, now));
                IdempotencyOutcome::Inserted
            }
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
        let pair = (principal, key);
        if state
            .keys
            .get(&pair)
            .is_some_and(|(entry, _)| entry.stream == stream)
        {
            state.keys.remove(&pair);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge_expired(&self) -> LogFuture<'_, usize> {
        let now = self.clock.now_ms();
        let ttl = self.stream_ttl_ms;
        let mut state = lock(&self.state);
        let before = state.streams.len();
        state
            .streams
            .retain(|_, entry| !lock(&entry.inner).control.expired(ttl, now));
        let purged = before - state.streams.len();
        let State { streams, keys } = &mut *state;
        keys.retain(|_, (entry, inserted)| {
            streams.contains_key(&entry.stream) || inserted.saturating_add(ttl) > now
        });
        Box::pin(std::future::ready(Ok(purged)))
    }
}
