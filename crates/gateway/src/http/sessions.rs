//! Session chat channels: one SSE connection per session carries every answer.
//!
//! A session is a stream in the log (kind `session`), named by the client's session id
//! within its principal. `POST …/messages` records the user's turn, starts an ordinary
//! chat stream with the whole conversation, and a [`Relay`] copies that answer into the
//! session as `start`, `token`, `progress`, `complete` / `error` events. The history is
//! the session stream itself, so it is as durable as the log and `GET …/events` resumes
//! across answers with `Last-Event-ID` like any stream.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use streamlog::{LogError, Record, Seq, StreamId, StreamKind, StreamMeta, StreamState};

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::generation::{self, Begun, Relay, Start};
use crate::http::body;
use crate::http::extract::{ApiPath, body_error};
use crate::http::named;
use crate::http::render::Events;
use crate::limits::Held;
use crate::state::AppState;
use crate::writers::namespace;

/// The session `id` of `principal`: with `create`, made on first use (a POST); without,
/// 404 when it does not exist.
async fn session(
    state: &AppState,
    principal: &Principal,
    id: &str,
    create: bool,
) -> Result<StreamMeta, ApiError> {
    if !named::valid_name(id) {
        return Err(ApiError::bad_request(
            "invalid_session_id",
            "a session id is 1 to 128 of A-Z a-z 0-9 _ -",
        ));
    }
    let not_found = || ApiError::not_found("session_not_found", "no such session");
    let namespace = namespace::session(principal.as_str());
    let meta = named::find_or_create(
        state,
        namespace,
        id,
        StreamKind::Session,
        (principal.as_str(), state.sessions.max_open_per_principal),
        create,
    )
    .await?
    .ok_or_else(not_found)?;
    if meta.owner != principal.as_str() {
        return Err(not_found());
    }
    Ok(meta)
}

/// Every record of a stream up to its current end (never follows live).
async fn records_until(state: &AppState, id: StreamId, last: Seq) -> Result<Vec<Record>, ApiError> {
    Ok(crate::generation::records_until(&*state.log, id, last).await?)
}

/// The conversation so far, as chat messages.
fn history(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Custom { event, data } if event == "user" => {
                Some(json!({ "role": "user", "content": data["content"] }))
            }
            Record::Custom { event, data } if event == "complete" => {
                Some(json!({ "role": "assistant", "content": data["response"] }))
            }
            _ => None,
        })
        .collect()
}

/// `POST /v1/sessions` (no body, or `{"sessionId": "…"}` to choose the id): create a
/// session. 201 when created, 200 when the chosen id existed already.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let body = body.map_err(|rejection| body_error(&rejection, state.server.max_body_bytes))?;
    let chosen = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let invalid = || {
            ApiError::bad_request(
                "invalid_request",
                "the body must be empty or {\"sessionId\": \"…\"}",
            )
        };
        crate::http::budget::check(&body)?;
        let value: Value = serde_json::from_slice(&body).map_err(|_| invalid())?;
        let Value::Object(mut fields) = value else {
            return Err(invalid());
        };
        match fields.remove("sessionId") {
            None if fields.is_empty() => None,
            Some(Value::String(id)) if fields.is_empty() => Some(id),
            _ => return Err(invalid()),
        }
    };
    let (id, status) = match chosen {
        Some(id) => {
            let existed = session(&state, &principal, &id, false).await.is_ok();
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (id, status)
        }
        None => (StreamId::new().to_string(), StatusCode::CREATED),
    };
    session(&state, &principal, &id, true).await?;
    Ok((status, Json(json!({ "sessionId": id }))).into_response())
}

/// `GET /v1/sessions/{id}`: the history.
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let meta = session(&state, &principal, &id, false).await?;
    let records = records_until(&state, meta.id, meta.last_seq).await?;
    let answering = meta.lease.is_some() && meta.state == StreamState::Open;
    Ok(Json(json!({
        "sessionId": id,
        "state": if meta.state.is_terminal() { "ended" } else if answering { "answering" } else { "open" },
        "messages": history(&records),
    }))
    .into_response())
}

/// `DELETE /v1/sessions/{id}`: end the session; its channel readers end.
pub async fn end(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let meta = session(&state, &principal, &id, false).await?;
    if !meta.state.is_terminal() {
        let lease = acquire(&state, meta.id).await?;
        state
            .log
            .finish(meta.id, lease, StreamState::Finished)
            .await?;
    }
    Ok(Json(json!({ "sessionId": id, "state": "ended" })).into_response())
}

async fn acquire(state: &AppState, id: StreamId) -> Result<streamlog::FencingToken, ApiError> {
    match state
        .log
        .acquire_lease(id, state.node.clone(), state.lease_ttl)
        .await
    {
        Ok(lease) => Ok(lease.token),
        Err(LogError::LeaseHeld { .. }) => Err(ApiError::conflict(
            "answer_in_progress",
            "an answer is still streaming in this session",
        )),
        Err(LogError::AlreadyFinished { .. }) => Err(ApiError::conflict(
            "session_ended",
            "the session has ended (deleted, or idle for longer than [sessions] idle_ttl_s); start a new one",
        )),
        Err(error) => Err(error.into()),
    }
}

/// `GET /v1/sessions/{id}/events`: the channel.
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let meta = session(&state, &principal, &id, false).await?;
    let (after, reset) = named::start(&headers, &meta, 0, 0)?;
    if meta.state.is_terminal() && after == meta.last_seq {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let records = state.log.read(meta.id, after).await?;
    let mut options = body::options(&state);
    options.hold = Some(state.hold(Held::Readers, &principal).await?);
    let connected = json!({ "sessionId": id }).to_string();
    let _ = sse::write_event(&mut options.prelude, Some("connected"), None, &connected);
    if reset {
        named::reset_event(&mut options.prelude);
    }
    let guard = state.live.attach(&meta.id);
    let render = Events::with_epoch(named::epoch(meta.id));
    Ok(body::response(meta.id, records, render, options, guard))
}

/// `POST /v1/sessions/{id}/messages` {content, model?, temperature?, …} → 202 {streamId}.
pub async fn message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admit_answer(&principal).await?;
    let body = body.map_err(|rejection| body_error(&rejection, state.server.max_body_bytes))?;
    crate::http::budget::check(&body)?;
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&body) else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    };
    let content = match fields.remove("content") {
        Some(Value::String(content)) if !content.is_empty() => content,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "content must be a non-empty string",
            ));
        }
    };
    let model_name = match fields.remove("model") {
        Some(Value::String(model)) => model,
        None => state
            .models
            .names()
            .first()
            .cloned()
            .ok_or_else(|| ApiError::not_found("model_not_found", "no model is configured"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "model must be a string",
            ));
        }
    };
    let model = state.models.get(&model_name).cloned().ok_or_else(|| {
        ApiError::not_found(
            "model_not_found",
            format!("the model {model_name:?} does not exist"),
        )
    })?;
    if fields.contains_key("messages") {
        return Err(ApiError::bad_request(
            "invalid_request",
            "messages: the session keeps the conversation; send only content",
        ));
    }
    fields.remove("stream");
    crate::http::chat::whole_numbers(&mut fields);
    // The rest of the request is checked as the chat endpoint checks it (`n`, sampling
    // parameters, their types), with the same errors naming the field.
    let mut probe = fields.clone();
    probe.insert("model".into(), Value::String(model_name.clone()));
    probe.insert(
        "messages".into(),
        json!([{ "role": "user", "content": content }]),
    );
    crate::http::chat::parse(Value::Object(probe).to_string().as_bytes())?;
    let meta = session(&state, &principal, &id, true).await?;
    let token = acquire(&state, meta.id).await?;
    let started = async {
        let records = records_until(&state, meta.id, meta.last_seq).await?;
        let mut messages = history(&records);
        // The conversation's latest turns only: a long session keeps fitting the model's
        // context and its cost stays bounded (the log keeps everything).
        let keep = state.sessions.max_history_messages;
        if messages.len() > keep {
            messages.drain(..messages.len() - keep);
        }
        messages.push(json!({ "role": "user", "content": content }));
        let mut request_json = Map::new();
        request_json.insert("model".into(), Value::String(model_name.clone()));
        request_json.insert("messages".into(), Value::Array(messages));
        request_json.extend(fields);
        let request = generation::adapter_request(request_json.clone())
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
        let start = Start {
            principal: principal.as_str().to_owned(),
            model,
            request,
            body: Bytes::from(Value::Object(request_json).to_string()),
            idempotency_key: None,
            commit_after: None,
            hold: Some(state.hold(Held::Streams, &principal).await?),
            reader_grace: None,
        };
        match generation::start(&state, start).await? {
            Begun::New(answer, _) | Begun::Existing(answer) => Ok::<_, ApiError>(answer.id),
        }
    };
    let answer = match started.await {
        Ok(answer) => answer,
        Err(error) => {
            // Nothing was recorded: the session stays as it was.
            let _ = state.log.release_lease(meta.id, token).await;
            return Err(error);
        }
    };
    let opening = vec![
        Record::Custom {
            event: "user".into(),
            data: json!({ "content": content }),
        },
        Record::Custom {
            event: "start".into(),
            data: json!({ "streamId": answer.to_string(), "model": model_name }),
        },
    ];
    state.log.append(meta.id, token, opening).await?;
    let relay = Relay {
        log: std::sync::Arc::clone(&state.log),
        session: meta.id,
        token,
        answer,
        progress_every: state.server.progress_every,
        hard_stop: state.hard_stop.clone(),
        lease_ttl: state.lease_ttl,
        resume: Default::default(),
        health: std::sync::Arc::clone(&state.health),
    };
    let guard = state.live.attach(&answer);
    state.tasks.spawn(async move {
        // The session keeps the answer: it is read (into the history) to the end.
        let _guard = guard;
        relay.run().await;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "sessionId": id, "streamId": answer.to_string() })),
    )
        .into_response())
}
