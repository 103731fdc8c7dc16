//! The publish/subscribe hub: topics, and tasks with progress (A2A-style).
//!
//! Both are streams in the log, so subscribers get resume, durability and backpressure
//! like every reader: a slow subscriber reads from the log at its own pace and never holds
//! up the others.
//!
//! - A topic is a global stream named by the topic; `POST /v1/topics/{topic}/events`
//!   appends `{event, data}` records, `GET /v1/topics/{topic}` subscribes (live only by
//!   default, `?from=earliest`, or after `Last-Event-ID`).
//! - A task is a stream owned by its creator: `progress` records, then `completed` or
//!   `failed`, which ends it. `GET /v1/tasks/{id}/events` first sends a `task_status`
//!   snapshot, then live progress, then the terminal event.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use streamlog::{LogError, NewStream, Record, StreamId, StreamKind, StreamMeta, StreamState};

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::http::body;
use crate::http::extract::{ApiPath, ApiQuery, body_error, last_event_id, whole_number};
use crate::http::named;
use crate::http::render::Events;
use crate::limits::Held;
use crate::state::AppState;
use crate::writers::namespace;

/// The body as a JSON object or array; an empty body is `{}` (nothing to say).
fn json_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| body_error(&rejection, limit))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    crate::http::budget::check(&body)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    if !(value.is_object() || value.is_array()) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// The body as a JSON object (`{}` when empty).
fn object_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, ApiError> {
    let value = json_body(body, limit)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ))
    }
}

fn write_error(error: LogError) -> ApiError {
    match error {
        LogError::AlreadyFinished { .. } => {
            ApiError::conflict("invalid_transition", "it has already ended")
        }
        LogError::LeaseHeld { .. } => {
            ApiError::conflict("busy", "another node is writing it; retry")
        }
        other => other.into(),
    }
}

// ---------------------------------------------------------------- topics

/// The topic `name`, which belongs to the system (not to whoever named it first): with
/// `create`, made on first use (a publish); without, 404 when nobody published to it yet.
async fn topic(state: &AppState, name: &str, create: bool) -> Result<StreamMeta, ApiError> {
    if !named::valid_name(name) {
        return Err(ApiError::bad_request(
            "invalid_topic",
            "a topic name is 1 to 128 of A-Z a-z 0-9 _ -",
        ));
    }
    let meta = named::find_or_create(
        state,
        namespace::TOPIC.into(),
        name,
        StreamKind::Topic,
        (namespace::SYSTEM, state.topics.max_topics),
        create,
    )
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "topic_not_found",
            "no such topic: nothing was published to it",
        )
    })?;
    state
        .known_topics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(meta.id);
    Ok(meta)
}

/// Apply `[topics]` retention to every topic this node has served, every
/// `retention_interval_ms`, until `shutdown`.
pub async fn retention(state: AppState, shutdown: crate::signal::Signal) {
    let every = std::time::Duration::from_millis(state.topics.retention_interval_ms);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.raised() => return,
            _ = ticker.tick() => retention_pass(&state).await,
        }
    }
}

/// One retention pass over the topics this node has served: keep at most `max_events`
/// events of each, none older than `max_age_s`.
pub async fn retention_pass(state: &AppState) {
    let trim = streamlog::Trim {
        max_records: Some(state.topics.max_events),
        max_age: Some(std::time::Duration::from_secs(state.topics.max_age_s)),
        ..streamlog::Trim::default()
    };
    let topics: Vec<StreamId> = state
        .known_topics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    for id in topics {
        if let Err(error) = state.log.trim(id, trim).await {
            tracing::warn!(%error, topic = %id, "topic retention failed");
        }
    }
}

/// Check that `body[field]`, if present and not null, is a whole number, and store it as
/// an integer (`5.0` becomes `5`).
fn optional_whole(body: &mut Value, field: &str) -> Result<(), ApiError> {
    let Some(value) = body.get_mut(field) else {
        return Ok(());
    };
    if value.is_null() {
        return Ok(());
    }
    let n = whole_number(value).ok_or_else(|| {
        ApiError::bad_request("invalid_request", format!("{field} must be a whole number"))
    })?;
    *value = Value::from(n);
    Ok(())
}

fn single_line(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > 256 || value.contains(['\r', '\n', '\0']) {
        return Err(ApiError::bad_request(
            "invalid_event",
            format!("{field} must be 1 to 256 characters without CR, LF or NUL"),
        ));
    }
    Ok(())
}

/// `POST /v1/topics/{topic}`: create the topic (idempotent), so subscribers can attach
/// before the first publish. 201 when created, 200 when it existed.
pub async fn create_topic(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    may_publish(&state, &principal)?;
    let existed = topic(&state, &name, false).await.is_ok();
    let meta = topic(&state, &name, true).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({ "topic": name, "id": meta.last_seq.to_string() })),
    )
        .into_response())
}

/// 413 when `record` is over `[store] max_record_bytes`, serialised as stored: every
/// reader of the stream holds it in memory at some point, and so does the log's tail.
fn check_size(state: &AppState, record: &Record, index: Option<usize>) -> Result<(), ApiError> {
    let size = record.to_json().map_or(usize::MAX, |json| json.len());
    if size > state.max_record_bytes {
        return Err(ApiError::record_too_large(index, state.max_record_bytes));
    }
    Ok(())
}

/// Whether `principal` is one of `[topics] publishers` (when the list is set).
fn may_publish(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    if !state.publishers.is_empty() && !state.publishers.contains(principal.as_str()) {
        return Err(ApiError::forbidden(
            "not_a_publisher",
            "these credentials may subscribe but not publish",
        ));
    }
    Ok(())
}

/// `POST /v1/topics/{topic}/events`: `{event, data, id?}` or an array of them.
pub async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    may_publish(&state, &principal)?;
    let body = json_body(body, state.server.max_body_bytes)?;
    let items = match body {
        Value::Array(items) if !items.is_empty() && items.len() <= 1000 => items,
        Value::Array(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "send 1 to 1000 events",
            ));
        }
        single => vec![single],
    };
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!("events[{i}] must be an object {{\"event\", \"data\", \"id\"?}}"),
            ));
        }
        let event = match item.get("event") {
            None => "message",
            Some(Value::String(event)) => event.as_str(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_event",
                    format!("events[{i}].event must be a string"),
                ));
            }
        };
        if item.get("data").is_none_or(Value::is_null) {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!("events[{i}].data is required (any JSON but null)"),
            ));
        }
        single_line(&format!("events[{i}].event"), event)?;
        let mut data = item.get("data").cloned().unwrap_or(Value::Null);
        if let Some(id) = item.get("id") {
            let id = id.as_str().ok_or_else(|| {
                ApiError::bad_request("invalid_event", format!("events[{i}].id must be a string"))
            })?;
            single_line(&format!("events[{i}].id"), id)?;
            // The stream's own ids (seq) drive resume; the publisher's id travels along.
            data = json!({ "id": id, "data": data });
        }
        let record = Record::Custom {
            event: event.to_owned(),
            data,
        };
        check_size(&state, &record, Some(i))?;
        records.push(record);
    }
    let count = records.len() as u64;
    let meta = topic(&state, &name, true).await?;
    let last = state
        .writers
        .append(state.log.as_ref(), &state.node, meta.id, records, None)
        .await
        .map_err(write_error)?;
    let first = last + 1 - count;
    Ok(
        Json(json!({ "topic": name, "id": last.to_string(), "first": first.to_string() }))
            .into_response(),
    )
}

/// Query of a subscription.
#[derive(Debug, Deserialize)]
pub struct SubscribeQuery {
    /// `earliest` replays everything kept.
    from: Option<String>,
}

/// `GET /v1/topics/{topic}`: subscribe.
pub async fn subscribe(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<SubscribeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::Subscribe)?;
    let meta = topic(&state, &name, false).await?;
    let otherwise = match query.from.as_deref() {
        Some("earliest") => meta.first_seq.saturating_sub(1),
        None | Some("latest") => meta.last_seq,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "from must be earliest or latest",
            ));
        }
    };
    let (after, reset) =
        named::start(&headers, &meta, otherwise, meta.first_seq.saturating_sub(1))?;
    let mut options = body::options(&state);
    options.hold = Some(state.hold(Held::Readers, &principal).await?);
    if reset {
        named::reset_event(&mut options.prelude);
    }
    let records = state.log.read(meta.id, after).await?;
    let guard = state.live.attach(&meta.id);
    let render = Events::with_epoch(named::epoch(meta.id));
    Ok(body::response(meta.id, records, render, options, guard))
}

// ---------------------------------------------------------------- tasks

async fn task(state: &AppState, principal: &Principal, id: &str) -> Result<StreamMeta, ApiError> {
    let not_found = || ApiError::not_found("task_not_found", "no such task");
    let id: StreamId = id.parse().map_err(|_| not_found())?;
    let meta = state.log.status(id).await.map_err(|e| match e {
        LogError::NotFound(_) => not_found(),
        other => other.into(),
    })?;
    if meta.owner != principal.as_str() || meta.kind != StreamKind::Task {
        return Err(not_found());
    }
    Ok(meta)
}

/// `POST /v1/tasks` {title?, total?} → 201 {taskId}.
pub async fn create_task(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    let body = json_body(body, state.server.max_body_bytes)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    let mut body = body;
    optional_whole(&mut body, "total")?;
    if body
        .get("title")
        .is_some_and(|t| !t.is_string() && !t.is_null())
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "title must be a string",
        ));
    }
    crate::idle::check_quota(
        state.log.as_ref(),
        principal.as_str(),
        StreamKind::Task,
        state.task_limits.max_open_per_principal,
    )
    .await?;
    let id = StreamId::new();
    state
        .log
        .create(NewStream {
            id,
            owner: principal.as_str().to_owned(),
            kind: StreamKind::Task,
            request: Bytes::from(body.to_string()),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "taskId": id.to_string() })),
    )
        .into_response())
}

async fn report(
    state: &AppState,
    principal: &Principal,
    id: &str,
    record: Record,
    end: Option<StreamState>,
) -> Result<Response, ApiError> {
    check_size(state, &record, None)?;
    let meta = task(state, principal, id).await?;
    if meta.state.is_terminal() {
        return Err(ApiError::conflict(
            "invalid_transition",
            "the task has already ended",
        ));
    }
    let seq = state
        .writers
        .append(state.log.as_ref(), &state.node, meta.id, vec![record], end)
        .await
        .map_err(write_error)?;
    Ok(Json(json!({ "taskId": id, "id": seq.to_string() })).into_response())
}

/// `POST /v1/tasks/{id}/progress` {step, total?, message?}.
pub async fn progress(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    let body = json_body(body, state.server.max_body_bytes)?;
    let mut body = body;
    let Some(step) = body.get("step").and_then(whole_number) else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "step must be a whole number",
        ));
    };
    optional_whole(&mut body, "total")?;
    if body
        .get("message")
        .is_some_and(|m| !m.is_string() && !m.is_null())
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "message must be a string",
        ));
    }
    let data = json!({
        "step": step,
        "total": body.get("total").cloned().unwrap_or(Value::Null),
        "message": body.get("message").cloned().unwrap_or(Value::Null),
    });
    report(&state, &principal, &id, Record::Progress { data }, None).await
}

/// `POST /v1/tasks/{id}/complete` {result}.
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    end_task(
        &state,
        &principal,
        &id,
        body,
        ("completed", "result"),
        StreamState::Finished,
    )
    .await
}

/// `POST /v1/tasks/{id}/fail` {error}.
pub async fn fail(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Publish)?;
    end_task(
        &state,
        &principal,
        &id,
        body,
        ("failed", "error"),
        StreamState::Failed,
    )
    .await
}

/// Append the terminal `event` carrying the body's `field`, and end the task.
async fn end_task(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    (event, field): (&str, &str),
    end: StreamState,
) -> Result<Response, ApiError> {
    let body = object_body(body, state.server.max_body_bytes)?;
    let data = json!({ field: body.get(field).cloned().unwrap_or(Value::Null) });
    let record = Record::Custom {
        event: event.into(),
        data,
    };
    report(state, principal, id, record, Some(end)).await
}

/// `GET /v1/tasks/{id}/events`: snapshot, live progress, terminal event.
pub async fn task_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::Subscribe)?;
    let meta = task(&state, &principal, &id).await?;
    let records = crate::generation::records_until(&*state.log, meta.id, meta.last_seq).await?;
    let total = serde_json::from_slice::<Value>(&meta.request)
        .ok()
        .and_then(|request| request.get("total").cloned())
        .unwrap_or(Value::Null);
    let mut snapshot = json!({ "taskId": id, "status": "submitted", "step": 0, "total": total });
    for record in &records {
        match record {
            Record::Progress { data } => {
                snapshot["status"] = "working".into();
                snapshot["step"] = data["step"].clone();
                if !data["total"].is_null() {
                    snapshot["total"] = data["total"].clone();
                }
            }
            Record::Custom { event, .. } if event == "completed" || event == "failed" => {
                snapshot["status"] = Value::String(event.clone());
            }
            _ => {}
        }
    }
    let after = if headers.contains_key("last-event-id") {
        last_event_id(&headers, None)?
    } else if meta.state.is_terminal() {
        meta.last_seq.saturating_sub(1) // the terminal event comes with the snapshot
    } else {
        meta.last_seq
    };
    if after > meta.last_seq {
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID is beyond the task's last event",
        ));
    }
    if meta.state.is_terminal() && after == meta.last_seq {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut options = body::options(&state);
    options.hold = Some(state.hold(Held::Readers, &principal).await?);
    let _ = sse::write_event(
        &mut options.prelude,
        Some("task_status"),
        None,
        &snapshot.to_string(),
    );
    let reader = state.log.read(meta.id, after).await?;
    let guard = state.live.attach(&meta.id);
    Ok(body::response(
        meta.id,
        reader,
        Events::default(),
        options,
        guard,
    ))
}
