//! `/v1/streams/{id}`: resume (attach a new reader), cancel, status.
//!
//! A stream is visible only to the principal that created it; anyone else — and any
//! malformed id — gets 404, so ids cannot be probed. Resuming honours `Last-Event-ID`
//! (header, or `?last_event_id=`) and replays every event after it exactly once, then
//! follows live. A reader that already has everything of an ended stream gets 204, the
//! standard "stop reconnecting" answer. A chat stream whose writer is gone and that no
//! node took over is replayed and then ends with an `interrupted` error event instead of
//! heartbeats forever (see [`generation::reader`]); it is never reported finished.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use streamlog::{Record, StreamId, StreamKind, StreamMeta, StreamState};

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::generation::{self, Reading};
use crate::http::body;
use crate::http::extract::{ApiPath, ApiQuery, last_event_id};
use crate::http::render::{Events, OpenAiChunks};
use crate::limits::Held;
use crate::state::AppState;

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
    // The stream endpoints act on chat streams only: topics, sessions and tasks have
    // their own, with their own rules.
    if meta.owner != principal.as_str() || meta.kind != streamlog::StreamKind::Chat {
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
    principal.require(Scope::Chat)?;
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
    let Reading { records, ends_at } = generation::reader(&state, &meta, from).await?;
    let guard = state.live.attach(&meta.id);
    let mut options = body::options(&state);
    options.hold = Some(state.hold(Held::Readers, &principal).await?);
    options.shutdown = ends_at;
    Ok(if openai {
        let finished_before = meta.state == StreamState::Finished && after >= meta.last_seq;
        let asked = asked(&meta);
        let mut render = OpenAiChunks::new(
            meta.id,
            meta.created_ms / 1000,
            &asked.model,
            from,
            finished_before,
            asked.include_usage,
        );
        // A reader resuming past the first record has not seen which model serves: the
        // first request's (a continuation's record after `from` still switches it).
        if from > 0
            && let Some(Record::Upstream { model, .. }) = first_record(&state, &meta).await
        {
            render.set_model(&model);
        }
        body::response(meta.id, records, render, options, guard)
    } else {
        body::response(meta.id, records, Events::default(), options, guard)
    })
}

/// The stream's first record, if it still has it.
async fn first_record(state: &AppState, meta: &StreamMeta) -> Option<Record> {
    if meta.first_seq != 1 || meta.last_seq == 0 {
        return None;
    }
    let records = generation::records_until(&*state.log, meta.id, 1)
        .await
        .ok()?;
    records.into_iter().next()
}

/// `POST /v1/streams/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    // One's own answer with `chat`; anyone's with `admin`.
    let meta = match owned(&state, &principal, &id).await {
        Err(not_yours) if principal.has(Scope::Admin) => {
            let id: StreamId = id.parse().map_err(|_| not_yours)?;
            let meta = state.log.status(id).await?;
            if meta.kind != streamlog::StreamKind::Chat {
                return Err(ApiError::not_found("stream_not_found", "no such stream"));
            }
            meta
        }
        Err(error) => return Err(error),
        Ok(meta) => {
            principal.require(Scope::Chat)?;
            meta
        }
    };
    if meta.state.is_terminal() {
        return Ok(axum::Json(
            serde_json::json!({ "id": meta.id.to_string(), "state": meta.state }),
        )
        .into_response());
    }
    Ok(match stop(&state, &meta).await? {
        Stopped::Asked => cancelling(meta.id),
        Stopped::Ended => axum::Json(
            serde_json::json!({ "id": meta.id.to_string(), "state": StreamState::Cancelled }),
        )
        .into_response(),
    })
}

/// How [`stop`] stopped an answer.
pub enum Stopped {
    /// Its writer (here or on another node) was asked to stop: it ends shortly.
    Asked,
    /// Nobody wrote it: it was ended `cancelled` here.
    Ended,
}

/// Cancel the open chat stream `meta`, wherever its writer runs.
///
/// # Errors
/// 409 `stream_busy` when another node is starting it and cannot be asked yet; storage
/// errors.
pub async fn stop(state: &AppState, meta: &StreamMeta) -> Result<Stopped, ApiError> {
    if let Some(live) = state.live.get(&meta.id) {
        live.cancel.raise();
        return Ok(Stopped::Asked);
    }
    // Open but written by nobody here. This node before a restart is gone: its stream is
    // taken from it. Another node's live lease means that node writes it (a cancel
    // reaches its writer only through that node); an expired one, that nobody does.
    let taken = match state
        .log
        .acquire_lease(meta.id, state.node.clone(), state.lease_ttl)
        .await
    {
        Err(streamlog::LogError::LeaseHeld { holder, .. })
            if generation::node_of(&holder) == state.node_id && holder != state.node =>
        {
            state
                .log
                .take_over_lease(meta.id, state.node.clone(), state.lease_ttl, holder)
                .await
        }
        other => other,
    };
    let token = match taken {
        Ok(lease) => lease.token,
        // Another node writes it: its writer is asked through the log, and stops at its
        // next token.
        Err(streamlog::LogError::LeaseHeld { .. }) => {
            return match state.log.request_cancel(meta.id).await {
                Ok(()) => Ok(Stopped::Asked),
                Err(streamlog::LogError::InvalidArgument(_)) => Err(ApiError::conflict(
                    "stream_busy",
                    "the stream's answer is being started; try again",
                )),
                Err(other) => Err(other.into()),
            };
        }
        // Ended meanwhile.
        Err(streamlog::LogError::AlreadyFinished { .. }) => return Ok(Stopped::Ended),
        Err(other) => return Err(other.into()),
    };
    generation::end_unwritten(
        &*state.log,
        meta.id,
        token,
        generation::cancellation(),
        StreamState::Cancelled,
    )
    .await?;
    Ok(Stopped::Ended)
}

/// 202: the writer was asked to stop.
fn cancelling(id: StreamId) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "id": id.to_string(), "state": "cancelling" })),
    )
        .into_response()
}

/// `GET /v1/streams/{id}/status`.
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let meta = owned(&state, &principal, &id).await?;
    let mut usage = Value::Null;
    let mut requests: Vec<Value> = Vec::new();
    let mut cost: Option<f64> = None;
    if meta.kind == streamlog::StreamKind::Chat {
        let records = generation::records_until(&*state.log, meta.id, meta.last_seq).await?;
        for record in records {
            match record {
                // Until the answer ends, the requests serving it so far.
                Record::Upstream { target, model } => requests.push(
                    serde_json::json!({ "target": target, "model": model, "status": "open" }),
                ),
                Record::Usage {
                    prompt_tokens,
                    completion_tokens,
                    requests: made,
                } => {
                    usage = serde_json::json!({
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
                    });
                    cost = made.iter().filter_map(|r| r.cost_usd).reduce(|a, b| a + b);
                    requests = made
                        .iter()
                        .map(|r| serde_json::to_value(r).unwrap_or_default())
                        .collect();
                }
                _ => {}
            }
        }
    }
    if let Some(cost) = cost {
        usage["cost_usd"] = serde_json::json!(cost);
    }
    let target = requests
        .iter()
        .rev()
        .find(|r| r["status"] == "open" || r["status"] == "ok")
        .map(|r| r["target"].clone())
        .unwrap_or_default();
    Ok(axum::Json(serde_json::json!({
        "id": meta.id.to_string(),
        "kind": meta.kind,
        "state": meta.state,
        "seq": meta.last_seq,
        "model": model_of(&meta),
        "created_ms": meta.created_ms,
        "updated_ms": meta.updated_ms,
        "target": target,
        "usage": usage,
        "upstream_requests": requests,
    }))
    .into_response())
}
