//! Creating a stream and taking its lease: scripts whose answers build metadata.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::values::{number, refusal, value_at};
use crate::clock::millis;
use crate::error::LogError;
use crate::id::StreamId;
use crate::record::{Lease, NewStream, StreamMeta, StreamState};

pub(super) async fn create(
    shared: &Arc<Shared>,
    new: NewStream,
    lease: Option<(String, Duration)>,
) -> Result<(StreamMeta, Option<Lease>), LogError> {
    let now = shared.clock.now_ms();
    let (holder, ttl) = lease.clone().unwrap_or_default();
    let args = vec![
        new.owner.clone().into_bytes(),
        new.kind.to_i64().to_string().into_bytes(),
        new.request.to_vec(),
        now.to_string().into_bytes(),
        holder.clone().into_bytes(),
        millis(ttl).to_string().into_bytes(),
    ];
    // Indexed first, so an open stream is never missing from the index.
    super::open::index(shared, &new, now).await?;
    let (status, values) = shared
        .run(&shared.scripts.create, &[shared.meta_key(new.id)], args)
        .await?;
    if status != "ok" {
        return Err(refusal(new.id, 0, &status, &values));
    }
    let fence = number(value_at(&values, 0)?)?;
    let lease = match lease {
        Some(_) => {
            shared.index_lease(new.id, new.kind, true).await;
            Some(Lease {
                holder,
                token: fence,
                expires_at_ms: number(value_at(&values, 1)?)?,
            })
        }
        None => None,
    };
    let meta = StreamMeta {
        id: new.id,
        owner: new.owner,
        kind: new.kind,
        request: new.request,
        state: StreamState::Open,
        created_ms: now,
        updated_ms: now,
        last_seq: 0,
        first_seq: 1,
        lease: lease.clone(),
        fence,
    };
    Ok((meta, lease))
}

pub(super) async fn acquire(
    shared: &Arc<Shared>,
    id: StreamId,
    holder: String,
    ttl: Duration,
    dead: String,
) -> Result<Lease, LogError> {
    let now = shared.clock.now_ms();
    let args = vec![
        holder.clone().into_bytes(),
        millis(ttl).to_string().into_bytes(),
        now.to_string().into_bytes(),
        dead.into_bytes(),
    ];
    let (status, values) = shared
        .run(&shared.scripts.acquire, &[shared.meta_key(id)], args)
        .await?;
    if status != "ok" {
        return Err(refusal(id, 0, &status, &values));
    }
    if let Ok(meta) = shared.status(id).await {
        shared.index_lease(id, meta.kind, true).await;
    }
    Ok(Lease {
        holder,
        token: number(value_at(&values, 0)?)?,
        expires_at_ms: number(value_at(&values, 1)?)?,
    })
}
