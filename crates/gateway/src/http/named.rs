//! Streams found by name: a session id (per principal) or a topic name (global).
//!
//! The name → stream id mapping lives in the log's idempotency table, whose
//! insert-if-absent is atomic in every backend, so two nodes (or two requests) that meet a
//! new name at once agree on one stream. The mapping is removed with its stream.
//!
//! A name can come to stand for a new stream: its old one was removed (retention), or the
//! store lost its data (a Redis restarted without persistence). So the event ids of named
//! streams carry the stream's **epoch** (a tag of its stream id) after the seq,
//! `<seq>.<epoch>`: a reader resuming with an id of an earlier epoch is told its history
//! is gone (a `reset` event) and reads the new stream from its start, instead of silently
//! skipping that many of its events.

use streamlog::{StreamId, StreamKind, StreamMeta};

use crate::error::ApiError;
use crate::state::AppState;

/// The epoch of named stream `id`: the last 8 characters of its id (its random part).
pub fn epoch(id: StreamId) -> String {
    let id = id.to_string();
    id[id.len().saturating_sub(8)..].to_owned()
}

/// Where a reader of the named stream `meta` starts: after its `Last-Event-ID`
/// (`<seq>.<epoch>`, or a bare `<seq>`), or after `otherwise` without one. `Some(reset)`
/// when the id is of an earlier epoch: then it starts after `from_start`.
///
/// # Errors
/// 400 `invalid_last_event_id` for an id that is not one, or beyond the stream's end.
pub fn start(
    headers: &axum::http::HeaderMap,
    meta: &StreamMeta,
    otherwise: streamlog::Seq,
    from_start: streamlog::Seq,
) -> Result<(streamlog::Seq, bool), ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_last_event_id", message);
    let Some(value) = headers.get("last-event-id") else {
        return Ok((otherwise, false));
    };
    let text = value.to_str().unwrap_or("\u{0}").trim();
    if text.is_empty() {
        return Ok((otherwise, false));
    }
    let (seq, tag) = match text.split_once('.') {
        Some((seq, tag)) => (seq, Some(tag)),
        None => (text, None),
    };
    let seq: streamlog::Seq = seq
        .parse()
        .map_err(|_| invalid("Last-Event-ID must be an event id this stream sent".to_owned()))?;
    if tag.is_some_and(|tag| tag != epoch(meta.id)) {
        return Ok((from_start, true));
    }
    if seq > meta.last_seq {
        return Err(invalid(format!(
            "Last-Event-ID {seq} is beyond the stream's last event {}",
            meta.last_seq
        )));
    }
    Ok((seq, false))
}

/// The `reset` event a reader of an earlier epoch gets first.
pub fn reset_event(out: &mut Vec<u8>) {
    let data = serde_json::json!({
        "reason": "the history this Last-Event-ID belongs to is gone (the store lost it, or retention removed it); what follows is the stream from its start",
    });
    let _ = sse::write_event(out, Some("reset"), None, &data.to_string());
}

/// `[A-Za-z0-9_-]{1,128}`: session ids and topic names.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The stream called `name` in `namespace`: the existing one, or with `create` a new one
/// owned by `owner` — unless `owner` has `max_open` open streams of `kind` already (0: no
/// limit). `None` when it does not exist and `create` is false.
///
/// # Errors
/// 429 from the quota (`crate::idle::check_quota`); storage errors.
pub async fn find_or_create(
    state: &AppState,
    namespace: String,
    name: &str,
    kind: StreamKind,
    (owner, max_open): (&str, u64),
    create: bool,
) -> Result<Option<StreamMeta>, ApiError> {
    let log = state.log.as_ref();
    if let Some(meta) =
        crate::writers::find_named_stream(log, namespace.clone(), name, kind).await?
    {
        return Ok(Some(meta));
    }
    if !create {
        return Ok(None);
    }
    crate::idle::check_quota(log, owner, kind, max_open).await?;
    Ok(Some(
        crate::writers::named_stream(log, namespace, name, kind, owner).await?,
    ))
}
