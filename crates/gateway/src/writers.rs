//! Short writers: appends that requests make to streams many requests write (topics,
//! tasks), from any node.
//!
//! Each append holds the stream's lease only while it writes: acquire, append, release
//! (or finish). Appends from this node are serialised per stream by an async mutex, so
//! its concurrent publishers queue instead of failing on each other's lease; an append
//! that meets another node's lease waits for it to be released, with a short backoff, up
//! to [`WAIT`]. The lease of such an append lasts [`HOLD`] at most, so one from a node that
//! died mid-append blocks the stream for no longer than that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamlog::{
    IdempotencyEntry, IdempotencyOutcome, LogError, NewStream, Record, Seq, StreamId, StreamKind,
    StreamLog, StreamMeta, StreamState,
};

/// How long an append waits for another node's append to the same stream.
pub const WAIT: Duration = Duration::from_secs(3);

/// How long an append's lease lasts (it is released as soon as the append is written).
pub const HOLD: Duration = Duration::from_secs(2);

type Slot = Arc<tokio::sync::Mutex<()>>;

/// Serialises this node's appends per stream.
#[derive(Default)]
pub struct Writers {
    slots: Mutex<HashMap<StreamId, Slot>>,
}

impl Writers {
    fn slot(&self, id: StreamId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the slots nobody waits on, so the map holds only streams being written.
        slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        Arc::clone(slots.entry(id).or_default())
    }

    /// Append `records`, then end the stream in `end` if given. Returns the last seq.
    ///
    /// # Errors
    /// [`LogError::AlreadyFinished`] for an ended stream, [`LogError::LeaseHeld`] when
    /// another node kept writing it for longer than [`WAIT`], storage errors.
    pub async fn append(
        &self,
        log: &dyn StreamLog,
        node: &str,
        id: StreamId,
        records: Vec<Record>,
        end: Option<StreamState>,
    ) -> Result<Seq, LogError> {
        let slot = self.slot(id);
        let _turn = slot.lock().await;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(2);
        let lease = loop {
            match log.acquire_lease(id, node.to_owned(), HOLD).await {
                Ok(lease) => break lease,
                Err(LogError::LeaseHeld { .. }) if started.elapsed() < WAIT => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(error),
            }
        };
        let written = log.append(id, lease.token, records).await;
        let closed = match (&written, end) {
            (Ok(_), Some(state)) => log.finish(id, lease.token, state).await,
            _ => log.release_lease(id, lease.token).await,
        };
        let seq = written?;
        closed?;
        Ok(seq)
    }
}

/// The namespaces of names in the log's key table. A principal's name has no control
/// characters (keys and tokens are checked), so no principal's names can land in another
/// principal's namespace or the system's.
pub mod namespace {
    /// A principal's chat idempotency keys.
    pub fn chat(principal: &str) -> String {
        format!("chat\u{1f}{principal}")
    }
    /// A principal's sessions.
    pub fn session(principal: &str) -> String {
        format!("session\u{1f}{principal}")
    }
    /// Topics, which belong to the system.
    pub const TOPIC: &str = "topic\u{1f}";
    /// The usage ledger's days.
    pub const USAGE: &str = "usage\u{1f}";
    /// Deleted responses (`DELETE /v1/responses/{id}`), by stream id: a tombstone, purged
    /// with its stream.
    pub const DELETED: &str = "deleted\u{1f}";
    /// The owner of the system's streams (topics, the usage ledger): no principal can be
    /// called that.
    pub const SYSTEM: &str = "\u{1}system";
}

/// The existing stream called `name` in `namespace`, if it is of `kind`; never creates.
///
/// # Errors
/// Storage errors.
pub async fn find_named_stream(
    log: &dyn StreamLog,
    namespace: String,
    name: &str,
    kind: StreamKind,
) -> Result<Option<StreamMeta>, LogError> {
    let Some(entry) = log.find_idempotency_key(namespace, name.to_owned()).await? else {
        return Ok(None);
    };
    match log.status(entry.stream).await {
        Ok(meta) if meta.kind == kind => Ok(Some(meta)),
        Ok(_) | Err(LogError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The stream called `name` in `namespace` (topics, sessions, the usage ledger), created
/// (owned by `owner`) on first use, by whichever node comes first.
///
/// # Errors
/// Storage errors.
pub async fn named_stream(
    log: &dyn StreamLog,
    namespace: String,
    name: &str,
    kind: StreamKind,
    owner: &str,
) -> Result<StreamMeta, LogError> {
    let entry = IdempotencyEntry {
        stream: StreamId::new(),
        request_hash: Vec::new(),
    };
    let id = match log
        .insert_idempotency_key(namespace, name.to_owned(), entry.clone())
        .await?
    {
        IdempotencyOutcome::Inserted => entry.stream,
        IdempotencyOutcome::Existing(existing) => existing.stream,
    };
    match log.status(id).await {
        Ok(meta) if meta.kind == kind => Ok(meta),
        Ok(_) => Err(LogError::InvalidArgument(
            "the name belongs to a stream of another kind",
        )),
        // Named a moment ago by someone who has not created it yet: create it ourselves;
        // whoever comes second finds it existing.
        Err(LogError::NotFound(_)) => {
            let created = log
                .create(NewStream {
                    id,
                    owner: owner.to_owned(),
                    kind,
                    request: Bytes::new(),
                })
                .await;
            match created {
                Ok(meta) => Ok(meta),
                Err(LogError::AlreadyExists(_)) => log.status(id).await,
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}
