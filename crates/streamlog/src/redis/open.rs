//! The index of open streams, behind [`StreamLog::open_streams`] and
//! [`StreamLog::count_open`]: for each kind, and for each owner and kind, a sorted set of
//! the ids of its open streams scored by creation time (clock ms).
//!
//! Like the `leased` index it lives in other slots than the streams, so it is kept
//! beside the scripts rather than inside them (a script touches one stream's keys only,
//! which keeps the backend usable on Redis Cluster). A stream is added before its create
//! script runs, so an open stream is never missing; it is removed after its finish. What
//! the gaps leave behind — the member of a create that failed, of a finish whose removal
//! failed, of a stream purged or expired, of a create refused because its id was taken
//! by another owner's stream — is found by the readers, which check each member's
//! metadata: an ended stream, or one of another owner or kind, is dropped at once, a
//! missing one once it is older than [`GRACE`] (younger, its create may still be on its
//! way). So a count is exact for
//! every create and finish acknowledged before it, and costs one read of the owner's
//! set and one pipelined round trip for the states of its members.
//!
//! A Redis written by a version without the index gets it built once: the first reader
//! `SCAN`s the metadata keys, indexes the open streams, and sets a marker key.
//!
//! [`StreamLog::open_streams`]: crate::StreamLog::open_streams
//! [`StreamLog::count_open`]: crate::StreamLog::count_open

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;

use super::Shared;
use super::meta::{Fields, meta_from_fields};
use crate::clock::millis;
use crate::error::LogError;
use crate::id::StreamId;
use crate::record::{NewStream, StreamKind, StreamMeta, StreamState};

/// How long a member whose stream does not exist is kept: its create may be in flight.
pub(super) const GRACE: Duration = Duration::from_secs(60);

/// Commands per pipelined round trip.
const PIPELINE: usize = 256;

impl Shared {
    fn open_key(&self, kind: StreamKind) -> String {
        format!("{}:open:{}", self.config.prefix, kind.to_i64())
    }

    fn owner_open_key(&self, owner: &str, kind: StreamKind) -> String {
        format!(
            "{}:open:{}:{}:{owner}",
            self.config.prefix,
            kind.to_i64(),
            owner.len()
        )
    }

    /// Set once the index covers the streams written before it existed.
    fn open_indexed_key(&self) -> String {
        format!("{}:open:indexed", self.config.prefix)
    }

    /// Run a pipeline, as a storage error if Redis fails or does not answer in time.
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, LogError> {
        let mut conn = self.conn().await?;
        let answered =
            tokio::time::timeout(self.config.response_timeout, pipe.query_async(&mut conn)).await;
        self.checked(answered)
    }
}

/// Index a stream about to be created, at `now`. Runs before its create script.
///
/// # Errors
/// Storage errors (the create must not go ahead unindexed).
pub(super) async fn index(shared: &Shared, new: &NewStream, now: u64) -> Result<(), LogError> {
    let id = new.id.to_string();
    let mut pipe = redis::pipe();
    for key in [
        shared.open_key(new.kind),
        shared.owner_open_key(&new.owner, new.kind),
    ] {
        pipe.cmd("ZADD")
            .arg(key)
            .arg("NX")
            .arg(now)
            .arg(&id)
            .ignore();
    }
    shared.pipeline(&pipe).await
}

/// Take an ended stream out of the index (best effort: readers drop what is left).
pub(super) async fn unindex(shared: &Shared, meta: &StreamMeta) {
    let id = meta.id.to_string();
    let mut pipe = redis::pipe();
    for key in [
        shared.open_key(meta.kind),
        shared.owner_open_key(&meta.owner, meta.kind),
    ] {
        pipe.cmd("ZREM").arg(key).arg(&id).ignore();
    }
    if let Err(error) = shared.pipeline::<()>(&pipe).await {
        tracing::warn!(%error, stream = %meta.id, "cannot take the stream out of the open index");
    }
}

/// The open streams of `kind`.
pub(super) async fn open_streams(
    shared: &Shared,
    kind: StreamKind,
) -> Result<Vec<StreamMeta>, LogError> {
    ensure_indexed(shared).await?;
    let key = shared.open_key(kind);
    let members = members(shared, &key).await?;
    let now = shared.clock.now_ms();
    let mut open = Vec::new();
    let mut stale = redis::pipe();
    for batch in members.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for (id, _) in batch {
            pipe.cmd("HGETALL").arg(shared.meta_key(*id));
        }
        let all: Vec<Fields> = shared.pipeline(&pipe).await?;
        for (&(id, created), fields) in batch.iter().zip(&all) {
            match meta_from_fields(id, fields)? {
                Some(meta) if meta.kind != kind => {
                    stale.cmd("ZREM").arg(&key).arg(id.to_string()).ignore();
                }
                Some(meta) if meta.state == StreamState::Open => open.push(meta),
                Some(meta) => {
                    let owner = shared.owner_open_key(&meta.owner, kind);
                    stale.cmd("ZREM").arg(&key).arg(id.to_string()).ignore();
                    stale.cmd("ZREM").arg(owner).arg(id.to_string()).ignore();
                }
                None if expired(created, now) => {
                    stale.cmd("ZREM").arg(&key).arg(id.to_string()).ignore();
                }
                None => {}
            }
        }
    }
    drop_stale(shared, &stale).await;
    Ok(open)
}

/// How many open streams of `kind` `owner` has.
pub(super) async fn count_open(
    shared: &Shared,
    owner: &str,
    kind: StreamKind,
) -> Result<u64, LogError> {
    ensure_indexed(shared).await?;
    let key = shared.owner_open_key(owner, kind);
    let members = members(shared, &key).await?;
    let now = shared.clock.now_ms();
    let mut count = 0;
    let mut stale = redis::pipe();
    for batch in members.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for (id, _) in batch {
            pipe.cmd("HMGET")
                .arg(shared.meta_key(*id))
                .arg("s")
                .arg("o")
                .arg("k");
        }
        type Row = (Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = shared.pipeline(&pipe).await?;
        let kind_text = kind.to_i64().to_string();
        for (&(id, created), (state, of, is)) in batch.iter().zip(rows) {
            let ours = of.as_deref() == Some(owner) && is.as_deref() == Some(&kind_text);
            let stale_in: &[&String] = match state.as_deref() {
                Some("0") if ours => {
                    count += 1;
                    &[]
                }
                Some(_) if !ours => &[&key],
                Some(_) => &[&key, &shared.open_key(kind)],
                None if expired(created, now) => &[&key, &shared.open_key(kind)],
                None => &[],
            };
            for index in stale_in {
                stale.cmd("ZREM").arg(*index).arg(id.to_string()).ignore();
            }
        }
    }
    drop_stale(shared, &stale).await;
    Ok(count)
}

/// Whether a member created at `created` whose stream does not exist is stale by `now`.
fn expired(created: u64, now: u64) -> bool {
    created.saturating_add(millis(GRACE)) <= now
}

/// An index's members that are stream ids, with their creation times.
async fn members(shared: &Shared, key: &str) -> Result<Vec<(StreamId, u64)>, LogError> {
    let raw: Vec<(String, f64)> = shared
        .command(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(member, score)| Some((member.parse().ok()?, score as u64)))
        .collect())
}

/// Remove stale members (best effort: the next reader finds them again).
async fn drop_stale(shared: &Shared, stale: &redis::Pipeline) {
    if stale.cmd_iter().next().is_none() {
        return;
    }
    if let Err(error) = shared.pipeline::<()>(stale).await {
        tracing::warn!(%error, "cannot drop stale members of the open index");
    }
}

/// Build the index for streams written before it existed, once per Redis.
async fn ensure_indexed(shared: &Shared) -> Result<(), LogError> {
    if shared.open_indexed.load(Ordering::Acquire) {
        return Ok(());
    }
    let marker = shared.open_indexed_key();
    let indexed: bool = shared.command(redis::cmd("EXISTS").arg(&marker)).await?;
    if !indexed {
        let streams = backfill(shared).await?;
        shared
            .command::<Value>(redis::cmd("SET").arg(&marker).arg(1))
            .await?;
        tracing::info!(streams, "indexed the open streams already in redis");
    }
    shared.open_indexed.store(true, Ordering::Release);
    Ok(())
}

/// `SCAN` every stream's metadata key and index the open streams; how many it found.
/// Several nodes may run it at once: adding a member twice is a no-op.
async fn backfill(shared: &Shared) -> Result<usize, LogError> {
    let prefix = format!("{}:{{", shared.config.prefix);
    let mut pattern = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str("*}:m");
    let mut found = 0;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = shared
            .command(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        let ids: Vec<StreamId> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(&prefix)?.strip_suffix("}:m")?.parse().ok())
            .collect();
        for batch in ids.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.cmd("HMGET")
                    .arg(shared.meta_key(*id))
                    .arg("s")
                    .arg("k")
                    .arg("o")
                    .arg("c");
            }
            type Row = (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let rows: Vec<Row> = shared.pipeline(&pipe).await?;
            let mut add = redis::pipe();
            for (id, row) in batch.iter().zip(rows) {
                let (Some(state), Some(kind), Some(owner), created) = row else {
                    continue;
                };
                let Some(kind) = kind.parse().ok().and_then(StreamKind::from_i64) else {
                    continue;
                };
                if state != "0" {
                    continue;
                }
                let created = created.and_then(|c| c.parse::<f64>().ok()).unwrap_or(0.0) as u64;
                for key in [shared.open_key(kind), shared.owner_open_key(&owner, kind)] {
                    add.cmd("ZADD")
                        .arg(key)
                        .arg("NX")
                        .arg(created)
                        .arg(id.to_string())
                        .ignore();
                }
                found += 1;
            }
            if add.cmd_iter().next().is_some() {
                shared.pipeline::<()>(&add).await?;
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(found);
        }
    }
}
