//! Reading a streaming Chat Completions response: SSE events in, [`Delta`]s out.
//!
//! Each `data:` event holds one `chat.completion.chunk`. `choices[0].delta.content` becomes
//! [`Delta::Text`], `delta.tool_calls[]` become [`Delta::ToolCall`]s. OpenAI sends the
//! finish reason first and the usage in a later chunk with empty `choices`, then
//! `data: [DONE]`; so the finish reason is held back and emitted last, after the usage,
//! when `[DONE]` or the end of the body arrives. A body that ends, breaks or reports an
//! error before any finish reason is [`ProviderError::Interrupted`], never a normal end.

use std::collections::VecDeque;

use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use sse::{Decoder, EventStream, Frame, StreamError};

use crate::delta::{Delta, DeltaStream};
use crate::error::ProviderError;

/// The largest single event accepted from an upstream.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Turn a response body into the answer's deltas.
pub(crate) fn deltas<S, B, E>(body: S) -> DeltaStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let events =
        EventStream::with_decoder(body, Decoder::new().with_max_event_size(MAX_EVENT_BYTES));
    let state = State {
        events: Box::pin(events),
        chunks: ChunkDecoder::default(),
        pending: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(delta) = state.pending.pop_front() {
                    return Some((Ok(delta), state));
                }
                if state.ended {
                    return None;
                }
                let outcome = match state.events.next().await {
                    Some(Ok(Frame::Event(event))) => state.chunks.event(&event.event, &event.data),
                    Some(Ok(Frame::Retry(_))) => Ok(Step::Continue),
                    Some(Err(StreamError::Decode(error))) => {
                        Err(ProviderError::Protocol(error.to_string()))
                    }
                    Some(Err(StreamError::Transport(error))) => state
                        .chunks
                        .end(format!("reading the upstream body failed: {error}")),
                    None => state
                        .chunks
                        .end("the upstream closed the stream before a finish reason".into()),
                };
                match outcome {
                    Ok(Step::Continue) => state.chunks.drain(&mut state.pending),
                    Ok(Step::Done) => {
                        state.chunks.drain(&mut state.pending);
                        state.chunks.finish(&mut state.pending);
                        state.ended = true;
                    }
                    Err(error) => {
                        state.ended = true;
                        return Some((Err(error), state));
                    }
                }
            }
        },
    ))
}

struct State<S> {
    events: std::pin::Pin<Box<EventStream<S>>>,
    chunks: ChunkDecoder,
    pending: VecDeque<Delta>,
    ended: bool,
}

/// What the caller does after an event.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// The answer is complete: emit what is held back and stop.
    Done,
}

/// The chunk-level state machine, separate from I/O so it can be tested on strings.
#[derive(Debug, Default)]
pub(crate) struct ChunkDecoder {
    out: VecDeque<Delta>,
    finish: Option<String>,
    usage: Option<(u64, u64)>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<ChoiceDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl ChunkDecoder {
    /// Handle one SSE event of type `kind` with payload `data`.
    pub(crate) fn event(&mut self, kind: &str, data: &str) -> Result<Step, ProviderError> {
        if data.trim() == "[DONE]" {
            return self.end("the upstream sent [DONE] without a finish reason".into());
        }
        if kind == "error" {
            tracing::debug!(data = %truncate(data), "upstream error event");
            return Err(ProviderError::Interrupted(
                "the upstream reported an error mid-stream".into(),
            ));
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|error| {
            tracing::debug!(data = %truncate(data), %error, "unreadable upstream chunk");
            ProviderError::Protocol(
                "the upstream sent a chunk that is not a chat.completion.chunk".into(),
            )
        })?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            tracing::debug!(error = %truncate(&error.to_string()), "upstream error object");
            return Err(ProviderError::Interrupted(
                "the upstream reported an error mid-stream".into(),
            ));
        }
        if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.out.push_back(Delta::Text(text));
                }
                for call in delta.tool_calls {
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    self.out.push_back(Delta::ToolCall {
                        index: call.index,
                        id: call.id,
                        name,
                        arguments,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish = Some(reason);
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some((usage.prompt_tokens, usage.completion_tokens));
        }
        Ok(Step::Continue)
    }

    /// The body ended (`[DONE]`, EOF or a transport error, described by `why`): a normal
    /// end if a finish reason arrived, an interruption otherwise.
    pub(crate) fn end(&mut self, why: String) -> Result<Step, ProviderError> {
        if self.finish.is_some() {
            Ok(Step::Done)
        } else {
            Err(ProviderError::Interrupted(why))
        }
    }

    /// Move the deltas decoded so far to `pending`.
    pub(crate) fn drain(&mut self, pending: &mut VecDeque<Delta>) {
        pending.append(&mut self.out);
    }

    /// Emit the held-back usage and finish reason.
    pub(crate) fn finish(&mut self, pending: &mut VecDeque<Delta>) {
        if let Some((prompt_tokens, completion_tokens)) = self.usage.take() {
            pending.push_back(Delta::Usage {
                prompt_tokens,
                completion_tokens,
            });
        }
        if let Some(reason) = self.finish.take() {
            pending.push_back(Delta::Finish { reason });
        }
    }
}

/// At most 512 characters of `text`, for debug logs.
pub(crate) fn truncate(text: &str) -> &str {
    match text.char_indices().nth(512) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[&str], end: Option<&str>) -> (Vec<Delta>, Result<(), ProviderError>) {
        let mut decoder = ChunkDecoder::default();
        let mut pending = VecDeque::new();
        for data in events {
            match decoder.event("message", data) {
                Ok(Step::Continue) => decoder.drain(&mut pending),
                Ok(Step::Done) => {
                    decoder.drain(&mut pending);
                    decoder.finish(&mut pending);
                    return (pending.into(), Ok(()));
                }
                Err(error) => return (pending.into(), Err(error)),
            }
        }
        let result = match end {
            Some(why) => decoder
                .end(why.into())
                .map(|_| decoder.finish(&mut pending)),
            None => Ok(()),
        };
        (pending.into(), result)
    }

    #[test]
    fn usage_after_finish_is_emitted_before_the_finish() {
        let (deltas, result) = run(
            &[
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
                "[DONE]",
            ],
            None,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            vec![
                Delta::Text("Hi".into()),
                Delta::Usage {
                    prompt_tokens: 3,
                    completion_tokens: 1
                },
                Delta::Finish {
                    reason: "stop".into()
                },
            ]
        );
    }

    #[test]
    fn eof_after_a_finish_is_a_normal_end_and_before_one_an_interruption() {
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let (deltas, result) = run(&[finish], Some("eof"));
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            vec![Delta::Finish {
                reason: "length".into()
            }]
        );

        let text = r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#;
        let (deltas, result) = run(&[text], Some("eof"));
        assert_eq!(deltas, vec![Delta::Text("a".into())]);
        assert_eq!(result, Err(ProviderError::Interrupted("eof".into())));

        let (_, result) = run(&[text, "[DONE]"], None);
        assert!(matches!(result, Err(ProviderError::Interrupted(_))));
    }

    #[test]
    fn tool_calls_errors_and_garbage() {
        let (deltas, _) = run(
            &[
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
            ],
            None,
        );
        assert_eq!(
            deltas,
            vec![Delta::ToolCall {
                index: 1,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
            }]
        );
        let (_, result) = run(&[r#"{"error":{"message":"secret upstream detail"}}"#], None);
        match result {
            Err(ProviderError::Interrupted(message)) => assert!(!message.contains("secret")),
            other => panic!("unexpected {other:?}"),
        }
        let (_, result) = run(&["not json"], None);
        assert!(matches!(result, Err(ProviderError::Protocol(_))));
    }

    #[test]
    fn truncate_respects_characters() {
        let long = "é".repeat(600);
        assert_eq!(truncate(&long).chars().count(), 512);
        assert_eq!(truncate("short"), "short");
    }
}
