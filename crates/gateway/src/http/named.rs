//! Streams found by name: a session id (per principal) or a topic name (global).
//!
//! The name → stream id mapping lives in the log's idempotency table, whose
//! insert-if-absent is atomic in every backend, so two nodes (or two requests) that meet a
//! new name at once agree on one stream. The mapping is removed with its stream.

use bytes::Bytes;
use streamlog::{
    IdempotencyEntry, IdempotencyOutcome, LogError, NewStream, StreamId, StreamKind, StreamMeta,
};

use crate::error::ApiError;
use crate::state::AppState;

/// `[A-Za-z0-9_-]{1,128}`: session ids and topic names.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The stream called `name` in `namespace`, created (owned by `owner`) on first use.
///
/// # Errors
/// Storage errors.
pub async fn stream(
    state: &AppState,
    namespace: String,
    name: &str,
    kind: StreamKind,
    owner: &str,
) -> Result<StreamMeta, ApiError> {
    let entry = IdempotencyEntry {
        stream: StreamId::new(),
        request_hash: Vec::new(),
    };
    let id = match state
        .log
        .insert_idempotency_key(namespace, name.to_owned(), entry.clone())
        .await?
    {
        IdempotencyOutcome::Inserted => entry.stream,
        IdempotencyOutcome::Existing(existing) => existing.stream,
    };
    match state.log.status(id).await {
        Ok(meta) => Ok(meta),
        // Named a moment ago by someone who has not created it yet: create it ourselves;
        // whoever comes second finds it existing.
        Err(LogError::NotFound(_)) => {
            let created = state
                .log
                .create(NewStream {
                    id,
                    owner: owner.to_owned(),
                    kind,
                    request: Bytes::new(),
                })
                .await;
            match created {
                Ok(meta) => Ok(meta),
                Err(LogError::AlreadyExists(_)) => Ok(state.log.status(id).await?),
                Err(error) => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}
