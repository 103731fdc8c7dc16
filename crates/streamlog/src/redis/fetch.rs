//! Reading records: the tail of a watched stream first, Redis otherwise.

use std::sync::{Arc, PoisonError};

use redis::Value;

use super::Shared;
use super::values::{corrupt, number, refusal, text, value_at};
use crate::LogFuture;
use crate::cursor::{Chunk, FETCH_BYTES, FETCH_CHUNK, Fetch, Tail};
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

/// Records `(after, upto]` of `id` from Redis (at most a fetch chunk, in records and in
/// bytes), with the first kept seq.
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
        FETCH_BYTES.to_string().into_bytes(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::StreamLog;
    use crate::clock::SystemClock;
    use crate::cursor::FETCH_BYTES;
    use crate::record::{NewStream, StreamKind, StreamState};
    use crate::redis::{LocalServer, RedisConfig, RedisLog};

    const MIB: usize = 1 << 20;

    fn large(size: usize) -> Record {
        Record::Text {
            text: "x".repeat(size),
        }
    }

    fn tail_bytes(log: &RedisLog, id: StreamId) -> usize {
        let tail = log.shared.tail(id).unwrap();
        tail.read().unwrap_or_else(PoisonError::into_inner).bytes()
    }

    /// As sqlite's test of the same name: the tail of a watched stream of 1 MiB records
    /// holds only the newest, small records fill it up to the bound, every record reaches
    /// the reader, and the fetch script's chunks keep to the byte bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tail_and_chunks_are_bounded_in_bytes() {
        let server = LocalServer::start().unwrap();
        let mut config = RedisConfig::new(server.url.clone());
        config.tail_bytes = 64 * 1024;
        let log = RedisLog::open(config, Arc::new(SystemClock)).unwrap();
        let new = NewStream {
            id: StreamId::new(),
            owner: "p".into(),
            kind: StreamKind::Topic,
            request: bytes::Bytes::new(),
        };
        let (meta, lease) = log
            .create_leased(new, "w".into(), Duration::from_secs(60))
            .await
            .unwrap();
        let id = meta.id;
        let reader = log.read(id, 0).await.unwrap();
        for _ in 0..3 {
            log.append(id, lease.token, vec![large(MIB)]).await.unwrap();
            assert_eq!(tail_bytes(&log, id), large(MIB).json_len());
        }
        let small = large(1000);
        for _ in 0..400 {
            log.append(id, lease.token, vec![small.clone()])
                .await
                .unwrap();
            assert!(tail_bytes(&log, id) <= 64 * 1024);
        }
        assert!(tail_bytes(&log, id) > 60 * 1024);
        log.finish(id, lease.token, StreamState::Finished)
            .await
            .unwrap();
        let got: Vec<_> = reader.map(Result::unwrap).collect().await;
        assert!(got.iter().map(|(seq, _)| *seq).eq(1..=403));

        let one = fetch_range(&log.shared, id, 0, 3).await.unwrap();
        assert_eq!(one.records.len(), 1);
        let rest = fetch_range(&log.shared, id, 3, 403).await.unwrap();
        assert_eq!(rest.records.len(), FETCH_BYTES / small.json_len());
        assert_eq!(rest.records[0].0, 4);
        // From the middle of the large records to past them: they go one by one.
        let two = fetch_range(&log.shared, id, 1, 403).await.unwrap();
        assert_eq!(two.records.len(), 1);
        assert_eq!(two.records[0].0, 2);
    }
}
