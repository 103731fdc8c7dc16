//! The periodic retention driver: an async loop that calls
//! [`StreamLog::purge_expired`](crate::StreamLog::purge_expired) every interval until a
//! shutdown future resolves. The log never spawns it itself — the gateway runs it on its
//! `TaskTracker` so it is owned and awaited at shutdown (STYLE.md convention 7).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::StreamLog;

/// Purge expired streams every `every` until `shutdown` resolves. Errors are logged and
/// retried at the next tick; a purge in progress finishes before shutdown returns.
///
/// ```no_run
/// # async fn demo(log: std::sync::Arc<dyn streamlog::StreamLog>) {
/// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
/// let driver = streamlog::retention::purge_periodically(
///     log,
///     std::time::Duration::from_secs(60),
///     async move { let _ = rx.await; },
/// );
/// // tracker.spawn(driver); … at shutdown: tx.send(()), tracker.wait().
/// # drop((driver, tx));
/// # }
/// ```
pub async fn purge_periodically(
    log: Arc<dyn StreamLog>,
    every: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        match log
            .purge_expired()
            .instrument(tracing::debug_span!("purge_expired"))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(streams = n, "purged expired streams"),
            Err(e) => tracing::warn!(error = %e, "purge of expired streams failed"),
        }
    }
}
