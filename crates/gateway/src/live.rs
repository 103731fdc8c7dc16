//! Generations running on this node, and who is reading them.
//!
//! The registry is touched when a generation starts or ends and when a reader attaches
//! or detaches — never per token. A generation is cancelled through its token (the stop
//! button, or `reader_grace` passing with no reader attached).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::signal::Signal;
use streamlog::StreamId;

/// One generation in progress on this node.
#[derive(Debug)]
pub struct Live {
    /// Cancels the generation.
    pub cancel: Signal,
    /// Raised when the generation stopped and left its stream open (a hard shutdown, a
    /// log that stopped taking appends): its readers here end `interrupted`.
    pub abandoned: Signal,
    /// The name of the target serving the answer, once its first request answered (for
    /// the `Unbroken-Target` header).
    pub serving: std::sync::OnceLock<String>,
    readers: AtomicUsize,
    /// Milliseconds since `epoch` when the last reader detached (or the start).
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Live {
    fn new() -> Self {
        Self {
            cancel: Signal::new(),
            abandoned: Signal::new(),
            serving: std::sync::OnceLock::new(),
            readers: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// How long the generation has had no reader, or `None` while it has one.
    pub fn unread_for(&self) -> Option<std::time::Duration> {
        if self.readers.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::SeqCst);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(std::time::Duration::from_millis(now.saturating_sub(since)))
    }
}

/// Counts a reader while it lives.
#[derive(Debug)]
pub struct ReaderGuard {
    live: Option<Arc<Live>>,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            let now = u64::try_from(live.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            live.idle_since_ms.store(now, Ordering::SeqCst);
            live.readers.fetch_sub(1, Ordering::SeqCst);
            metrics::gauge!("unbroken_active_readers").decrement(1);
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct LiveStreams {
    map: Mutex<HashMap<StreamId, Arc<Live>>>,
}

impl LiveStreams {
    /// Register a starting generation.
    pub fn insert(&self, id: StreamId) -> Arc<Live> {
        let live = Arc::new(Live::new());
        self.lock().insert(id, Arc::clone(&live));
        metrics::gauge!("unbroken_active_streams").increment(1);
        live
    }

    /// Forget a generation that ended.
    pub fn remove(&self, id: &StreamId) {
        if self.lock().remove(id).is_some() {
            metrics::gauge!("unbroken_active_streams").decrement(1);
        }
    }

    /// The generation, if it runs here.
    pub fn get(&self, id: &StreamId) -> Option<Arc<Live>> {
        self.lock().get(id).cloned()
    }

    /// Count a reader of `id` (a no-op guard when the generation does not run here).
    pub fn attach(&self, id: &StreamId) -> ReaderGuard {
        let live = self.get(id);
        if let Some(live) = &live {
            live.readers.fetch_add(1, Ordering::SeqCst);
            metrics::gauge!("unbroken_active_readers").increment(1);
        }
        ReaderGuard { live }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Arc<Live>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
