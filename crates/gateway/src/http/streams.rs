//! `/v1/streams/{id}`: resume (attach a new reader), cancel, status.
//!
//! A stream is visible only to the principal that created it; anyone else — and any
//! malformed id — gets 404, so ids cannot be probed. Resuming honours `Last-Event-ID`
//! (header, or `?last_event_id=`) and replays every event after it exactly once, then
//! follows live. A reader that already has everything of an ended stream gets 204, the
//! standard "stop reconnecting" answer. A chat stream left open by a writer that is gone
//! (the gateway stopped or crashed mid-answer) is replayed and then ends with an
//! `interrupted` error event instead of heartbeats forever; it stays open in the log,
//! never reported finished.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::Value;
use streamlog::{Record, RecordStream, Seq, StreamId, StreamKind, StreamMeta, StreamState};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::body;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::render::{Events, OpenAiChunks};
use crate::signal::Signal;
use crate::state::AppState;
use crate::supervisor::LEASE_TTL;

/// Query of a resume.
#[derive(Debug, Deserialize)]
pub struct ResumeQuery {
    /// `openai` (default for chat streams) or `events`.
    format: Option<String>,
    /// For clients that cannot set `Last-Event-ID`.
    last_event_id: Option<String>,
}

/// The stream, if it exists and belongs to `principal`.
pub async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<StreamMeta, ApiError> {
    let not_found = || ApiError::not_found("stream_not_found", "no such stream");
    let id: StreamId = id.parse().map_err(|_| not_found())?;
    let meta = state.log.status(id).await?;
    if meta.owner != principal.as_str() {
        return Err(not_found());
    }
    Ok(meta)
}

/// What a reader needs from a chat stream's stored request, read in one parse.
struct Asked {
    /// The model asked for.
    model: String,
    /// `stream_options.include_usage`.
    include_usage: bool,
}

fn asked(meta: &StreamMeta) -> Asked {
    let body = serde_json::from_slice::<Value>(&meta.request).unwrap_or_default();
    Asked {
        model: body["model"].as_str().unwrap_or_default().to_owned(),
        include_usage: body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
    }
}

/// The model a chat stream was asked for (from its stored request).
pub fn model_of(meta: &StreamMeta) -> String {
    asked(meta).model
}

/// `GET /v1/streams/{id}`.
pub async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = owned(&state, &principal, &id).await?;
    let after = last_event_id(&headers, query.last_event_id.as_deref())?;
    let openai = match query.format.as_deref() {
        None => meta.kind == StreamKind::Chat,
        Some("openai") => true,
        Some("events") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                "format must be openai or events",
            ));
        }
    };
    // `[DONE]` of a finished chat stream carries last_seq + 1.
    let end = if openai && meta.state == StreamState::Finished {
        meta.last_seq + 1
    } else {
        meta.last_seq
    };
    if after > end {
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID {after} is beyond the stream's last event {end}"),
        ));
    }
    if meta.state.is_terminal() && after == end {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    metrics::counter!("unbroken_resumes_total").increment(1);
    let from = after.min(meta.last_seq);
    let Reading { records, ends_at } = reader_records(&state, &meta, from).await?;
    let guard = state.live.attach(&meta.id);
    let mut options = state.sse_options();
    options.shutdown = ends_at;
    Ok(if openai {
        let finished_before = meta.state == StreamState::Finished && after >= meta.last_seq;
        let asked = asked(&meta);
        let render = OpenAiChunks::new(
            meta.id,
            meta.created_ms / 1000,
            &asked.model,
            from,
            finished_before,
            asked.include_usage,
        );
        body::response(meta.id, records, render, options, guard)
    } else {
        body::response(meta.id, records, Events, options, guard)
    })
}

/// What a reader of a stream gets: its records, and the signal that ends the response
/// early (for [`body::Options::shutdown`]).
pub struct Reading {
    /// The records after the reader's position.
    pub records: RecordStream,
    /// Ends the response where it is.
    pub ends_at: Signal,
}

/// What a reader of `meta` gets after `from`: the log's records, followed live, ending at
/// shutdown. A chat answer being written here is drained instead: its reader keeps
/// following through the shutdown grace, and gets an `interrupted` error if the grace
/// ends first. A chat stream whose writer is gone gets the records it has and then an
/// `interrupted` error.
///
/// # Errors
/// The log's.
pub async fn reader_records(
    state: &AppState,
    meta: &StreamMeta,
    from: Seq,
) -> Result<Reading, ApiError> {
    let records = state.log.read(meta.id, from).await?;
    let plain = |records| Reading {
        records,
        ends_at: state.shutdown.clone(),
    };
    if meta.kind != StreamKind::Chat || meta.state.is_terminal() {
        return Ok(plain(records));
    }
    if state.live.get(&meta.id).is_some() {
        return Ok(Reading {
            records: interrupt_on(records, &state.hard_stop, from),
            ends_at: Signal::new(),
        });
    }
    // Not being written here: it ended since `meta` was read, or its writer is gone. A
    // lease of this node's means a generation is about to start (a keyed request between
    // its key and its start). With one node per log, a lease of another node is a
    // process that is gone (node names are unique per process); several nodes sharing a
    // log would have to wait for that lease to expire instead.
    let now = state.log.status(meta.id).await?;
    let starting_here = now
        .lease
        .as_ref()
        .is_some_and(|lease| lease.holder == state.node);
    if now.state.is_terminal() || starting_here {
        return Ok(plain(records));
    }
    Ok(Reading {
        records: orphaned(records, from, now.last_seq),
        ends_at: Signal::new(),
    })
}

/// Why a reader's answer ends without finishing: its writer stopped (the gateway's
/// shutdown grace ended, or the process that wrote it is gone).
fn interrupted() -> Record {
    Record::Error {
        code: "interrupted".into(),
        message: "the answer was interrupted: the gateway writing it stopped before it finished"
            .into(),
    }
}

/// `records`, cut when `stop` is raised with an `interrupted` error carrying the last
/// seq read (so a reconnect from it is in range).
fn interrupt_on(records: RecordStream, stop: &Signal, from: Seq) -> RecordStream {
    let stop = Box::pin(stop.raised());
    Box::pin(stream::unfold(
        Some((records, from, stop)),
        |reading| async move {
            let (mut records, last, mut stop) = reading?;
            tokio::select! {
                biased;
                item = records.next() => {
                    let item = item?;
                    let last = item.as_ref().map_or(last, |(seq, _)| *seq);
                    Some((item, Some((records, last, stop))))
                }
                () = &mut stop => Some((Ok((last, interrupted())), None)),
            }
        },
    ))
}

/// The records after `from` up to `last`, then an `interrupted` error carrying `last` as
/// its id (so a reconnect from it gets the same ending, not an out-of-range id).
fn orphaned(records: RecordStream, from: Seq, last: Seq) -> RecordStream {
    let ending = stream::once(async move { Ok((last, interrupted())) });
    if from >= last {
        return Box::pin(ending);
    }
    let replay = stream::unfold(Some(records), move |records| async move {
        let mut records = records?;
        let item = records.next().await?;
        let more = matches!(&item, Ok((seq, _)) if *seq < last);
        Some((item, more.then_some(records)))
    });
    Box::pin(replay.chain(ending))
}

/// `Last-Event-ID` from the header or the query; absent means 0 (from the start).
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Seq, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    match header.or(query) {
        None | Some("") => Ok(0),
        Some(text) => text.trim().parse::<Seq>().map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be an event id this stream sent (a decimal number)",
            )
        }),
    }
}

/// `POST /v1/streams/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let meta = owned(&state, &principal, &id).await?;
    if meta.state.is_terminal() {
        return Ok(axum::Json(
            serde_json::json!({ "id": meta.id.to_string(), "state": meta.state }),
        )
        .into_response());
    }
    if let Some(live) = state.live.get(&meta.id) {
        live.cancel.raise();
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "id": meta.id.to_string(), "state": "cancelling" })),
        )
            .into_response());
    }
    // Open but written by nobody here: take the lease and end it. A lease another node
    // still holds is a process that is gone (one node per log, node names unique per
    // process: see `reader_records`), so its token is nobody's now.
    let token = match state
        .log
        .acquire_lease(meta.id, state.node.clone(), LEASE_TTL)
        .await
    {
        Ok(lease) => lease.token,
        Err(streamlog::LogError::LeaseHeld { holder, .. }) if holder != state.node => meta.fence,
        Err(streamlog::LogError::LeaseHeld { .. }) => {
            return Err(ApiError::conflict(
                "stream_busy",
                "the stream's answer is starting; try again",
            ));
        }
        Err(other) => return Err(other.into()),
    };
    crate::supervisor::end_unwritten(
        &*state.log,
        meta.id,
        token,
        crate::supervisor::cancellation(),
        StreamState::Cancelled,
    )
    .await?;
    Ok(axum::Json(
        serde_json::json!({ "id": meta.id.to_string(), "state": StreamState::Cancelled }),
    )
    .into_response())
}

/// `GET /v1/streams/{id}/status`.
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let meta = owned(&state, &principal, &id).await?;
    let mut usage = Value::Null;
    if meta.state.is_terminal() {
        let mut records = state.log.read(meta.id, 0).await?;
        while let Some(item) = records.next().await {
            if let Ok((
                _,
                Record::Usage {
                    prompt_tokens,
                    completion_tokens,
                },
            )) = item
            {
                usage = serde_json::json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                });
            }
        }
    }
    Ok(axum::Json(serde_json::json!({
        "id": meta.id.to_string(),
        "kind": meta.kind,
        "state": meta.state,
        "seq": meta.last_seq,
        "model": model_of(&meta),
        "created_ms": meta.created_ms,
        "updated_ms": meta.updated_ms,
        "usage": usage,
    }))
    .into_response())
}
