//! [`Chat`]: one streamed chat completion through an unbroken gateway, resumed across
//! drops.
//!
//! The POST carries an `Idempotency-Key`, so repeating it after a failure before any
//! response attaches to the same generation instead of paying for a second one. Once the
//! gateway names the stream (`Unbroken-Stream-Id`), every later attempt is a
//! `GET /v1/streams/{id}` with `Last-Event-ID`. The chat ends at `[DONE]` or at an error
//! event — a connection that simply ends is resumed, never taken for the end of the answer.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde_json::Value;

use crate::error::ClientError;
use crate::policy::Policy;
use crate::source::{EventSource, Request, State, Update};

/// The header naming the stream.
pub const STREAM_ID_HEADER: &str = "unbroken-stream-id";

/// One piece of a chat answer, or news about the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The gateway named the stream (once, when known).
    Started {
        /// The stream id, for `unbroken listen` or a later resume.
        stream_id: String,
    },
    /// Answer text.
    Text(String),
    /// Token counts.
    Usage {
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Generated tokens.
        completion_tokens: u64,
    },
    /// The answer finished normally.
    Finish {
        /// `stop`, `length`, …
        reason: String,
    },
    /// The answer failed (or was cancelled) on the server.
    Error {
        /// A stable code (`cancelled`, `upstream_interrupted`, …).
        code: String,
        /// What happened.
        message: String,
    },
    /// The connection's state changed.
    State(State),
}

/// A streamed chat completion: a `Stream` of [`ChatEvent`]s ending after the finish
/// (`[DONE]`) or an error event.
pub struct Chat {
    inner: BoxStream<'static, Result<ChatEvent, ClientError>>,
    stream_id: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("stream_id", &self.stream_id())
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// Start a chat completion: POST `body` (an OpenAI request; `stream` is forced on) to
    /// `{base_url}/v1/chat/completions`.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] for a bad URL or API key.
    pub fn start(
        base_url: &str,
        mut body: Value,
        api_key: Option<&str>,
        policy: Policy,
    ) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        body["stream"] = Value::Bool(true);
        // The usage chunk (after the finish, `choices: []`) comes only when asked for.
        if !body["stream_options"].is_object() {
            body["stream_options"] = Value::Object(serde_json::Map::new());
        }
        body["stream_options"]["include_usage"] = Value::Bool(true);
        let payload = serde_json::to_vec(&body)
            .map_err(|e| ClientError::InvalidRequest(format!("request body: {e}")))?;
        let key = format!("chat-{:032x}", rand::random::<u128>());
        let mut request = Request::post(&format!("{base}/v1/chat/completions"), payload)?
            .header("content-type", "application/json")?
            .header("idempotency-key", &key)?;
        if let Some(api_key) = api_key {
            request = request.header("authorization", &format!("Bearer {api_key}"))?;
        }
        let stream_id = Arc::new(Mutex::new(None::<String>));
        let seen = Arc::clone(&stream_id);
        let auth = api_key.map(str::to_owned);
        request.resume_with = Some(Arc::new(move |headers: &http::HeaderMap| {
            let id = headers.get(STREAM_ID_HEADER)?.to_str().ok()?.to_owned();
            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(id.clone());
            let mut resume = Request::get(&format!("{base}/v1/streams/{id}")).ok()?;
            if let Some(auth) = &auth {
                resume = resume
                    .header("authorization", &format!("Bearer {auth}"))
                    .ok()?;
            }
            Some(resume)
        }));
        let source = EventSource::new(request, policy)?;
        let announce = Arc::clone(&stream_id);
        let state = ChatState {
            source,
            announced: false,
            stream_id: announce,
            ended: false,
        };
        let inner = stream::unfold(state, |mut state| async move {
            let item = state.next_event().await?;
            Some((item, state))
        })
        .boxed();
        Ok(Self { inner, stream_id })
    }

    /// The stream id, once the gateway has named it.
    pub fn stream_id(&self) -> Option<String> {
        self.stream_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Stream for Chat {
    type Item = Result<ChatEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct ChatState {
    source: EventSource,
    announced: bool,
    stream_id: Arc<Mutex<Option<String>>>,
    ended: bool,
}

impl ChatState {
    async fn next_event(&mut self) -> Option<Result<ChatEvent, ClientError>> {
        loop {
            if self.ended {
                return None;
            }
            if !self.announced
                && let Some(id) = self
                    .stream_id
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            {
                self.announced = true;
                return Some(Ok(ChatEvent::Started { stream_id: id }));
            }
            let update = match self.source.next().await? {
                Ok(update) => update,
                Err(error) => {
                    self.ended = true;
                    return Some(Err(error));
                }
            };
            match update {
                Update::State(state) => return Some(Ok(ChatEvent::State(state))),
                Update::Retry(_) => {}
                Update::Event(event) => {
                    if event.data == "[DONE]" {
                        self.ended = true;
                        return None;
                    }
                    if let Some(item) = self.parse(&event.data) {
                        return Some(Ok(item));
                    }
                }
            }
        }
    }

    /// One chunk's meaning. A chunk carries one of content, finish or usage here (the
    /// gateway renders one record per chunk); other servers' combined chunks still
    /// yield their content.
    fn parse(&mut self, data: &str) -> Option<ChatEvent> {
        let chunk: Value = serde_json::from_str(data).ok()?;
        if let Some(error) = chunk.get("error") {
            self.ended = true;
            return Some(ChatEvent::Error {
                code: error["code"].as_str().unwrap_or("error").to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["content"].as_str()
            && !text.is_empty()
        {
            return Some(ChatEvent::Text(text.to_owned()));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            return Some(ChatEvent::Finish {
                reason: reason.to_owned(),
            });
        }
        let usage = chunk.get("usage")?;
        Some(ChatEvent::Usage {
            prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        })
    }
}

/// Ask the gateway to stop stream `id` (the stop button).
///
/// # Errors
/// Connection errors, or a status other than 200/202.
pub async fn cancel(base_url: &str, id: &str, api_key: Option<&str>) -> Result<(), ClientError> {
    let url = format!("{}/v1/streams/{id}/cancel", base_url.trim_end_matches('/'));
    let mut request = http_client()?.post(url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(ClientError::Connect)?;
    match response.status().as_u16() {
        200 | 202 => Ok(()),
        status => Err(ClientError::Status {
            status,
            message: crate::error::message_of(response, Duration::from_secs(5)).await,
            retry_after: None,
            retryable: false,
        }),
    }
}

/// A plain HTTP client for one-off calls (cancel, model list), with TLS set up.
///
/// # Errors
/// [`ClientError::InvalidRequest`] when the client cannot be built.
pub fn http_client() -> Result<reqwest::Client, ClientError> {
    crate::source::install_crypto_provider();
    reqwest::Client::builder()
        .build()
        .map_err(|e| ClientError::InvalidRequest(e.to_string()))
}
