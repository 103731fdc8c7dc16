//! Lease holders and the log's health.
//!
//! A writer's lease names its holder as `{node_id}/{incarnation}`: the node id is kept
//! across restarts (see `state::node_id`), the incarnation is new in every process. A
//! lease held by this node's id under another incarnation belongs to a process that is
//! gone (one process per node id), so a restarted node takes such streams over at once;
//! another node's streams are taken over only once their lease has expired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use streamlog::{FencingToken, LogError, StreamId, StreamLog};

/// The node id part of a lease holder.
pub fn node_of(holder: &str) -> &str {
    holder.split_once('/').map_or(holder, |(node, _)| node)
}

/// The renewal of a writer's lease, every third of its TTL: the one renewal loop of
/// answers' writers and session relays (each polls [`Renewal::due`] in its `select!`).
pub(crate) struct Renewal {
    tick: tokio::time::Interval,
    ttl: Duration,
}

impl Renewal {
    /// The first renewal is due a third of `ttl` from now.
    pub(crate) fn new(ttl: Duration) -> Self {
        let mut tick = tokio::time::interval(ttl / 3);
        tick.reset();
        Self { tick, ttl }
    }

    /// Resolves when the next renewal is due.
    pub(crate) async fn due(&mut self) {
        self.tick.tick().await;
    }

    /// Renew the lease `token` on stream `id`, telling `health` how the write went. A
    /// storage failure is tried again at the next tick (two more before the lease runs
    /// out), so it is not an error here.
    ///
    /// # Errors
    /// The lease is lost: another writer took it, or the stream ended.
    pub(crate) async fn renew(
        &self,
        log: &dyn StreamLog,
        id: StreamId,
        token: FencingToken,
        health: &LogHealth,
    ) -> Result<(), LogError> {
        match log.renew_lease(id, token, self.ttl).await {
            Ok(_) => {
                health.succeeded();
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "cannot renew the lease; trying again");
                health.failed(&error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Whether the stream log can be written, as the last write showed. `/ready` answers
/// 503 while it cannot.
#[derive(Debug, Default)]
pub struct LogHealth {
    failing: AtomicBool,
}

impl LogHealth {
    /// Note a write that failed; only storage failures count (a stale token is another
    /// writer's success, not the log's failure).
    pub fn failed(&self, error: &LogError) {
        let storage = matches!(
            error,
            LogError::Storage(_) | LogError::Closed | LogError::Corrupt(_)
        );
        if storage && !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, "the stream log cannot be written");
        }
    }

    /// Note a write that succeeded (a load, and a store only on recovery: cheap per
    /// append).
    pub fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the stream log can be written again");
        }
    }

    /// Whether the last write failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_names_its_node() {
        assert_eq!(node_of("node-a/0192"), "node-a");
        assert_eq!(node_of("legacy-holder"), "legacy-holder");
    }

    #[test]
    fn only_storage_failures_make_the_log_unhealthy() {
        let health = LogHealth::default();
        health.failed(&LogError::StaleToken {
            id: streamlog::StreamId::new(),
            presented: 1,
            current: Some(2),
        });
        assert!(!health.is_failing());
        health.failed(&LogError::Closed);
        assert!(health.is_failing());
        health.succeeded();
        assert!(!health.is_failing());
    }
}
