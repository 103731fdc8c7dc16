//! `POST /v1/chat/completions`: validate, start a detached generation, answer as a reader.
//!
//! The handler never writes to the log itself: it creates the stream, hands the
//! generation to a supervisor task, waits for the first delta ("peek before commit": an
//! upstream failure before it becomes a real status), and then answers as a reader from
//! seq 0 — streaming, or assembled into one `chat.completion` when `stream` is false. An
//! `Idempotency-Key` seen before from the same principal attaches to the stream it
//! started instead of asking the upstream again.

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use providers::ChatRequest;
use serde_json::Value;
use streamlog::{Record, StreamId, StreamMeta};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::generation::{self, Begun, Start};
use crate::http::body::{self, STREAM_ID_HEADER};
use crate::http::extract::body_error;
use crate::http::render::OpenAiChunks;
use crate::limits::Held;
use crate::state::AppState;

/// A validated request.
pub struct ChatCall {
    /// The client-facing model name.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the stream ends with a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// What adapters receive.
    pub request: ChatRequest,
}

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.admit_answer(&principal).await?;
    let body = body.map_err(|rejection| body_error(&rejection, state.server.max_body_bytes))?;
    let call = parse(&body)?;
    let model = state.models.get(&call.model).cloned().ok_or_else(|| {
        ApiError::not_found(
            "model_not_found",
            format!("the model {:?} does not exist", call.model),
        )
    })?;
    let idempotency_key = idempotency_key(&headers)?;
    if state.shutdown.is_raised() {
        return Err(ApiError::unavailable("the gateway is shutting down"));
    }
    // A stream's headers go out at its first token, or once a heartbeat period passed
    // without one (a slow first token, a queue): then heartbeats keep load balancers from
    // cutting the silent connection, and a later failure arrives as an error event.
    let start = Start {
        principal: principal.as_str().to_owned(),
        model,
        request: call.request.clone(),
        body,
        idempotency_key,
        commit_after: call.stream.then(|| state.server.heartbeat_interval()),
        hold: Some(state.hold(Held::Streams, &principal).await?),
        reader_grace: None,
    };
    let (meta, serving) = match generation::start(&state, start).await? {
        Begun::New(meta, serving) => (meta, serving),
        Begun::Existing(meta) => (meta, None),
    };
    let mut response = answer(&state, &principal, meta, &call).await?;
    if let Some(value) = serving.and_then(|name| HeaderValue::from_str(&name).ok()) {
        response.headers_mut().insert(TARGET_HEADER, value);
    }
    Ok(response)
}

/// The response header naming the target that serves an answer.
pub const TARGET_HEADER: &str = "unbroken-target";

/// Answer as a reader of `meta`'s stream from its start.
async fn answer(
    state: &AppState,
    principal: &Principal,
    meta: StreamMeta,
    call: &ChatCall,
) -> Result<Response, ApiError> {
    let guard = state.live.attach(&meta.id);
    let generation::Reading { records, ends_at } = generation::reader(state, &meta, 0).await?;
    if call.stream {
        let render = OpenAiChunks::new(
            meta.id,
            meta.created_ms / 1000,
            &call.model,
            0,
            false,
            call.include_usage,
        );
        let mut options = body::options(state);
        options.hold = Some(state.hold(Held::Readers, principal).await?);
        options.shutdown = ends_at;
        return Ok(body::response(meta.id, records, render, options, guard));
    }
    let completion = assemble(meta.id, meta.created_ms / 1000, &call.model, records).await;
    drop(guard);
    let mut response = match completion {
        Ok(completion) => axum::Json(completion).into_response(),
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&meta.id.to_string()) {
        response.headers_mut().insert(STREAM_ID_HEADER, value);
    }
    Ok(response)
}

/// Read a whole stream into one `chat.completion` object.
async fn assemble(
    id: StreamId,
    created: u64,
    model: &str,
    mut records: streamlog::RecordStream,
) -> Result<Value, ApiError> {
    let mut model = model.to_owned();
    let mut content = String::new();
    let mut tool_calls: Vec<Value> = Vec::new();
    let mut usage = None;
    let mut finish = None;
    while let Some(item) = records.next().await {
        let (_, record) = item.map_err(|e| ApiError::internal("reading a stream", &e))?;
        match record {
            Record::Text { text } => content.push_str(&text),
            Record::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let index = index as usize;
                while tool_calls.len() <= index {
                    tool_calls.push(serde_json::json!({
                        "id": "", "type": "function", "function": { "name": "", "arguments": "" }
                    }));
                }
                let call = &mut tool_calls[index];
                if let Some(id) = id {
                    call["id"] = Value::String(id);
                }
                if let Some(name) = name {
                    call["function"]["name"] = Value::String(name);
                }
                let so_far = call["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                call["function"]["arguments"] = Value::String(so_far + &arguments);
            }
            Record::Upstream { model: serving, .. } => model = serving,
            Record::Usage {
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                usage = Some(serde_json::json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens.saturating_add(completion_tokens),
                }));
            }
            Record::Finish { reason } => finish = Some(reason),
            Record::Error { code, message } => {
                return Err(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    kind: "upstream_error",
                    code: if code == "cancelled" || code == "interrupted" {
                        code.into()
                    } else {
                        "upstream_error".into()
                    },
                    message,
                    retry_after: None,
                });
            }
            _ => {}
        }
    }
    let Some(finish) = finish else {
        return Err(ApiError::unavailable(
            "the answer is not finished; resume it from /v1/streams/{id}",
        ));
    };
    let mut message = serde_json::json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let mut completion = serde_json::json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
    });
    if let Some(usage) = usage {
        completion["usage"] = usage;
    }
    Ok(completion)
}

/// The `Idempotency-Key` header, if any (1 to 255 visible ASCII characters).
///
/// # Errors
/// 400 `invalid_idempotency_key`.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Validate the body, naming the field at fault.
///
/// # Errors
/// 400 `invalid_json` or `invalid_request` naming the field.
pub fn parse(body: &[u8]) -> Result<ChatCall, ApiError> {
    crate::http::budget::check(body)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(mut object) = value else {
        return Err(field_error("body", "must be a JSON object"));
    };
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(_) => return Err(field_error("model", "must be a non-empty string")),
        None => return Err(field_error("model", "is required")),
    };
    match object.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => {
            for (i, message) in messages.iter().enumerate() {
                check_message(i, message)?;
            }
        }
        Some(_) => return Err(field_error("messages", "must be a non-empty array")),
        None => return Err(field_error("messages", "is required")),
    }
    if object.contains_key(crate::responses::ENVELOPE_KEY) {
        return Err(field_error(
            crate::responses::ENVELOPE_KEY,
            "is reserved for the gateway's own use",
        ));
    }
    let stream = match object.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => stream,
        Some(_) => return Err(field_error("stream", "must be a boolean")),
    };
    let include_usage = include_usage(object.remove("stream_options"))?;
    whole_numbers(&mut object);
    for (field, check) in [
        ("temperature", Value::is_number as fn(&Value) -> bool),
        ("top_p", Value::is_number),
        ("max_tokens", Value::is_u64),
        ("max_completion_tokens", Value::is_u64),
        ("seed", Value::is_u64),
        ("n", Value::is_u64),
    ] {
        if let Some(value) = object.get(field)
            && !value.is_null()
            && !check(value)
        {
            return Err(field_error(field, "has the wrong type"));
        }
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if object
            .get(field)
            .and_then(Value::as_u64)
            .is_some_and(|n| !(1..=u64::from(u32::MAX)).contains(&n))
        {
            return Err(field_error(field, "must be from 1 to 4294967295"));
        }
    }
    if object
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return Err(field_error("n", "must be 1 (one choice per answer)"));
    }
    let request = generation::adapter_request(object)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    Ok(ChatCall {
        model,
        stream,
        include_usage,
        request,
    })
}

/// Whole numbers sent as floats (`5.0`) are whole numbers, as JSON Schema counts them:
/// the integer fields of a request are stored as integers.
pub fn whole_numbers(object: &mut serde_json::Map<String, Value>) {
    for field in ["max_tokens", "max_completion_tokens", "seed", "n"] {
        if let Some(value) = object.get_mut(field)
            && let Some(n) = crate::http::extract::whole_number(value)
        {
            *value = Value::from(n);
        }
    }
}

/// `stream_options.include_usage` (false when absent).
fn include_usage(options: Option<Value>) -> Result<bool, ApiError> {
    match options {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(include)) => Ok(*include),
            Some(_) => Err(field_error(
                "stream_options.include_usage",
                "must be a boolean",
            )),
        },
        Some(_) => Err(field_error("stream_options", "must be an object")),
    }
}

/// The roles of Chat Completions messages.
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// One message: a known role, and content where the role needs it (an assistant's turn
/// may carry tool calls instead).
fn check_message(i: usize, message: &Value) -> Result<(), ApiError> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let Value::Object(message) = message else {
        return Err(field_error(&format!("messages[{i}]"), "must be an object"));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) if ROLES.contains(&role.as_str()) => role.as_str(),
        Some(Value::String(_)) => {
            return Err(field_error(
                &field("role"),
                "must be one of system, developer, user, assistant, tool, function",
            ));
        }
        _ => return Err(field_error(&field("role"), "must be a string")),
    };
    match message.get("content") {
        Some(Value::String(_) | Value::Array(_)) => Ok(()),
        None | Some(Value::Null)
            if role == "assistant"
                && (message.contains_key("tool_calls")
                    || message.contains_key("function_call")) =>
        {
            Ok(())
        }
        None | Some(Value::Null) => Err(field_error(&field("content"), "is required")),
        Some(_) => Err(field_error(
            &field("content"),
            "must be a string or an array of content parts",
        )),
    }
}

fn field_error(field: &str, problem: &str) -> ApiError {
    ApiError::bad_request("invalid_request", format!("{field} {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_request_parses() {
        let call = parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"tools":[]}"#).unwrap();
        assert_eq!(call.model, "m");
        assert!(call.stream);
        assert!(call.request.extra.contains_key("tools"));
        assert!(!call.request.extra.contains_key("stream"));
        assert!(!call.request.extra.contains_key("stream_options"));
    }

    #[test]
    fn an_assistant_turn_may_carry_tool_calls_instead_of_content() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}]}"#;
        assert!(parse(body).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 16] = [
            (b"{", "not valid JSON"),
            (b"[]", "body must be a JSON object"),
            (
                br#"{"messages":[{"role":"user","content":"x"}]}"#,
                "model is required",
            ),
            (br#"{"model":"m"}"#, "messages is required"),
            (
                br#"{"model":"m","messages":[]}"#,
                "messages must be a non-empty array",
            ),
            (
                br#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream must be a boolean",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature has the wrong type",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5000000000}"#,
                "max_tokens must be from 1",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":0}"#,
                "max_completion_tokens must be from 1",
            ),
            (
                br#"{"model":"m","messages":[{"role":"bogus","content":"x"}]}"#,
                "messages[0].role must be one of",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"user"}]}"#,
                "messages[1].content is required",
            ),
            (
                br#"{"model":"m","messages":[{"role":"assistant","content":null}]}"#,
                "messages[0].content is required",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content must be a string or an array",
            ),
            (br#"{"model":"m","messages":["hi"]}"#, "messages[0] must be an object"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                "n must be 1",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body).err().unwrap();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(
                error.message.contains(expected),
                "{} vs {expected}",
                error.message
            );
        }
    }
}
