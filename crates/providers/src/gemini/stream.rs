//! Reading a `streamGenerateContent?alt=sse` response: each `data:` event holds one whole
//! `GenerateContentResponse`. The text of `candidates[0].content.parts[]` becomes
//! [`Delta::Text`] (parts marked `thought` are the model's thinking and are not shown);
//! each `functionCall` part becomes one complete [`Delta::ToolCall`]. `usageMetadata`
//! repeats, cumulative, on several chunks: the last one is kept and emitted, then the
//! finish reason, when the body ends. There is no `[DONE]`: the end of the body after a
//! `finishReason` (or a prompt blocked by `promptFeedback`) is the normal end; an end,
//! a break or an `error` payload before one is [`ProviderError::Interrupted`].

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use crate::delta::Delta;
use crate::error::ProviderError;
use crate::upstream::events::{Step, WireDecoder, truncate};

/// The response-level state machine, separate from I/O so it can be tested on strings.
#[derive(Debug)]
pub(crate) struct ResponseDecoder {
    /// Prefixes the ids made up for function calls Gemini sent without one.
    call_id_prefix: String,
    /// Function calls of the answer so far.
    calls: u32,
    /// The finish reason, in Chat Completions terms.
    finish: Option<&'static str>,
    /// The latest token counts.
    usage: Option<Delta>,
}

impl ResponseDecoder {
    /// A decoder for one answer, whose made-up call ids (`call_<random>_<n>`) differ from
    /// any other answer's.
    pub(crate) fn new() -> Self {
        Self {
            call_id_prefix: format!("call_{:016x}_", rand::random::<u64>()),
            calls: 0,
            finish: None,
            usage: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Deserialize)]
struct FunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

impl UsageMetadata {
    /// The counts as a [`Delta::Usage`] (thinking is billed as output), unless the
    /// metadata carries no count at all (Vertex AI's early chunks hold only
    /// `trafficType`), which must not erase earlier counts.
    fn usage(&self) -> Option<Delta> {
        let counts = [
            self.prompt_token_count,
            self.candidates_token_count,
            self.thoughts_token_count,
            self.cached_content_token_count,
        ];
        counts.iter().any(Option::is_some).then(|| Delta::Usage {
            prompt_tokens: self.prompt_token_count.unwrap_or(0),
            completion_tokens: self.candidates_token_count.unwrap_or(0)
                + self.thoughts_token_count.unwrap_or(0),
            cached_tokens: self.cached_content_token_count.unwrap_or(0),
        })
    }
}

/// Gemini's `finishReason` in Chat Completions terms, or `None` when it is not a finish.
/// `STOP` is `stop` here; it becomes `tool_calls` at the end if the answer made calls.
fn finish_reason(reason: &str) -> Option<&'static str> {
    match reason {
        "" | "FINISH_REASON_UNSPECIFIED" => None,
        "STOP" => Some("stop"),
        "MAX_TOKENS" => Some("length"),
        // SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII and any other reason:
        // the upstream withheld or cut the answer.
        _ => Some("content_filter"),
    }
}

impl WireDecoder for ResponseDecoder {
    fn event(
        &mut self,
        kind: &str,
        data: &str,
        out: &mut VecDeque<Delta>,
    ) -> Result<Step, ProviderError> {
        if kind == "error" {
            tracing::debug!(data = %truncate(data), "upstream error event");
            return Err(mid_stream_error());
        }
        let response: Response = serde_json::from_str(data).map_err(|error| {
            tracing::debug!(data = %truncate(data), %error, "unreadable upstream payload");
            ProviderError::Protocol(
                "the upstream sent an event that is not a GenerateContentResponse".into(),
            )
        })?;
        if let Some(error) = response.error.filter(|error| !error.is_null()) {
            tracing::debug!(error = %truncate(&error.to_string()), "upstream error object");
            return Err(mid_stream_error());
        }
        match response.candidates.into_iter().find(|c| c.index == 0) {
            Some(candidate) => {
                for part in candidate.content.into_iter().flat_map(|c| c.parts) {
                    self.part(part, out);
                }
                if let Some(reason) = candidate.finish_reason.as_deref().and_then(finish_reason) {
                    self.finish = Some(reason);
                }
            }
            None => {
                let blocked = response
                    .prompt_feedback
                    .and_then(|feedback| feedback.block_reason)
                    .is_some_and(|reason| !reason.is_empty());
                if blocked {
                    self.finish = Some("content_filter");
                }
            }
        }
        if let Some(usage) = response
            .usage_metadata
            .as_ref()
            .and_then(UsageMetadata::usage)
        {
            self.usage = Some(usage);
        }
        Ok(Step::Continue)
    }

    /// EOF or a transport error: a normal end if a finish reason arrived, an interruption
    /// otherwise.
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
            let reason = if reason == "stop" && self.calls > 0 {
                "tool_calls"
            } else {
                reason
            };
            out.push_back(Delta::Finish {
                reason: reason.into(),
            });
        }
    }
}

impl ResponseDecoder {
    /// One content part: visible text, or a whole function call.
    fn part(&mut self, part: Part, out: &mut VecDeque<Delta>) {
        if part.thought == Some(true) {
            return;
        }
        if let Some(text) = part.text.filter(|text| !text.is_empty()) {
            out.push_back(Delta::Text(text));
        }
        if let Some(call) = part.function_call {
            let index = self.calls;
            self.calls += 1;
            let arguments = match call.args {
                Some(args) if !args.is_null() => args.to_string(),
                _ => "{}".into(),
            };
            out.push_back(Delta::ToolCall {
                index,
                id: Some(
                    call.id
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| format!("{}{index}", self.call_id_prefix)),
                ),
                name: Some(call.name),
                arguments,
            });
        }
    }
}

/// Our message for an error the upstream reported mid-stream (its own is only logged).
fn mid_stream_error() -> ProviderError {
    ProviderError::Interrupted("the upstream reported an error mid-stream".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[&str], end: Option<&str>) -> (Vec<Delta>, Result<(), ProviderError>) {
        let events: Vec<(&str, &str)> = events.iter().map(|data| ("message", *data)).collect();
        crate::upstream::events::run(&mut ResponseDecoder::new(), &events, end)
    }

    fn finish(reason: &str) -> Delta {
        Delta::Finish {
            reason: reason.into(),
        }
    }

    #[test]
    fn text_over_several_chunks_then_the_last_usage_and_the_finish() {
        let (deltas, result) = run(
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"The"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4}}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":" sky is"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4}}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":" blue."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":4,"thoughtsTokenCount":30,"cachedContentTokenCount":2,"totalTokenCount":38}}"#,
            ],
            Some("eof"),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            [
                Delta::Text("The".into()),
                Delta::Text(" sky is".into()),
                Delta::Text(" blue.".into()),
                Delta::Usage {
                    prompt_tokens: 4,
                    completion_tokens: 34,
                    cached_tokens: 2,
                },
                finish("stop"),
            ]
        );
    }

    #[test]
    fn usage_without_counts_does_not_erase_earlier_counts() {
        let (deltas, result) = run(
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":""}]}}],"usageMetadata":{"trafficType":"ON_DEMAND"}}"#,
            ],
            Some("eof"),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas[1..],
            [
                Delta::Usage {
                    prompt_tokens: 3,
                    completion_tokens: 1,
                    cached_tokens: 0,
                },
                finish("stop"),
            ]
        );
    }

    #[test]
    fn function_calls_are_whole_tool_calls_and_the_finish_says_tool_calls() {
        let (deltas, result) = run(
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"Let me check."},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"c2ln"}],"role":"model"}}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{"id":"fc-7","name":"now"}}],"role":"model"},"finishReason":"STOP"}]}"#,
            ],
            Some("eof"),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(deltas.len(), 4);
        assert_eq!(deltas[0], Delta::Text("Let me check.".into()));
        let Delta::ToolCall {
            index: 0,
            id: Some(made_up),
            name: Some(name),
            arguments,
        } = &deltas[1]
        else {
            panic!("unexpected {:?}", deltas[1]);
        };
        assert!(
            made_up.starts_with("call_") && made_up.ends_with("_0"),
            "{made_up}"
        );
        assert_eq!(name, "get_weather");
        assert_eq!(arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            deltas[2],
            Delta::ToolCall {
                index: 1,
                id: Some("fc-7".into()),
                name: Some("now".into()),
                arguments: "{}".into(),
            }
        );
        assert_eq!(deltas[3], finish("tool_calls"));
    }

    #[test]
    fn made_up_call_ids_differ_between_answers() {
        let call = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP"}]}"#;
        let id = || match &run(&[call], None).0[0] {
            Delta::ToolCall { id: Some(id), .. } => id.clone(),
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(id(), id());
    }

    #[test]
    fn thought_parts_are_not_shown() {
        let (deltas, _) = run(
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"**Weighing it** the user wants","thought":true}],"role":"model"}}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"secret plan","thought":true},{"text":"Hello!","thought":false}],"role":"model"},"finishReason":"STOP"}]}"#,
            ],
            Some("eof"),
        );
        assert_eq!(deltas, [Delta::Text("Hello!".into()), finish("stop")]);
    }

    #[test]
    fn finish_reasons_map_to_chat_completions_terms() {
        for (gemini, ours) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("MALFORMED_FUNCTION_CALL", "content_filter"),
            ("OTHER", "content_filter"),
        ] {
            let chunk = format!(r#"{{"candidates":[{{"finishReason":"{gemini}","index":0}}]}}"#);
            let (deltas, result) = run(&[&chunk], Some("eof"));
            assert_eq!(result, Ok(()), "{gemini}");
            assert_eq!(deltas, [finish(ours)], "{gemini}");
        }
    }

    #[test]
    fn an_unspecified_or_absent_finish_reason_is_no_finish() {
        let (deltas, result) = run(
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"FINISH_REASON_UNSPECIFIED"}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"b"}]}}],"usageMetadata":{"promptTokenCount":1}}"#,
            ],
            Some("the upstream closed the stream before a finish reason"),
        );
        assert_eq!(deltas, [Delta::Text("a".into()), Delta::Text("b".into())]);
        assert_eq!(
            result,
            Err(ProviderError::Interrupted(
                "the upstream closed the stream before a finish reason".into()
            ))
        );
    }

    #[test]
    fn a_blocked_prompt_is_a_content_filter_finish() {
        let (deltas, result) = run(
            &[
                r#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH"}]},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}}"#,
            ],
            Some("eof"),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            [
                Delta::Usage {
                    prompt_tokens: 9,
                    completion_tokens: 0,
                    cached_tokens: 0,
                },
                finish("content_filter"),
            ]
        );
    }

    #[test]
    fn an_error_payload_interrupts_without_the_upstreams_words() {
        for (kind, data) in [
            (
                "message",
                r#"{"error":{"code":500,"message":"secret upstream detail","status":"INTERNAL"}}"#,
            ),
            ("error", r#"{"message":"secret upstream detail"}"#),
        ] {
            let (deltas, result) = crate::upstream::events::run(
                &mut ResponseDecoder::new(),
                &[
                    (
                        "message",
                        r#"{"candidates":[{"content":{"parts":[{"text":"par"}]}}]}"#,
                    ),
                    (kind, data),
                ],
                None,
            );
            assert_eq!(deltas, [Delta::Text("par".into())]);
            match result {
                Err(ProviderError::Interrupted(message)) => assert!(!message.contains("secret")),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (_, result) = run(&["not json"], None);
        assert!(
            matches!(result, Err(ProviderError::Protocol(_))),
            "{result:?}"
        );
        let (_, result) = run(&["[DONE]"], None);
        assert!(
            matches!(result, Err(ProviderError::Protocol(_))),
            "{result:?}"
        );
    }
}
