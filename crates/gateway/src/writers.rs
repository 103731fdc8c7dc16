//! Short writers: the gateway's lease on streams that many requests append to (topics,
//! tasks).
//!
//! Each such stream gets one lease, acquired on first write and kept; appends through it
//! are serialised per stream by an async mutex, so concurrent publishers queue instead of
//! failing on each other's lease. If another node takes the lease over, the next append
//! sees a stale token and acquires again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use streamlog::{FencingToken, LogError, Record, Seq, StreamId, StreamLog, StreamState};

type Slot = Arc<tokio::sync::Mutex<Option<FencingToken>>>;

/// Leases held by this node for request-driven writes.
#[derive(Default)]
pub struct Writers {
    slots: Mutex<HashMap<StreamId, Slot>>,
}

impl Writers {
    fn slot(&self, id: StreamId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(id).or_default())
    }

    /// Append `records`, then end the stream in `end` if given. Returns the last seq.
    ///
    /// # Errors
    /// [`LogError::AlreadyFinished`] for an ended stream, [`LogError::LeaseHeld`] when
    /// another node writes it, storage errors.
    pub async fn append(
        &self,
        log: &dyn StreamLog,
        node: &str,
        ttl: std::time::Duration,
        id: StreamId,
        records: Vec<Record>,
        end: Option<StreamState>,
    ) -> Result<Seq, LogError> {
        let slot = self.slot(id);
        let mut token = slot.lock().await;
        let mut retried = false;
        let seq = loop {
            let current = match *token {
                Some(current) => current,
                None => {
                    let lease = log.acquire_lease(id, node.to_owned(), ttl).await?;
                    *token = Some(lease.token);
                    lease.token
                }
            };
            match log.append(id, current, records.clone()).await {
                Ok(seq) => break seq,
                Err(LogError::StaleToken { .. }) if !retried => {
                    retried = true;
                    *token = None;
                }
                Err(error) => return Err(error),
            }
        };
        if let (Some(state), Some(current)) = (end, *token) {
            log.finish(id, current, state).await?;
            *token = None;
            drop(token);
            self.slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        }
        Ok(seq)
    }
}
