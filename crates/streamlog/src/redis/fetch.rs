//! Reading records: the tail of a watched stream first, Redis otherwise.

use std::sync::{Arc, PoisonError};

use redis::Value;

use super::Shared;
use super::values::{corrupt, number, refusal, text, value_at};
use crate::LogFuture;
use crate::cursor::{Chunk, FETCH_CHUNK, Fetch, Tail};
use crate::error::LogError;
use crate::id::{Seq, StreamId};
use crate::record::Record;

pub(super) struct RedisFetch {
    pub(super) shared: Arc<Shared>,
    pub(super) id: StreamId,
    pub(super) tail: Arc<std::sync::RwLock<Tail>>,
}

impl Fetch for RedisFetch {
    fn fetch(&self, after: Seq, upto: Seq) -> LogFuture<'static, Chunk> {
        let hit = self
            .tail
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(after, upto);
        if let Some(chunk) = hit {
            return Box::pin(std::future::ready(Ok(chunk)));
        }
        let shared = Arc::clone(&self.shared);
        let id = self.id;
        Box::pin(async move { fetch_range(&shared, id, after, upto).await })
    }
}

/// Records `(after, upto]` of `id` from Redis (at most a fetch chunk), with the first
/// kept seq.
pub(super) async fn fetch_range(
    shared: &Shared,
    id: StreamId,
    after: Seq,
    upto: Seq,
) -> Result<Chunk, LogError> {
    let upto = upto.min(after + FETCH_CHUNK);
    let keys = [shared.meta_key(id), shared.records_key(id)];
    let args = vec![
        after.to_string().into_bytes(),
        upto.to_string().into_bytes(),
    ];
    let (status, values) = shared.run(&shared.scripts.fetch, &keys, args).await?;
    if status != "ok" {
        return Err(refusal(id, 0, &status, &values));
    }
    let first = number(value_at(&values, 0)?)?;
    let mut chunk = Chunk {
        after: after.max(first.saturating_sub(1)),
        records: Vec::new(),
    };
    let Value::Array(entries) = value_at(&values, 1)? else {
        return Err(corrupt("records are not an array"));
    };
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(corrupt("an entry is not an array"));
        };
        let entry_id = text(value_at(parts, 0)?)?;
        let seq = entry_id
            .split('-')
            .next()
            .and_then(|s| s.parse::<Seq>().ok())
            .ok_or_else(|| corrupt("an entry id"))?;
        let Value::Array(fields) = value_at(parts, 1)? else {
            return Err(corrupt("an entry's fields"));
        };
        let mut body = None;
        for pair in fields.chunks(2) {
            if let [Value::BulkString(name), value] = pair
                && name == b"r"
            {
                body = Some(value);
            }
        }
        let Some(Value::BulkString(body)) = body else {
            return Err(corrupt("an entry without a record"));
        };
        let record: Record =
            serde_json::from_slice(body).map_err(|e| LogError::Corrupt(e.to_string()))?;
        chunk.records.push((seq, record));
    }
    Ok(chunk)
}
