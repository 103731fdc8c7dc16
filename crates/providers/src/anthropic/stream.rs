//! Reading a streaming Messages response: events named by the SSE `event:` field.
//!
//! `message_start` carries the prompt's token counts, reported at once as a
//! [`Delta::Usage`] so that a stream cut later still accounts for its prompt;
//! `content_block_start` opens a text or `tool_use` block (thinking blocks are not
//! shown); `content_block_delta` carries text or a fragment of a tool call's JSON input;
//! `message_delta` the stop reason and the cumulative output count; `message_stop` is the
//! normal end, after which the final usage and the finish reason are emitted. `ping` and
//! unknown event types are ignored (the API may add event types). An `error` event, or a
//! body that ends before `message_stop`, is [`ProviderError::Interrupted`], never a normal
//! end.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use crate::delta::Delta;
use crate::error::ProviderError;
use crate::upstream::events::{Step, WireDecoder, truncate};

/// The event-level state machine, separate from I/O so it can be tested on strings.
#[derive(Debug, Default)]
pub(crate) struct EventDecoder {
    /// Token counts so far, once `message_start` (or `message_delta`) reported any.
    usage: Option<Counts>,
    /// The finish reason, once `message_delta` reported the stop reason.
    finish: Option<String>,
    /// Which tool call of the answer each open `tool_use` content block is.
    tool_blocks: HashMap<u32, u32>,
    /// How many tool calls the answer has started.
    tool_calls: u32,
}

/// The Messages API's token counts; every field is cumulative.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Counts {
    fn delta(self) -> Delta {
        Delta::Usage {
            prompt_tokens: self.input + self.cache_creation + self.cache_read,
            completion_tokens: self.output,
            cached_tokens: self.cache_read,
        }
    }
}

/// A `usage` object; absent fields are unchanged from the previous report.
#[derive(Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct MessageStart {
    message: StartedMessage,
}

#[derive(Deserialize)]
struct StartedMessage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct BlockStart {
    index: u32,
    content_block: Block,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct BlockDelta {
    index: u32,
    delta: Fragment,
}

#[derive(Deserialize)]
struct Fragment {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
}

#[derive(Deserialize)]
struct BlockStop {
    index: u32,
}

#[derive(Deserialize)]
struct MessageDelta {
    #[serde(default)]
    delta: Option<StopDelta>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct StopDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEvent {
    #[serde(default)]
    error: Option<Typed>,
}

/// Read `data` as the payload of a `kind` event.
fn parse<'a, T: Deserialize<'a>>(kind: &str, data: &'a str) -> Result<T, ProviderError> {
    serde_json::from_str(data).map_err(|error| {
        tracing::debug!(kind, data = %truncate(data), %error, "unreadable upstream event");
        ProviderError::Protocol(format!(
            "the upstream sent a {kind} event that is not a Messages API event"
        ))
    })
}

/// The Chat Completions finish reason for a Messages API stop reason.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and any reason added later.
        _ => "stop",
    }
}

impl EventDecoder {
    fn count(&mut self, usage: Usage) {
        let counts = self.usage.get_or_insert_with(Counts::default);
        let fields = [
            (&mut counts.input, usage.input_tokens),
            (
                &mut counts.cache_creation,
                usage.cache_creation_input_tokens,
            ),
            (&mut counts.cache_read, usage.cache_read_input_tokens),
            (&mut counts.output, usage.output_tokens),
        ];
        for (field, reported) in fields {
            if let Some(reported) = reported {
                *field = reported;
            }
        }
    }
}

impl WireDecoder for EventDecoder {
    fn event(
        &mut self,
        kind: &str,
        data: &str,
        out: &mut VecDeque<Delta>,
    ) -> Result<Step, ProviderError> {
        // The Messages API names every event; an unnamed one (a proxy dropping `event:`
        // lines) is read by the `type` its payload repeats.
        let named;
        let kind = if kind == "message" {
            named = parse::<Typed>(kind, data)?.kind;
            named.as_str()
        } else {
            kind
        };
        match kind {
            "message_start" => {
                let start: MessageStart = parse(kind, data)?;
                if let Some(usage) = start.message.usage {
                    self.count(usage);
                    out.extend(self.usage.map(Counts::delta));
                }
            }
            "content_block_start" => {
                let start: BlockStart = parse(kind, data)?;
                match start.content_block.kind.as_str() {
                    "text" => {
                        if let Some(text) = start.content_block.text.filter(|t| !t.is_empty()) {
                            out.push_back(Delta::Text(text));
                        }
                    }
                    "tool_use" => {
                        let index = self.tool_calls;
                        self.tool_calls += 1;
                        self.tool_blocks.insert(start.index, index);
                        out.push_back(Delta::ToolCall {
                            index,
                            id: start.content_block.id,
                            name: start.content_block.name,
                            arguments: String::new(),
                        });
                    }
                    // thinking, redacted_thinking, server tool blocks: not shown.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta: BlockDelta = parse(kind, data)?;
                match delta.delta.kind.as_str() {
                    "text_delta" => {
                        if let Some(text) = delta.delta.text.filter(|t| !t.is_empty()) {
                            out.push_back(Delta::Text(text));
                        }
                    }
                    "input_json_delta" => {
                        // Only for the answer's own tool calls (server tool blocks stream
                        // their input too); empty fragments carry nothing.
                        if let (Some(&index), Some(arguments)) = (
                            self.tool_blocks.get(&delta.index),
                            delta.delta.partial_json.filter(|j| !j.is_empty()),
                        ) {
                            out.push_back(Delta::ToolCall {
                                index,
                                id: None,
                                name: None,
                                arguments,
                            });
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta, …: not shown.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let stop: BlockStop = parse(kind, data)?;
                self.tool_blocks.remove(&stop.index);
            }
            "message_delta" => {
                let delta: MessageDelta = parse(kind, data)?;
                if let Some(reason) = delta.delta.and_then(|d| d.stop_reason) {
                    self.finish = Some(finish_reason(&reason).to_owned());
                }
                if let Some(usage) = delta.usage {
                    self.count(usage);
                }
            }
            "message_stop" => return Ok(Step::Done),
            "error" => {
                let error: Option<ErrorEvent> = serde_json::from_str(data).ok();
                tracing::debug!(data = %truncate(data), "upstream error event");
                let kind = error.and_then(|e| e.error).map(|e| e.kind).filter(|k| {
                    (1..=64).contains(&k.len())
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                return Err(ProviderError::Interrupted(match kind {
                    Some(kind) => format!("the upstream reported {kind} mid-stream"),
                    None => "the upstream reported an error mid-stream".into(),
                }));
            }
            // ping, and event types added after this adapter was written.
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// The body ended before `message_stop`: always an interruption.
    fn end(&mut self, why: String) -> Result<Step, ProviderError> {
        Err(ProviderError::Interrupted(why))
    }

    fn finish(&mut self, out: &mut VecDeque<Delta>) {
        out.extend(self.usage.map(Counts::delta));
        let reason = self.finish.take().unwrap_or_else(|| "stop".to_owned());
        out.push_back(Delta::Finish { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run named events (`(event, data)`) through a fresh decoder.
    fn run(events: &[(&str, &str)], end: Option<&str>) -> (Vec<Delta>, Result<(), ProviderError>) {
        crate::upstream::events::run(&mut EventDecoder::default(), events, end)
    }

    const START: (&str, &str) = (
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
    );
    const TEXT_START: (&str, &str) = (
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    const STOP: (&str, &str) = ("message_stop", r#"{"type":"message_stop"}"#);

    fn text(index: u32, text: &str) -> (&'static str, String) {
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}})
            .to_string(),
        )
    }

    fn end_turn(output_tokens: u64) -> (&'static str, String) {
        (
            "message_delta",
            format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{output_tokens}}}}}"#
            ),
        )
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Delta {
        Delta::Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        }
    }

    fn finish(reason: &str) -> Delta {
        Delta::Finish {
            reason: reason.into(),
        }
    }

    #[test]
    fn text_with_pings_ends_with_the_final_usage_and_the_finish() {
        let (hello, bang, delta) = (text(0, "Hello"), text(0, "!"), end_turn(15));
        let (deltas, result) = run(
            &[
                START,
                TEXT_START,
                ("ping", r#"{"type": "ping"}"#),
                (hello.0, &hello.1),
                (bang.0, &bang.1),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (delta.0, &delta.1),
                STOP,
            ],
            None,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            [
                usage(25, 1, 0),
                Delta::Text("Hello".into()),
                Delta::Text("!".into()),
                usage(25, 15, 0),
                finish("stop"),
            ]
        );
    }

    #[test]
    fn cache_tokens_count_as_prompt_and_a_later_usage_updates_what_it_reports() {
        let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":1000,"output_tokens":2}}}"#;
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":64}}"#;
        let (deltas, result) = run(
            &[("message_start", start), ("message_delta", delta), STOP],
            None,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            deltas,
            [
                usage(1210, 2, 1000),
                usage(1210, 64, 1000),
                finish("length")
            ]
        );

        // Newer responses repeat the input counts in message_delta: they replace the
        // earlier ones; without any usage at all, none is reported.
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":12,"cache_read_input_tokens":0,"output_tokens":5}}"#;
        let (deltas, _) = run(
            &[("message_start", start), ("message_delta", delta), STOP],
            None,
        );
        assert_eq!(deltas.last(), Some(&finish("stop")));
        assert_eq!(deltas[deltas.len() - 2], usage(212, 5, 0));
        let (deltas, _) = run(
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"id":"m"}}"#,
                ),
                STOP,
            ],
            None,
        );
        assert_eq!(deltas, [finish("stop")]);
    }

    #[test]
    fn tool_use_blocks_become_tool_calls_numbered_by_call_not_by_block() {
        let events = [
            START,
            TEXT_START,
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"Paris\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"get_time","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":2}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}"#,
            ),
            STOP,
        ];
        let (deltas, result) = run(&events, None);
        assert_eq!(result, Ok(()));
        let call = |index, id: Option<&str>, name: Option<&str>, arguments: &str| Delta::ToolCall {
            index,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments: arguments.into(),
        };
        assert_eq!(
            deltas,
            [
                usage(25, 1, 0),
                call(0, Some("toolu_a"), Some("get_weather"), ""),
                call(0, None, None, "{\"city\":"),
                call(0, None, None, " \"Paris\"}"),
                call(1, Some("toolu_b"), Some("get_time"), ""),
                call(1, None, None, "{}"),
                usage(25, 40, 0),
                finish("tool_calls"),
            ]
        );
    }

    #[test]
    fn thinking_and_server_tool_blocks_are_not_shown() {
        let answer = text(1, "21");
        let (deltas, result) = run(
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"id":"m"}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Euclid: 1071 = 2 × 462 + 147"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"xyz"}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":2,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}"#,
                ),
                (answer.0, &answer.1),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}"#,
                ),
                STOP,
            ],
            None,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(deltas, [Delta::Text("21".into()), finish("stop")]);
    }

    #[test]
    fn stop_reasons_map_to_chat_completions_finish_reasons() {
        for (stop, reason) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
            ("a_reason_from_the_future", "stop"),
        ] {
            let delta = format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}"}}}}"#);
            let (deltas, _) = run(&[("message_delta", &delta), STOP], None);
            assert_eq!(deltas, [finish(reason)], "{stop}");
        }
    }

    #[test]
    fn unknown_events_are_ignored_and_unnamed_events_read_by_their_type() {
        let hi = text(0, "hi");
        let (deltas, result) = run(
            &[
                ("some_future_event", r#"{"type":"some_future_event","x":1}"#),
                ("message", &hi.1),
                ("message", r#"{"type":"message_stop"}"#),
            ],
            None,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(deltas, [Delta::Text("hi".into()), finish("stop")]);
        let (_, result) = run(&[("content_block_delta", "not json")], None);
        assert!(
            matches!(result, Err(ProviderError::Protocol(_))),
            "{result:?}"
        );
    }

    #[test]
    fn an_error_event_interrupts_after_the_text_without_the_upstream_message() {
        let partial = text(0, "Hel");
        let (deltas, result) = run(
            &[
                START,
                TEXT_START,
                (partial.0, &partial.1),
                (
                    "error",
                    r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded: secret detail"}}"#,
                ),
            ],
            None,
        );
        assert_eq!(deltas, [usage(25, 1, 0), Delta::Text("Hel".into())]);
        assert_eq!(
            result,
            Err(ProviderError::Interrupted(
                "the upstream reported overloaded_error mid-stream".into()
            ))
        );
        let (_, result) = run(&[("error", r#"{"error":{"type":"<b>odd</b>"}}"#)], None);
        assert_eq!(
            result,
            Err(ProviderError::Interrupted(
                "the upstream reported an error mid-stream".into()
            ))
        );
    }

    #[test]
    fn a_body_cut_before_message_stop_is_an_interruption_even_after_a_stop_reason() {
        let (partial, delta) = (text(0, "Hel"), end_turn(3));
        let (deltas, result) = run(&[START, TEXT_START, (partial.0, &partial.1)], Some("cut"));
        assert_eq!(deltas, [usage(25, 1, 0), Delta::Text("Hel".into())]);
        assert_eq!(result, Err(ProviderError::Interrupted("cut".into())));

        let (deltas, result) = run(&[START, (delta.0, &delta.1)], Some("cut"));
        assert_eq!(deltas, [usage(25, 1, 0)]);
        assert_eq!(result, Err(ProviderError::Interrupted("cut".into())));
    }
}
