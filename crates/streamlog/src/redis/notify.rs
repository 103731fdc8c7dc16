//! The subscription to the cluster's notification channel, on a thread of its own.

use std::sync::PoisonError;
use std::time::Duration;

use futures_util::StreamExt;

use super::Shared;
use crate::id::{Seq, StreamId};

/// The thread that follows the cluster's notifications: `<id> <last> <terminal>` per
/// append or end. It reconnects with backoff; after each (re)subscription it reads every
/// watched head again.
pub(super) fn subscribe(shared: std::sync::Weak<Shared>, stopped: std::sync::mpsc::Receiver<()>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("cannot start the redis notification thread");
        return;
    };
    runtime.block_on(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            if !matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                return;
            }
            let Some(log) = shared.upgrade() else { return };
            let client = log.client.clone();
            let channel = log.channel();
            drop(log);
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot subscribe to redis notifications; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            // Catch up on whatever was published while nobody listened.
            if let Some(log) = shared.upgrade() {
                let ids: Vec<StreamId> = log
                    .heads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .keys()
                    .copied()
                    .collect();
                for id in ids {
                    if let Ok(meta) = log.status(id).await {
                        log.advance(id, meta.last_seq, meta.state.is_terminal());
                    }
                }
            }
            let mut messages = pubsub.into_on_message();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(log) = shared.upgrade() else { return };
                        let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                        let mut parts = payload.split(' ');
                        let id = parts.next().and_then(|s| s.parse::<StreamId>().ok());
                        let last = parts.next().and_then(|s| s.parse::<Seq>().ok());
                        let terminal = parts.next() == Some("1");
                        if let (Some(id), Some(last)) = (id, last) {
                            log.notified(id, last, terminal).await;
                        }
                    }
                    _ = tick.tick() => {
                        if !matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                            return;
                        }
                    }
                }
            }
            tracing::warn!("redis notifications lost; resubscribing");
        }
    });
}
