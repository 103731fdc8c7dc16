//! Reading a stream's metadata hash (the fields `scripts` documents) into a
//! [`StreamMeta`].

use std::collections::HashMap;

use super::Shared;
use super::values::corrupt;
use crate::error::LogError;
use crate::id::StreamId;
use crate::record::{Lease, StreamKind, StreamMeta, StreamState};

/// A metadata hash's fields, as `HGETALL` answers them.
pub(super) type Fields = HashMap<String, Vec<u8>>;

impl Shared {
    /// The metadata of stream `id`.
    pub(super) async fn status(&self, id: StreamId) -> Result<StreamMeta, LogError> {
        let fields: Fields = self
            .command(redis::cmd("HGETALL").arg(self.meta_key(id)))
            .await?;
        meta_from_fields(id, &fields)?.ok_or(LogError::NotFound(id))
    }
}

/// Decode stream `id`'s metadata hash; `None` if it is empty (no such stream).
pub(super) fn meta_from_fields(
    id: StreamId,
    fields: &Fields,
) -> Result<Option<StreamMeta>, LogError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let num = |name: &str| -> Result<u64, LogError> {
        let raw = fields.get(name).ok_or_else(|| corrupt(name))?;
        String::from_utf8_lossy(raw)
            .parse::<f64>()
            .map(|n| n as u64)
            .map_err(|_| corrupt(name))
    };
    let lease = match fields.get("h") {
        Some(holder) => Some(Lease {
            holder: String::from_utf8_lossy(holder).into_owned(),
            token: num("t")?,
            expires_at_ms: num("e")?,
        }),
        None => None,
    };
    Ok(Some(StreamMeta {
        id,
        owner: String::from_utf8_lossy(fields.get("o").map_or(&[][..], |v| v)).into_owned(),
        kind: StreamKind::from_i64(num("k")? as i64).ok_or_else(|| corrupt("kind"))?,
        request: bytes::Bytes::from(fields.get("q").cloned().unwrap_or_default()),
        state: StreamState::from_i64(num("s")? as i64).ok_or_else(|| corrupt("state"))?,
        created_ms: num("c")?,
        updated_ms: num("u")?,
        last_seq: num("l")?,
        first_seq: num("f")?,
        lease,
        fence: num("n")?,
    }))
}
