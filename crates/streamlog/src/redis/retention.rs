//! Retention by the log's clock: ended streams and idempotency keys past `stream_ttl`.

use std::sync::Arc;

use redis::Value;

use super::Shared;
use crate::clock::millis;
use crate::error::LogError;
use crate::id::StreamId;

/// Delete the streams that ended `stream_ttl` ago with their keys, and the keys whose
/// stream never came.
pub(super) async fn purge(shared: &Arc<Shared>) -> Result<usize, LogError> {
    let cutoff = shared
        .clock
        .now_ms()
        .saturating_sub(millis(shared.config.stream_ttl));
    let ended: Vec<String> = shared
        .command(
            redis::cmd("ZRANGEBYSCORE")
                .arg(shared.ended_key())
                .arg("-inf")
                .arg(cutoff),
        )
        .await?;
    let mut purged = 0;
    for member in ended {
        if let Ok(id) = member.parse::<StreamId>() {
            let keys: Vec<String> = shared
                .command(redis::cmd("SMEMBERS").arg(shared.stream_keys_key(id)))
                .await?;
            if !keys.is_empty() {
                shared
                    .command::<Value>(redis::cmd("DEL").arg(&keys))
                    .await?;
                shared
                    .command::<Value>(redis::cmd("ZREM").arg(shared.keys_key()).arg(&keys))
                    .await?;
            }
            let deleted: u64 = shared
                .command(
                    redis::cmd("DEL")
                        .arg(shared.meta_key(id))
                        .arg(shared.records_key(id))
                        .arg(shared.stream_keys_key(id)),
                )
                .await?;
            purged += usize::from(deleted > 0);
        }
        shared
            .command::<Value>(redis::cmd("ZREM").arg(shared.ended_key()).arg(&member))
            .await?;
    }
    // Keys old enough: gone if their stream is (never created, or purged), kept otherwise.
    let old: Vec<String> = shared
        .command(
            redis::cmd("ZRANGEBYSCORE")
                .arg(shared.keys_key())
                .arg("-inf")
                .arg(cutoff),
        )
        .await?;
    for name in old {
        let value: Option<String> = shared.command(redis::cmd("GET").arg(&name)).await?;
        let stream = value
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .and_then(|(id, _)| id.parse::<StreamId>().ok());
        let alive = match stream {
            Some(id) => {
                let exists: u64 = shared
                    .command(redis::cmd("EXISTS").arg(shared.meta_key(id)))
                    .await?;
                exists > 0
            }
            None => false,
        };
        if !alive {
            shared
                .command::<Value>(redis::cmd("DEL").arg(&name))
                .await?;
            shared
                .command::<Value>(redis::cmd("ZREM").arg(shared.keys_key()).arg(&name))
                .await?;
        }
    }
    Ok(purged)
}
