//! The Responses view of a chat answer: its records, read in order from the first, become
//! OpenAI's Responses events (`response.created` … `response.completed`) numbered 0, 1, 2…,
//! and the Response object as it stands after any of them. Records never change, so every
//! replay yields the same events under the same numbers, and nothing here reads a clock:
//! a reader resuming after event N ([`ResponseEvents`] with `after = Some(N)`) sees exactly
//! what a reader from the start saw after N. The shapes are those both official SDKs
//! (Python 3.54, Node 6 and 7) require, helper invariants included: items are added at
//! output indexes 0, 1, 2… with empty content, a message's one `output_text` part is
//! announced before its deltas, every item is done before the terminal event, and no event
//! has a top-level `error` key.

use serde_json::{Value, json};
use streamlog::{Record, Seq, StreamId};

use super::Envelope;
use crate::http::render::Render;

/// The Responses view of one chat stream: consumes its records in order from the first and
/// yields the Responses events, numbered 0, 1, 2… (the same numbers on every replay, since
/// the records never change), and the Response object as it stands.
///
/// ```
/// use gateway::responses::{Envelope, view::View};
/// use streamlog::{Record, StreamId};
///
/// let mut view = View::new(StreamId::new(), 1_733_480_000, "gpt-4o-mini", Envelope::default());
/// let mut events = Vec::new();
/// view.record(&Record::Text { text: "Hi".into() }, &mut events);
/// view.record(&Record::Finish { reason: "stop".into() }, &mut events);
/// let types: Vec<_> = events.iter().map(|(_, e)| e["type"].as_str().unwrap()).collect();
/// assert_eq!(types.first(), Some(&"response.created"));
/// assert_eq!(types.last(), Some(&"response.completed"));
/// assert_eq!(view.response()["output_text"], "Hi");
/// assert!(view.ended());
/// ```
#[derive(Debug, Clone)]
pub struct View {
    /// The stream; the response and item ids derive from it.
    stream: StreamId,
    /// Seconds since the Unix epoch.
    created_at: u64,
    /// The client-facing model name (an `Upstream` record does not change it).
    model: String,
    /// What the object echoes of the request.
    envelope: Envelope,
    /// Whether `response.created` and `response.in_progress` were yielded.
    started: bool,
    /// The output items, by output index.
    items: Vec<Item>,
    /// The output index of the open message item, if any.
    message: Option<usize>,
    /// Tool call index of the records → output index of its item.
    calls: Vec<(u32, usize)>,
    /// The usage record, once seen.
    usage: Option<Usage>,
    /// How the response ended, once it has.
    end: Option<End>,
    /// The number the next event carries.
    next: u64,
}

/// One output item.
#[derive(Debug, Clone)]
struct Item {
    /// `msg_…` or `fc_…`.
    id: String,
    status: ItemStatus,
    kind: ItemKind,
}

#[derive(Debug, Clone)]
enum ItemKind {
    /// An assistant message with one `output_text` part.
    Message { text: String },
    /// A function call.
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

impl ItemStatus {
    fn as_str(self) -> &'static str {
        match self {
            ItemStatus::InProgress => "in_progress",
            ItemStatus::Completed => "completed",
            ItemStatus::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    input: u64,
    output: u64,
    cached: u64,
}

/// How a response ended.
#[derive(Debug, Clone)]
enum End {
    Completed,
    /// `incomplete_details.reason`: `max_output_tokens` or `content_filter`.
    Incomplete(&'static str),
    /// `error.code` (one of the SDKs' enum values) and the record's message.
    Failed {
        code: &'static str,
        message: String,
    },
    Cancelled,
}

impl View {
    /// `id`: the stream; `created_at`: seconds; `model`: the client-facing model name;
    /// `envelope`: what the object echoes.
    pub fn new(id: StreamId, created_at: u64, model: &str, envelope: Envelope) -> Self {
        Self {
            stream: id,
            created_at,
            model: model.to_owned(),
            envelope,
            started: false,
            items: Vec::new(),
            message: None,
            calls: Vec::new(),
            usage: None,
            end: None,
            next: 0,
        }
    }

    /// Take one record; push its events (sequence_number, event JSON with "type" and
    /// "sequence_number") to `out`. The first record of any kind first yields
    /// `response.created` (status "queued" when `envelope.background`, else "in_progress")
    /// and `response.in_progress`. Records after the terminal event yield nothing.
    ///
    /// - `Text`: opens a message item if none is open (`output_item.added`,
    ///   `content_part.added`), then `output_text.delta`; empty text yields nothing.
    /// - `ToolCall`: closes an open message item; a call index not seen before opens a
    ///   `function_call` item (its `call_id` is the record's id, or `call_<stream>_<index>`
    ///   when the upstream gave none); non-empty arguments yield
    ///   `function_call_arguments.delta`. Call items stay open until the end, since deltas
    ///   of an earlier call may still come.
    /// - `Usage`: kept for the object's `usage`.
    /// - `Finish`: closes every open item, in output order, then `response.completed`;
    ///   `length` and `content_filter` end `response.incomplete` instead, their open items
    ///   done as `incomplete`.
    /// - `Error`: closes open items as `incomplete`, then `response.failed` (status
    ///   `cancelled` and no error for the code `cancelled`: neither SDK knows a
    ///   `response.cancelled` event).
    /// - `Upstream` and the kinds that do not occur in chat streams: nothing.
    pub fn record(&mut self, record: &Record, out: &mut Vec<(u64, Value)>) {
        if self.end.is_some() {
            return;
        }
        if !self.started {
            let created = json!({ "response": self.response() });
            self.emit(out, "response.created", created);
            self.started = true;
            let in_progress = json!({ "response": self.response() });
            self.emit(out, "response.in_progress", in_progress);
        }
        match record {
            Record::Text { text } if !text.is_empty() => self.text(text, out),
            Record::ToolCall {
                index,
                id,
                name,
                arguments,
            } => self.tool_call(*index, id.as_deref(), name.as_deref(), arguments, out),
            Record::Usage {
                prompt_tokens,
                completion_tokens,
                requests,
            } => {
                // The cached part of the same request `prompt_tokens` counts (the first
                // that answered), so `cached_tokens` never exceeds `input_tokens`; a sum
                // over continuations, which resend the prompt, could.
                let cached = requests
                    .iter()
                    .find(|r| r.prompt_tokens > 0 || r.completion_tokens > 0)
                    .map_or(0, |r| r.cached_tokens);
                self.usage = Some(Usage {
                    input: *prompt_tokens,
                    output: *completion_tokens,
                    cached,
                });
            }
            Record::Finish { reason } => {
                let end = match reason.as_str() {
                    "length" => End::Incomplete("max_output_tokens"),
                    "content_filter" => End::Incomplete("content_filter"),
                    _ => End::Completed,
                };
                self.end_with(end, out);
            }
            Record::Error { code, message } => {
                let end = if code == "cancelled" {
                    End::Cancelled
                } else {
                    End::Failed {
                        code: error_code(code),
                        message: message.clone(),
                    }
                };
                self.end_with(end, out);
            }
            _ => {}
        }
    }

    /// The Response object now: status "queued" before any record when background,
    /// "in_progress" while open, then completed / incomplete / failed / cancelled; `output`
    /// as it stands; `usage` null until the usage record; `output_text` as the SDKs compute
    /// it (the text of every message item, joined; both SDKs ignore or overwrite it).
    ///
    /// `completed_at` (completed responses only) is `created_at`: the records carry no
    /// time, and a clock reading would make every replay and retrieval differ from the
    /// live stream. It is a lower bound of the true time; both SDKs treat the field as
    /// optional.
    pub fn response(&self) -> Value {
        let e = &self.envelope;
        let (status, error, incomplete_details) = match &self.end {
            None if !self.started && e.background => ("queued", Value::Null, Value::Null),
            None => ("in_progress", Value::Null, Value::Null),
            Some(End::Completed) => ("completed", Value::Null, Value::Null),
            Some(End::Incomplete(reason)) => {
                ("incomplete", Value::Null, json!({ "reason": reason }))
            }
            Some(End::Failed { code, message }) => (
                "failed",
                json!({ "code": code, "message": message }),
                Value::Null,
            ),
            Some(End::Cancelled) => ("cancelled", Value::Null, Value::Null),
        };
        let output_text: String = self
            .items
            .iter()
            .filter_map(|item| match &item.kind {
                ItemKind::Message { text } => Some(text.as_str()),
                ItemKind::Call { .. } => None,
            })
            .collect();
        // Defaults for an envelope stored without these keys: both SDKs require a value.
        let or = |value: &Value, default: Value| {
            if value.is_null() {
                default
            } else {
                value.clone()
            }
        };
        let truncation = if e.truncation.is_empty() {
            "disabled"
        } else {
            e.truncation.as_str()
        };
        let mut response = json!({
            "id": super::response_id(self.stream),
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": e.background,
            "error": error,
            "incomplete_details": incomplete_details,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "metadata": e.metadata,
            "model": self.model,
            "output": self.items.iter().map(Item::json).collect::<Vec<_>>(),
            "output_text": output_text,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "temperature": e.temperature,
            "tool_choice": or(&e.tool_choice, json!("auto")),
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": truncation,
            "text": or(&e.text, json!({ "format": { "type": "text" } })),
            "store": e.store,
            "user": e.user,
            "usage": self.usage.map(|usage| usage.json()),
        });
        if matches!(self.end, Some(End::Completed)) {
            response["completed_at"] = json!(self.created_at);
        }
        response
    }

    /// Whether a terminal event was yielded.
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// The number the next event will carry.
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// A text delta while a message item is open (nearly every record of an answer),
    /// written as SSE straight into `out` when numbered above `after`: the same event
    /// [`View::record`] yields, with its keys in the same (sorted) order, but without a
    /// JSON tree per token. False, having done nothing, when the record needs the general
    /// path.
    fn text_in_place(&mut self, delta: &str, after: Option<u64>, out: &mut Vec<u8>) -> bool {
        if self.end.is_some() || !self.started || delta.is_empty() {
            return false;
        }
        let Some(index) = self.message else {
            return false;
        };
        let item = &mut self.items[index];
        let ItemKind::Message { text } = &mut item.kind else {
            return false;
        };
        text.push_str(delta);
        let number = self.next;
        self.next += 1;
        if after.is_some_and(|after| number <= after) {
            return true;
        }
        // Writing to a Vec cannot fail; JSON escaping leaves no line break in the data.
        out.extend_from_slice(b"event: response.output_text.delta\nid: ");
        push_number(out, number);
        out.extend_from_slice(b"\ndata: {\"content_index\":0,\"delta\":");
        let _ = serde_json::to_writer(&mut *out, delta);
        out.extend_from_slice(b",\"item_id\":");
        let _ = serde_json::to_writer(&mut *out, &item.id);
        out.extend_from_slice(b",\"logprobs\":[],\"output_index\":");
        push_number(out, index as u64);
        out.extend_from_slice(b",\"sequence_number\":");
        push_number(out, number);
        out.extend_from_slice(b",\"type\":\"response.output_text.delta\"}\n\n");
        true
    }

    /// Push event `kind` with the fields of `event` (an object), numbered.
    fn emit(&mut self, out: &mut Vec<(u64, Value)>, kind: &str, mut event: Value) {
        let number = self.next;
        self.next += 1;
        if let Some(fields) = event.as_object_mut() {
            fields.insert("type".into(), kind.into());
            fields.insert("sequence_number".into(), number.into());
        }
        out.push((number, event));
    }

    /// Add an in-progress item at the next output index: `output_item.added`.
    fn add(&mut self, prefix: &str, kind: ItemKind, out: &mut Vec<(u64, Value)>) -> usize {
        let index = self.items.len();
        let item = Item {
            id: format!("{prefix}_{}_{index}", self.stream),
            status: ItemStatus::InProgress,
            kind,
        };
        let mut json = item.json();
        if matches!(item.kind, ItemKind::Message { .. }) {
            // The helpers want parts announced one by one, after an empty message.
            json["content"] = json!([]);
        }
        self.items.push(item);
        self.emit(
            out,
            "response.output_item.added",
            json!({ "output_index": index, "item": json }),
        );
        index
    }

    fn text(&mut self, delta: &str, out: &mut Vec<(u64, Value)>) {
        let index = match self.message {
            Some(index) => index,
            None => {
                let message = ItemKind::Message {
                    text: String::new(),
                };
                let index = self.add("msg", message, out);
                self.message = Some(index);
                let added = json!({
                    "item_id": self.items[index].id,
                    "output_index": index,
                    "content_index": 0,
                    "part": part(""),
                });
                self.emit(out, "response.content_part.added", added);
                index
            }
        };
        let item = &mut self.items[index];
        if let ItemKind::Message { text } = &mut item.kind {
            text.push_str(delta);
        }
        let event = json!({
            "item_id": item.id,
            "output_index": index,
            "content_index": 0,
            "delta": delta,
            "logprobs": [],
        });
        self.emit(out, "response.output_text.delta", event);
    }

    fn tool_call(
        &mut self,
        call: u32,
        id: Option<&str>,
        name: Option<&str>,
        delta: &str,
        out: &mut Vec<(u64, Value)>,
    ) {
        if let Some(message) = self.message {
            self.close(message, ItemStatus::Completed, out);
        }
        let known = self.calls.iter().find(|(c, _)| *c == call).map(|(_, i)| *i);
        let index = match known {
            Some(index) => index,
            None => {
                let kind = ItemKind::Call {
                    call_id: id
                        .map_or_else(|| format!("call_{}_{call}", self.stream), str::to_owned),
                    name: name.unwrap_or_default().to_owned(),
                    arguments: String::new(),
                };
                let index = self.add("fc", kind, out);
                self.calls.push((call, index));
                index
            }
        };
        let item = &mut self.items[index];
        if let ItemKind::Call {
            name: known_name,
            arguments,
            ..
        } = &mut item.kind
        {
            // An upstream that names the call only on a later delta: the first name wins.
            if known_name.is_empty() {
                known_name.push_str(name.unwrap_or_default());
            }
            arguments.push_str(delta);
        }
        if !delta.is_empty() {
            let event = json!({ "item_id": item.id, "output_index": index, "delta": delta });
            self.emit(out, "response.function_call_arguments.delta", event);
        }
    }

    /// Close the item at `index` with `status`: its done events.
    fn close(&mut self, index: usize, status: ItemStatus, out: &mut Vec<(u64, Value)>) {
        if self.message == Some(index) {
            self.message = None;
        }
        let item = &mut self.items[index];
        item.status = status;
        let mut events = Vec::with_capacity(3);
        match &item.kind {
            ItemKind::Message { text } => {
                let fields =
                    json!({ "item_id": item.id, "output_index": index, "content_index": 0 });
                let mut done = fields.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                events.push(("response.output_text.done", done));
                let mut part_done = fields;
                part_done["part"] = part(text);
                events.push(("response.content_part.done", part_done));
            }
            ItemKind::Call { arguments, .. } => {
                let done =
                    json!({ "item_id": item.id, "output_index": index, "arguments": arguments });
                events.push(("response.function_call_arguments.done", done));
            }
        }
        let done = json!({ "output_index": index, "item": item.json() });
        events.push(("response.output_item.done", done));
        for (kind, event) in events {
            self.emit(out, kind, event);
        }
    }

    /// Close every open item, in output order, then yield the terminal event.
    fn end_with(&mut self, end: End, out: &mut Vec<(u64, Value)>) {
        let status = match end {
            End::Completed => ItemStatus::Completed,
            _ => ItemStatus::Incomplete,
        };
        for index in 0..self.items.len() {
            if self.items[index].status == ItemStatus::InProgress {
                self.close(index, status, out);
            }
        }
        let kind = match end {
            End::Completed => "response.completed",
            End::Incomplete(_) => "response.incomplete",
            End::Failed { .. } | End::Cancelled => "response.failed",
        };
        self.end = Some(end);
        let terminal = json!({ "response": self.response() });
        self.emit(out, kind, terminal);
    }
}

impl Item {
    fn json(&self) -> Value {
        let status = self.status.as_str();
        match &self.kind {
            ItemKind::Message { text } => json!({
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [part(text)],
            }),
            ItemKind::Call {
                call_id,
                name,
                arguments,
            } => json!({
                "id": self.id,
                "type": "function_call",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
                "status": status,
            }),
        }
    }
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "input_tokens": self.input,
            "input_tokens_details": { "cached_tokens": self.cached, "cache_write_tokens": 0 },
            "output_tokens": self.output,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": self.input.saturating_add(self.output),
        })
    }
}

/// An `output_text` part holding `text`.
fn part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// The Responses error code (an enum in both SDKs) of a record's error code:
/// `rate_limit_exceeded` for rate limits (`upstream_rate_limited`, a `429`) and `busy` (every
/// upstream at its limit), `server_error` for everything else.
fn error_code(code: &str) -> &'static str {
    let limited = code
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| matches!(word, "rate" | "ratelimit" | "ratelimited" | "429" | "busy"));
    if limited {
        "rate_limit_exceeded"
    } else {
        "server_error"
    }
}

/// Append `n` in decimal, without the formatting machinery (once or twice per token).
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Append event number `number` (as [`View::record`] yields it) as SSE: `event: <type>`,
/// `id: <number>`, one `data:` line of compact JSON (it has no raw line break).
pub fn write_event(out: &mut Vec<u8>, number: u64, event: &Value) {
    use std::io::Write as _;
    // The type is one of this module's constants, and compact JSON escapes every line
    // break, so the event needs no further framing checks: it is serialised in place.
    let kind = event["type"].as_str().unwrap_or_default();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    // Writing to a Vec cannot fail.
    let _ = write!(out, "\nid: {number}\ndata: ");
    let _ = serde_json::to_writer(&mut *out, event);
    out.extend_from_slice(b"\n\n");
}

/// A `Render` (crate::http::render::Render) of a response's stream as SSE: `event: <type>`,
/// `id: <sequence_number>`, `data: <json>` per event, only events numbered above `after`
/// (None: all). The reader must feed it the stream from its first record, whatever `after`
/// is, so the numbers are right. `end` writes nothing more: the stream closes after the
/// terminal event (and if the records ended without one, which should not happen, there is
/// nothing to add either).
#[derive(Debug)]
pub struct ResponseEvents {
    view: View,
    after: Option<u64>,
    /// Reused between records.
    events: Vec<(u64, Value)>,
}

impl ResponseEvents {
    /// Render `view`'s events numbered above `after` (None: all).
    pub fn new(view: View, after: Option<u64>) -> Self {
        Self {
            view,
            after,
            events: Vec::new(),
        }
    }
}

impl Render for ResponseEvents {
    fn record(&mut self, _seq: Seq, record: &Record, out: &mut Vec<u8>) {
        if let Record::Text { text } = record
            && self.view.text_in_place(text, self.after, out)
        {
            return;
        }
        self.view.record(record, &mut self.events);
        let after = self.after;
        for (number, event) in self.events.drain(..) {
            if after.is_some_and(|after| number <= after) {
                continue;
            }
            write_event(out, number, &event);
        }
    }

    fn end(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests;
