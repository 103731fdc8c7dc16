//! Reading a streaming Chat Completions response: each `data:` event holds one
//! `chat.completion.chunk`. `choices[0].delta.content` becomes [`Delta::Text`],
//! `delta.tool_calls[]` become [`Delta::ToolCall`]s. OpenAI sends the finish reason first
//! and the usage in a later chunk with empty `choices`, then `data: [DONE]`; so the finish
//! reason is held back and emitted last, after the usage, when `[DONE]` or the end of the
//! body arrives. A body that ends, breaks or reports an error before any finish reason is
//! [`ProviderError::Interrupted`], never a normal end.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use crate::delta::Delta;
use crate::error::ProviderError;
use crate::upstream::events::{Step, WireDecoder, truncate};

/// The chunk-level state machine, separate from I/O so it can be tested on strings.
#[derive(Debug, Default)]
pub(crate) struct ChunkDecoder {
    finish: Option<String>,
    usage: Option<Delta>,
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
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl WireDecoder for ChunkDecoder {
    fn event(
        &mut self,
        kind: &str,
        data: &str,
        out: &mut VecDeque<Delta>,
    ) -> Result<Step, ProviderError> {
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
                    out.push_back(Delta::Text(text));
                }
                for call in delta.tool_calls {
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    out.push_back(Delta::ToolCall {
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
            self.usage = Some(Delta::Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_tokens: usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            });
        }
        Ok(Step::Continue)
    }

    /// `[DONE]`, EOF or a transport error: a normal end if a finish reason arrived, an
    /// interruption otherwise.
    fn end(&mut self, why: String) -> Result<Step, ProviderError> {
        if self.finish.is_some() {
            Ok(Step::Done)
        } else {
            Err(ProviderError::Interrupted(why))
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Delta>) {
        out.extend(self.usage.take());
        if let Some(reason) = self.finish.take() {
            out.push_back(Delta::Finish { reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[&str], end: Option<&str>) -> (Vec<Delta>, Result<(), ProviderError>) {
        let events: Vec<(&str, &str)> = events.iter().map(|data| ("message", *data)).collect();
        crate::upstream::events::run(&mut ChunkDecoder::default(), &events, end)
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
                    completion_tokens: 1,
                    cached_tokens: 0,
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
}
