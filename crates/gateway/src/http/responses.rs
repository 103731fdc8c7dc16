//! `/v1/responses`: OpenAI's Responses API, resumable for every response (see
//! [`crate::responses`] for how a response is a view of a chat stream).
//!
//! - `POST /v1/responses` starts the answer as a chat completion would (the same limits,
//!   scopes, idempotency, failover and takeover) and answers with the response object
//!   (`stream: false`: once it ended; with `background: true`: at once, `queued`) or its
//!   events (`stream: true`).
//! - `GET /v1/responses/{id}` is the object as it stands; with `stream=true` its events
//!   after `starting_after` (or `Last-Event-ID`), replayed and then followed live.
//! - `POST /v1/responses/{id}/cancel` stops it and returns the final object (again the
//!   same object when it had ended).
//! - `DELETE /v1/responses/{id}` stops it and hides it: every later request about it
//!   gets 404. Its records go with the stream's retention.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use streamlog::{IdempotencyEntry, StreamKind, StreamMeta};

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::generation::{self, Begun, Start};
use crate::http::body;
use crate::http::extract::{ApiPath, ApiQuery, body_error};
use crate::limits::Held;
use crate::responses::view::{ResponseEvents, View};
use crate::responses::{ENVELOPE_KEY, Envelope, request, response_id, stream_of};
use crate::state::AppState;
use crate::writers::namespace;

/// How long a cancel waits for the answer to end before it answers with the object as it
/// stands (still `in_progress`; it ends shortly).
const CANCEL_WAIT: Duration = Duration::from_secs(10);

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "response_not_found",
        format!("Response with id '{id}' not found."),
    )
}

/// A response of `principal`: its stream and envelope. 404 for anything else (another's,
/// a chat completion's stream, a deleted one, an id that is not one).
async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(StreamMeta, Envelope), ApiError> {
    let stream = stream_of(id).ok_or_else(|| not_found(id))?;
    let meta = match state.log.status(stream).await {
        Ok(meta) => meta,
        Err(streamlog::LogError::NotFound(_)) => return Err(not_found(id)),
        Err(error) => return Err(error.into()),
    };
    if meta.owner != principal.as_str() || meta.kind != StreamKind::Chat {
        return Err(not_found(id));
    }
    let envelope = envelope_of(&meta).ok_or_else(|| not_found(id))?;
    let deleted = state
        .log
        .find_idempotency_key(namespace::DELETED.into(), meta.id.to_string())
        .await?;
    if deleted.is_some() {
        return Err(not_found(id));
    }
    Ok((meta, envelope))
}

/// The envelope of a response's stream; `None` for a chat completion's.
fn envelope_of(meta: &StreamMeta) -> Option<Envelope> {
    let body: Value = serde_json::from_slice(&meta.request).ok()?;
    serde_json::from_value(body.get(ENVELOPE_KEY)?.clone()).ok()
}

/// The client-facing model of a stream (from its stored request).
fn model_of(meta: &StreamMeta) -> String {
    crate::http::streams::model_of(meta)
}

fn new_view(meta: &StreamMeta, envelope: Envelope) -> View {
    let model = if envelope.model.is_empty() {
        model_of(meta)
    } else {
        envelope.model.clone()
    };
    View::new(meta.id, meta.created_ms / 1000, &model, envelope)
}

/// The view of `meta`'s stream fed with every record up to `last`, with the events
/// numbered above `after` written to `out` as SSE.
async fn replay(
    state: &AppState,
    meta: &StreamMeta,
    envelope: Envelope,
    after: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<View, ApiError> {
    let mut view = new_view(meta, envelope);
    let records = generation::records_until(&*state.log, meta.id, meta.last_seq).await?;
    let mut events = Vec::new();
    for record in &records {
        view.record(record, &mut events);
    }
    for (number, event) in events {
        if after.is_none_or(|after| number > after) {
            crate::responses::view::write_event(out, number, &event);
        }
    }
    Ok(view)
}

/// `POST /v1/responses`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admit_answer(&principal).await?;
    let body = body.map_err(|rejection| body_error(&rejection, state.server.max_body_bytes))?;
    let parsed = request::parse(&body)?;
    let model = state.models.get(&parsed.model).cloned().ok_or_else(|| {
        ApiError::not_found(
            "model_not_found",
            format!("the model {:?} does not exist", parsed.model),
        )
    })?;
    let idempotency_key = crate::http::chat::idempotency_key(&headers)?;
    if state.shutdown.is_raised() {
        return Err(ApiError::unavailable("the gateway is shutting down"));
    }
    let mut envelope = parsed.envelope;
    let mut messages = Vec::new();
    if let Some(instructions) = &envelope.instructions {
        messages.push(request::instructions_message(instructions));
        envelope.instructions_message = true;
    }
    if let Some(previous) = envelope.previous_response_id.clone() {
        messages.extend(earlier(&state, &principal, &previous).await?);
    }
    messages.extend(parsed.input);
    let mut chat = parsed.chat;
    chat.insert("model".into(), Value::String(parsed.model.clone()));
    chat.insert("messages".into(), Value::Array(messages));
    let background = envelope.background;
    chat.insert(
        ENVELOPE_KEY.into(),
        serde_json::to_value(&envelope).unwrap_or_default(),
    );
    let envelope = envelope;
    let adapter = generation::adapter_request(chat.clone())
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let start = Start {
        principal: principal.as_str().to_owned(),
        model,
        request: adapter,
        body: Bytes::from(Value::Object(chat).to_string()),
        idempotency_key,
        // A background response answers at once; a stream once its first event is
        // ready, or at the first heartbeat.
        commit_after: if background {
            Some(Duration::ZERO)
        } else {
            parsed.stream.then(|| state.server.heartbeat_interval())
        },
        hold: Some(state.hold(Held::Streams, &principal).await?),
        reader_grace: background.then_some(generation::BACKGROUND_GRACE),
    };
    let meta = match generation::start(&state, start).await? {
        Begun::New(meta, _) => meta,
        // Attached by its Idempotency-Key: the same body, so the same envelope.
        Begun::Existing(meta) => meta,
    };
    if parsed.stream {
        return events(&state, &principal, meta, envelope, None).await;
    }
    if background {
        let mut ignored = Vec::new();
        let view = replay(&state, &meta, envelope, None, &mut ignored).await?;
        return Ok(Json(view.response()).into_response());
    }
    finished_object(&state, &meta, envelope).await
}

/// The messages that continue the response `id`: its conversation and its output.
async fn earlier(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Vec<Value>, ApiError> {
    let missing = || {
        ApiError::not_found(
            "previous_response_not_found",
            format!("previous_response_id: Previous response with id '{id}' not found."),
        )
    };
    let (meta, envelope) = owned(state, principal, id).await.map_err(|_| missing())?;
    if !meta.state.is_terminal() {
        return Err(ApiError::bad_request(
            "previous_response_in_progress",
            format!("previous_response_id: the response '{id}' has not ended yet"),
        ));
    }
    let had_instructions = envelope.instructions_message;
    let mut ignored = Vec::new();
    let view = replay(state, &meta, envelope, None, &mut ignored).await?;
    let stored: Value = serde_json::from_slice(&meta.request).unwrap_or_default();
    let messages = stored["messages"].as_array().cloned().unwrap_or_default();
    let output = view.response()["output"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(request::continue_from(&messages, had_instructions, &output))
}

/// The object once the answer ended (it is read to its end).
async fn finished_object(
    state: &AppState,
    meta: &StreamMeta,
    envelope: Envelope,
) -> Result<Response, ApiError> {
    let guard = state.live.attach(&meta.id);
    let generation::Reading { mut records, .. } = generation::reader(state, meta, 0).await?;
    let mut view = new_view(meta, envelope);
    let mut events = Vec::new();
    while let Some(item) = records.next().await {
        let (_, record) = item.map_err(|e| ApiError::internal("reading a response", &e))?;
        view.record(&record, &mut events);
        events.clear();
    }
    drop(guard);
    Ok(Json(view.response()).into_response())
}

/// The SSE events of `meta`'s response after `after`, replayed then followed live.
async fn events(
    state: &AppState,
    principal: &Principal,
    meta: StreamMeta,
    envelope: Envelope,
    after: Option<u64>,
) -> Result<Response, ApiError> {
    let guard = state.live.attach(&meta.id);
    let mut options = body::options(state);
    options.hold = Some(state.hold(Held::Readers, principal).await?);
    if after.is_none() {
        // Every event: the reader renders the stream from its first record.
        let generation::Reading { records, ends_at } = generation::reader(state, &meta, 0).await?;
        options.shutdown = ends_at;
        let render = ResponseEvents::new(new_view(&meta, envelope), None);
        return Ok(body::response(meta.id, records, render, options, guard));
    }
    // What the log holds now is replayed into the prelude (so an `after` beyond it is
    // known before the response starts); the rest follows live.
    let mut prelude = Vec::new();
    let view = replay(state, &meta, envelope, after, &mut prelude).await?;
    // The last event's own number is fine (nothing left, or what follows live).
    if let Some(after) = after
        && after >= view.next_number()
    {
        return Err(ApiError::bad_request(
            "invalid_starting_after",
            format!(
                "starting_after: {after} is beyond the response's last event ({})",
                view.next_number().saturating_sub(1)
            ),
        ));
    }
    options.prelude = prelude;
    let generation::Reading { records, ends_at } =
        generation::reader(state, &meta, meta.last_seq).await?;
    options.shutdown = ends_at;
    let render = ResponseEvents::new(view, after);
    Ok(body::response(meta.id, records, render, options, guard))
}

/// Query of `GET /v1/responses/{id}`.
#[derive(Debug, Deserialize)]
pub struct RetrieveQuery {
    /// Stream the events instead of returning the object.
    stream: Option<bool>,
    /// With `stream`: only the events numbered above this. (Other parameters the SDKs
    /// send, `include_obfuscation` and `include[]`, are ignored.)
    starting_after: Option<u64>,
}

/// `GET /v1/responses/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RetrieveQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let (meta, envelope) = owned(&state, &principal, &id).await?;
    if query.stream != Some(true) {
        let mut ignored = Vec::new();
        let view = replay(&state, &meta, envelope, None, &mut ignored).await?;
        return Ok(Json(view.response()).into_response());
    }
    let after = match query.starting_after {
        Some(after) => Some(after),
        None => last_event_number(&headers)?,
    };
    events(&state, &principal, meta, envelope, after).await
}

/// A `Last-Event-ID` header: the number of the last event the client has.
fn last_event_number(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("\u{0}").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID must be a sequence_number this response sent",
        )
    })
}

/// `POST /v1/responses/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let (meta, envelope) = owned(&state, &principal, &id).await?;
    if !meta.state.is_terminal() {
        crate::http::streams::stop(&state, &meta).await?;
        wait_for_end(&state, &meta).await?;
    }
    let meta = state.log.status(meta.id).await?;
    let mut ignored = Vec::new();
    let view = replay(&state, &meta, envelope, None, &mut ignored).await?;
    Ok(Json(view.response()).into_response())
}

/// Wait (at most [`CANCEL_WAIT`]) until `meta`'s stream has ended.
async fn wait_for_end(state: &AppState, meta: &StreamMeta) -> Result<(), ApiError> {
    let mut records = state.log.read(meta.id, meta.last_seq).await?;
    let drained = async { while records.next().await.is_some() {} };
    let _ = tokio::time::timeout(CANCEL_WAIT, drained).await;
    Ok(())
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Chat)?;
    let (meta, _) = owned(&state, &principal, &id).await?;
    if !meta.state.is_terminal() {
        crate::http::streams::stop(&state, &meta).await?;
    }
    state
        .log
        .insert_idempotency_key(
            namespace::DELETED.into(),
            meta.id.to_string(),
            IdempotencyEntry {
                stream: meta.id,
                request_hash: Vec::new(),
            },
        )
        .await?;
    Ok(Json(json!({
        "id": response_id(meta.id),
        "object": "response",
        "deleted": true,
    }))
    .into_response())
}
