//! Renderers: stored records → wire events, one view per endpoint.
//!
//! `openai` renders `chat.completion.chunk` objects as unnamed `data:` events with `id:` =
//! seq (OpenAI's SDKs break on named events), then `data: [DONE]` after a normal finish.
//! `events` renders every record as a named event whose data is the record's JSON.
//! The JSON is compact, so it never contains a raw line break and can be written as one
//! `data:` line without scanning it; the constant head of every chunk is built once per
//! reader.

use std::io::Write as _;

use serde::Serialize;
use streamlog::{Record, Seq, StreamId};

/// How a reader renders records.
pub trait Render: Send + 'static {
    /// Append the wire form of one record (nothing for records this view does not show).
    fn record(&mut self, seq: Seq, record: &Record, out: &mut Vec<u8>);
    /// Append what ends the stream, once, after the last record.
    fn end(&mut self, out: &mut Vec<u8>);
}

/// The OpenAI `chat.completion.chunk` view.
#[derive(Debug)]
pub struct OpenAiChunks {
    /// `{"id":"chatcmpl-…","object":"chat.completion.chunk","created":…,"model":"…","choices":[`
    head: Vec<u8>,
    /// Where the model name starts in `head` (it changes when another upstream request
    /// serves the answer).
    model_at: usize,
    /// Whether the next content chunk carries `"role":"assistant"` (the answer's first,
    /// for a reader from the start).
    role_pending: bool,
    /// Whether the stream ended normally (its last record was the finish).
    finished: bool,
    /// The seq `[DONE]` carries: one past the last record.
    last_seq: Seq,
    /// Whether the client asked for the usage chunk (`stream_options.include_usage`).
    include_usage: bool,
    /// The usage, held until the finish: OpenAI sends it after the finish chunk.
    usage: Option<(u64, u64)>,
}

impl OpenAiChunks {
    /// A renderer for stream `id`; `finished_before` is true when the reader starts after
    /// the finish record of a finished stream (it then sends only `[DONE]`). With
    /// `include_usage`, the usage chunk (`"choices":[]`) follows the finish chunk, as
    /// OpenAI sends it; without, there is none, so code that reads `choices[0]` of every
    /// chunk works.
    pub fn new(
        id: StreamId,
        created: u64,
        model: &str,
        last_seq: Seq,
        finished_before: bool,
        include_usage: bool,
    ) -> Self {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"{\"id\":\"chatcmpl-");
        head.extend_from_slice(id.to_string().as_bytes());
        head.extend_from_slice(b"\",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let model_at = head.len();
        let mut chunks = Self {
            head,
            model_at,
            role_pending: last_seq == 0,
            finished: finished_before,
            last_seq,
            include_usage,
            usage: None,
        };
        chunks.set_model(model);
        chunks
    }

    /// Name `model` in the chunks from now on.
    pub fn set_model(&mut self, model: &str) {
        self.head.truncate(self.model_at);
        write_json(&mut self.head, &model);
        self.head.extend_from_slice(b",\"choices\":[");
    }

    /// `"role":"assistant",` once, before the answer's first content.
    fn role(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.role_pending) {
            out.extend_from_slice(b"\"role\":\"assistant\",");
        }
    }

    fn open(&self, seq: Seq, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b"\ndata: ");
    }
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl Render for OpenAiChunks {
    fn record(&mut self, seq: Seq, record: &Record, out: &mut Vec<u8>) {
        self.last_seq = self.last_seq.max(seq);
        match record {
            Record::Text { text } => {
                self.open(seq, out);
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"{\"index\":0,\"delta\":{");
                self.role(out);
                out.extend_from_slice(b"\"content\":");
                write_json(out, text);
                out.extend_from_slice(b"},\"finish_reason\":null}]}\n\n");
            }
            Record::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                self.open(seq, out);
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"{\"index\":0,\"delta\":{");
                self.role(out);
                out.extend_from_slice(b"\"tool_calls\":[");
                write_json(
                    out,
                    &ToolCallDelta {
                        index: *index,
                        id: id.as_deref(),
                        kind: id.as_ref().map(|_| "function"),
                        function: FunctionDelta {
                            name: name.as_deref(),
                            arguments,
                        },
                    },
                );
                out.extend_from_slice(b"]},\"finish_reason\":null}]}\n\n");
            }
            Record::Upstream { model, .. } => self.set_model(model),
            Record::Usage {
                prompt_tokens,
                completion_tokens,
                ..
            } if self.include_usage => {
                self.usage = Some((*prompt_tokens, *completion_tokens));
            }
            Record::Finish { reason } => {
                self.open(seq, out);
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"{\"index\":0,\"delta\":{},\"finish_reason\":");
                write_json(out, reason);
                out.extend_from_slice(b"}]}\n\n");
                self.finished = true;
                // In the same write as the finish and without an id of its own: the
                // finish's id covers both, so a resume never repeats the finish chunk.
                if let Some((prompt_tokens, completion_tokens)) = self.usage.take() {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&self.head);
                    let _ = write!(
                        out,
                        "],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"total_tokens\":{}}}}}\n\n",
                        prompt_tokens.saturating_add(completion_tokens)
                    );
                }
            }
            Record::Error { code, message } => {
                self.open(seq, out);
                write_json(
                    out,
                    &serde_json::json!({
                        "error": { "message": message, "type": "upstream_error", "code": code }
                    }),
                );
                out.extend_from_slice(b"\n\n");
            }
            // Progress and custom events have no place in a chat completion; usage only
            // when asked for.
            _ => {}
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice((self.last_seq + 1).to_string().as_bytes());
            out.extend_from_slice(b"\ndata: [DONE]\n\n");
        }
    }
}

/// The generic view: `event: <record type>` (or a custom event's name), `data: <JSON>`.
#[derive(Debug, Default)]
pub struct Events {
    /// Written after the seq in every id (`<seq>.<epoch>`): named streams' epochs.
    epoch: Option<String>,
}

impl Events {
    /// Ids `<seq>.<epoch>` (named streams: sessions, topics).
    pub fn with_epoch(epoch: String) -> Self {
        Self { epoch: Some(epoch) }
    }
}

impl Render for Events {
    fn record(&mut self, seq: Seq, record: &Record, out: &mut Vec<u8>) {
        let seq = match &self.epoch {
            Some(epoch) => format!("{seq}.{epoch}"),
            None => seq.to_string(),
        };
        let written = match record {
            Record::Custom { event, data } => {
                let data = data.to_string();
                sse::write_event(out, Some(event), Some(&seq), &data)
            }
            Record::Progress { data } => {
                sse::write_event(out, Some("progress"), Some(&seq), &data.to_string())
            }
            other => {
                let data = serde_json::to_value(other).unwrap_or_default();
                let kind = data
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("record");
                sse::write_event(out, Some(kind), Some(&seq), &data.to_string())
            }
        };
        if let Err(error) = written {
            // A custom event name with a line break was refused at publish time; if one
            // slipped through, skip it rather than corrupt the stream.
            tracing::warn!(%error, seq, "record not renderable as an SSE event");
        }
    }

    fn end(&mut self, _out: &mut Vec<u8>) {}
}

fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    if let Err(error) = serde_json::to_writer(&mut *out, value) {
        tracing::error!(%error, "JSON rendering failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Vec<sse::Event> {
        let mut decoder = sse::Decoder::new();
        decoder.push(bytes).unwrap();
        std::iter::from_fn(|| decoder.next_frame())
            .filter_map(|f| match f {
                sse::Frame::Event(e) => Some(e),
                sse::Frame::Retry(_) => None,
            })
            .collect()
    }

    #[test]
    fn openai_chunks_are_unnamed_with_ids_and_done_last() {
        let id = StreamId::new();
        let mut render = OpenAiChunks::new(id, 7, "m\"x", 0, false, true);
        let mut out = Vec::new();
        render.record(
            1,
            &Record::Text {
                text: "Hel\nlo".into(),
            },
            &mut out,
        );
        render.record(
            2,
            &Record::Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                requests: Vec::new(),
            },
            &mut out,
        );
        render.record(
            3,
            &Record::Finish {
                reason: "stop".into(),
            },
            &mut out,
        );
        render.end(&mut out);
        let events = decode(&out);
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.event == "message"));
        // The usage chunk comes after the finish, as OpenAI sends it, and carries no id
        // of its own: the finish's id (3) stays the last one, so no id repeats.
        assert_eq!(
            events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1", "3", "3", "4"]
        );
        assert_eq!(String::from_utf8_lossy(&out).matches("id: ").count(), 3);
        let first: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(first["id"], format!("chatcmpl-{id}"));
        assert_eq!(first["model"], "m\"x");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hel\nlo");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let finish: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: serde_json::Value = serde_json::from_str(&events[2].data).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(events[3].data, "[DONE]");
    }

    #[test]
    fn without_include_usage_every_chunk_has_a_choice() {
        let mut render = OpenAiChunks::new(StreamId::new(), 0, "m", 0, false, false);
        let mut out = Vec::new();
        let records = [
            Record::Text { text: "Hi".into() },
            Record::Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                requests: Vec::new(),
            },
            Record::Finish {
                reason: "stop".into(),
            },
        ];
        for (seq, record) in (1..).zip(&records) {
            render.record(seq, record, &mut out);
        }
        render.end(&mut out);
        let events = decode(&out);
        assert_eq!(events.len(), 3);
        for event in &events[..2] {
            let chunk: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert!(chunk["choices"][0].is_object(), "{}", event.data);
            assert!(chunk.get("usage").is_none());
        }
        assert_eq!(events[2].data, "[DONE]");
    }

    #[test]
    fn an_error_ends_without_done() {
        let mut render = OpenAiChunks::new(StreamId::new(), 0, "m", 0, false, false);
        let mut out = Vec::new();
        let error = Record::Error {
            code: "upstream_interrupted".into(),
            message: "cut".into(),
        };
        render.record(1, &error, &mut out);
        render.end(&mut out);
        let events = decode(&out);
        assert_eq!(events.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(body["error"]["code"], "upstream_interrupted");
    }

    #[test]
    fn tool_calls_render_in_openai_shape() {
        let mut render = OpenAiChunks::new(StreamId::new(), 0, "m", 0, false, false);
        let mut out = Vec::new();
        let call = Record::ToolCall {
            index: 0,
            id: Some("call_1".into()),
            name: Some("get_weather".into()),
            arguments: "{\"city\"".into(),
        };
        render.record(2, &call, &mut out);
        let events = decode(&out);
        let chunk: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        let tool = &chunk["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tool["id"], "call_1");
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["name"], "get_weather");
        assert_eq!(tool["function"]["arguments"], "{\"city\"");
    }

    #[test]
    fn events_view_names_each_record() {
        let mut out = Vec::new();
        Events::default().record(4, &Record::Text { text: "hi".into() }, &mut out);
        let custom = Record::Custom {
            event: "note".into(),
            data: serde_json::json!({"a": 1}),
        };
        Events::default().record(5, &custom, &mut out);
        let events = decode(&out);
        assert_eq!(events[0].event, "text");
        assert_eq!(events[0].id, "4");
        assert_eq!(events[1].event, "note");
        assert_eq!(events[1].data, "{\"a\":1}");
    }
}
