//! The simulator as an OpenAI-compatible HTTP server: what `unbroken simulate` runs, and
//! the fake upstream of the gateway's tests.
//!
//! `POST /v1/chat/completions` streams `chat.completion.chunk` events ending in
//! `data: [DONE]` (usage only when `stream_options.include_usage` asks for it, as OpenAI
//! does), or answers `stream: false` with one `chat.completion` object. A final assistant
//! message is taken as a prefix to continue (prefill). Refusals are OpenAI-shaped JSON
//! errors with `Retry-After` when configured; `fail_after` cuts the body mid-stream, with
//! no `[DONE]`. `GET /v1/models` lists the one model. The request counter of the
//! [`SimulatorProvider`] counts HTTP requests too.
//!
//! This is the benchmark's direct baseline, so the body writer batches every token that
//! is due into one reused buffer instead of allocating per token.

use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use super::answer::Answer;
use super::{SimulatorConfig, SimulatorProvider};
use crate::Continuation;
use crate::error::ProviderError;
use crate::request::ChatRequest;

/// The model name `GET /v1/models` lists (requests may name any model: it is echoed).
const MODEL_ID: &str = "simulator";

/// The simulator's routes for `config`. To keep a handle on the request counter, build a
/// [`SimulatorProvider`] and use [`SimulatorProvider::router`] instead.
pub fn router(config: SimulatorConfig) -> Router {
    SimulatorProvider::new(config).router()
}

/// Serve the simulator for `config` on `listener` until `shutdown` completes, then finish
/// the requests in flight.
///
/// # Errors
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    SimulatorProvider::new(config)
        .serve(listener, shutdown)
        .await
}

impl SimulatorProvider {
    /// The simulator's routes (`POST /v1/chat/completions`, `GET /v1/models`), sharing
    /// this provider's config and request counter.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .with_state(self.clone())
    }

    /// Serve [`router`](Self::router) on `listener` until `shutdown` completes, then
    /// finish the requests in flight.
    ///
    /// # Errors
    /// The listener's I/O errors.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "unbroken-simulator"}],
    }))
    .into_response()
}

async fn chat_completions(State(simulator): State<SimulatorProvider>, body: Bytes) -> Response {
    let mut request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("the request body is not a chat completion request: {error}");
            return error_response(StatusCode::BAD_REQUEST, &message, None);
        }
    };
    let stream = request
        .extra
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = request
        .extra
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if request.max_tokens.is_none() {
        request.max_tokens = request
            .extra
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    }
    if let Some(last) = request.messages.last().filter(|m| m.role == "assistant") {
        let flagged = last.extra.get("prefix") == Some(&Value::Bool(true));
        let continued = request.extra.get("continue_final_message") == Some(&Value::Bool(true));
        let refusal = match simulator.config.continuation {
            Continuation::None => Some("this model does not support assistant message prefill"),
            Continuation::AssistantMessage => None,
            Continuation::PrefixFlag if flagged => None,
            Continuation::PrefixFlag => {
                Some("a final assistant message is continued only with \"prefix\": true")
            }
            Continuation::ContinueFinalMessage if continued => None,
            Continuation::ContinueFinalMessage => Some(
                "a final assistant message is continued only with continue_final_message: true",
            ),
        };
        if let Some(message) = refusal {
            return error_response(StatusCode::BAD_REQUEST, message, None);
        }
        request.assistant_prefix = request.messages.pop().map(|m| m.text());
    }

    let (number, answer) = match simulator.begin(&request) {
        Ok(begun) => begun,
        Err(error) => return provider_error_response(&error),
    };
    let reply = Reply {
        id: format!("chatcmpl-sim-{number}"),
        model: request.model,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        answer,
    };
    if stream {
        streaming(simulator, reply, include_usage)
    } else {
        complete(simulator, reply).await
    }
}

/// What every response to one request shares.
struct Reply {
    id: String,
    model: String,
    created: u64,
    answer: Answer,
}

/// `stream: false`: wait as long as the stream would take, then answer in one object.
async fn complete(simulator: SimulatorProvider, reply: Reply) -> Response {
    let tokens = reply.answer.pieces.len();
    let total: Duration = (0..tokens).filter_map(|i| simulator.delay(i)).sum();
    if !total.is_zero() {
        tokio::time::sleep(total).await;
    }
    if simulator
        .config
        .fail_after
        .is_some_and(|n| (n as usize) < tokens)
    {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated failure mid-answer",
            None,
        );
    }
    let completion_tokens = tokens as u64;
    axum::Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.answer.pieces.concat()},
            "finish_reason": reply.answer.finish,
        }],
        "usage": {
            "prompt_tokens": reply.answer.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": reply.answer.prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

/// `stream: true`: an event stream paced by the config.
fn streaming(simulator: SimulatorProvider, reply: Reply, include_usage: bool) -> Response {
    let state = BodyState {
        simulator,
        reply,
        include_usage,
        next: 0,
        phase: Phase::Start,
        buf: Vec::with_capacity(4096),
    };
    let body = Body::from_stream(futures_util::stream::unfold(state, BodyState::step));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct BodyState {
    simulator: SimulatorProvider,
    reply: Reply,
    include_usage: bool,
    next: usize,
    phase: Phase,
    buf: Vec<u8>,
}

enum Phase {
    /// The role chunk is not written yet.
    Start,
    Tokens,
    /// The next poll breaks the body.
    Failing,
    Ended,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl BodyState {
    /// Write everything that is due now — after one pause at most — as one body frame.
    async fn step(mut self) -> Option<(Result<Bytes, io::Error>, Self)> {
        match self.phase {
            Phase::Ended => return None,
            Phase::Failing => {
                // Let hyper flush what was sent before the cut: it drops its write buffer
                // when the body fails, and flushes when the body is not ready.
                tokio::task::yield_now().await;
                self.phase = Phase::Ended;
                let error = io::Error::other("simulated failure: the stream is cut");
                return Some((Err(error), self));
            }
            Phase::Start | Phase::Tokens => {}
        }
        let tokens = self.reply.answer.pieces.len();
        if self.next < tokens {
            if let Some(delay) = self.simulator.delay(self.next) {
                tokio::time::sleep(delay).await;
            }
        }
        self.buf.clear();
        if let Phase::Start = self.phase {
            self.phase = Phase::Tokens;
            self.write_chunk(Some("assistant"), Some(""), None, None);
        }
        let fail_after = self.simulator.config.fail_after.map(|n| n as usize);
        loop {
            if self.next == tokens {
                let finish = self.reply.answer.finish;
                self.write_chunk(None, None, Some(finish), None);
                if self.include_usage {
                    let prompt_tokens = self.reply.answer.prompt_tokens;
                    let completion_tokens = tokens as u64;
                    let usage = UsageOut {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    };
                    self.write_chunk(None, None, None, Some(usage));
                }
                self.buf.extend_from_slice(b"data: [DONE]\n\n");
                self.phase = Phase::Ended;
                break;
            }
            if fail_after.is_some_and(|n| self.next >= n) {
                self.phase = Phase::Failing;
                break;
            }
            let piece = std::mem::take(&mut self.reply.answer.pieces[self.next]);
            self.write_chunk(None, Some(&piece), None, None);
            self.next += 1;
            if self.next < tokens && self.simulator.delay(self.next).is_some() {
                break;
            }
        }
        let frame = Bytes::copy_from_slice(&self.buf);
        Some((Ok(frame), self))
    }

    /// Append one `data:` event. Compact JSON has no line breaks, so it is one data line
    /// and can be serialised straight into the buffer.
    fn write_chunk(
        &mut self,
        role: Option<&'static str>,
        content: Option<&str>,
        finish_reason: Option<&str>,
        usage: Option<UsageOut>,
    ) {
        let choice;
        let choices: &[ChunkChoice<'_>] = if usage.is_some() {
            &[]
        } else {
            choice = [ChunkChoice {
                index: 0,
                delta: ChunkDelta { role, content },
                finish_reason,
            }];
            &choice
        };
        let chunk = Chunk {
            id: &self.reply.id,
            object: "chat.completion.chunk",
            created: self.reply.created,
            model: &self.reply.model,
            choices,
            usage,
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(b"data: ");
        if serde_json::to_writer(&mut self.buf, &chunk).is_err() {
            self.buf.truncate(start);
            return;
        }
        self.buf.extend_from_slice(b"\n\n");
    }
}

/// A refusal as the upstream would send it: the status, an OpenAI-shaped JSON error and
/// `Retry-After` when configured.
fn provider_error_response(error: &ProviderError) -> Response {
    match error {
        ProviderError::Status {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error_response(status, "simulated error", *retry_after)
        }
        ProviderError::Rejected {
            status, message, ..
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            error_response(status, message, None)
        }
        other => error_response(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string(), None),
    }
}

fn error_response(status: StatusCode, message: &str, retry_after: Option<Duration>) -> Response {
    let (kind, code) = match status.as_u16() {
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(after) = retry_after {
        if let Ok(value) = HeaderValue::from_str(&after.as_secs().to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}
