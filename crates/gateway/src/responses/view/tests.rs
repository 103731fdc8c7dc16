//! The view's events and objects, checked against the shapes both SDKs require.

use super::*;
use streamlog::UpstreamRequest;

fn envelope(background: bool) -> Envelope {
    Envelope {
        tool_choice: json!("auto"),
        parallel_tool_calls: true,
        store: true,
        text: json!({ "format": { "type": "text" } }),
        truncation: "disabled".into(),
        background,
        ..Envelope::default()
    }
}

fn view(background: bool) -> View {
    View::new(
        StreamId::new(),
        1_733_480_000,
        "gpt-4o-mini",
        envelope(background),
    )
}

fn text(text: &str) -> Record {
    Record::Text { text: text.into() }
}

fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Record {
    Record::ToolCall {
        index,
        id: id.map(Into::into),
        name: name.map(Into::into),
        arguments: arguments.into(),
    }
}

fn finish(reason: &str) -> Record {
    Record::Finish {
        reason: reason.into(),
    }
}

fn error(code: &str) -> Record {
    Record::Error {
        code: code.into(),
        message: "it broke".into(),
    }
}

/// Feed `records`; check the numbering and that no event has a top-level `error`.
fn run(view: &mut View, records: &[Record]) -> Vec<Value> {
    let mut out = Vec::new();
    for record in records {
        view.record(record, &mut out);
    }
    for (i, (number, event)) in out.iter().enumerate() {
        assert_eq!(*number, i as u64);
        assert_eq!(event["sequence_number"], *number);
        assert!(event.get("error").is_none(), "{event}");
    }
    assert_eq!(view.next_number(), out.len() as u64);
    out.into_iter().map(|(_, event)| event).collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The event with its `type` and `sequence_number` removed.
fn fields(event: &Value) -> Value {
    let mut event = event.clone();
    let object = event.as_object_mut().unwrap();
    object.remove("type");
    object.remove("sequence_number");
    event
}

#[test]
fn a_text_stream_has_the_canonical_events() {
    let mut view = view(false);
    let records = [
        Record::Upstream {
            target: "t".into(),
            model: "upstream-model".into(),
        },
        text("Hel"),
        text(""),
        text("lo"),
        Record::Usage {
            prompt_tokens: 12,
            completion_tokens: 2,
            requests: vec![UpstreamRequest {
                prompt_tokens: 12,
                cached_tokens: 5,
                ..UpstreamRequest::default()
            }],
        },
        finish("stop"),
    ];
    let events = run(&mut view, &records);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let id = format!("msg_{}_0", view.stream);
    let hello =
        json!({ "type": "output_text", "text": "Hello", "annotations": [], "logprobs": [] });
    let at = json!({ "item_id": id, "output_index": 0, "content_index": 0 });
    let with = |extra: Value| {
        let mut v = at.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let expected = [
        json!({ "output_index": 0, "item": {
            "id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []
        }}),
        with(json!({ "part": part("") })),
        with(json!({ "delta": "Hel", "logprobs": [] })),
        with(json!({ "delta": "lo", "logprobs": [] })),
        with(json!({ "text": "Hello", "logprobs": [] })),
        with(json!({ "part": hello })),
        json!({ "output_index": 0, "item": {
            "id": id, "type": "message", "role": "assistant", "status": "completed", "content": [hello]
        }}),
    ];
    for (event, expected) in events[2..9].iter().zip(expected) {
        assert_eq!(fields(event), expected);
    }
    for start in &events[..2] {
        assert_eq!(start["response"]["status"], "in_progress");
        assert_eq!(start["response"]["output"], json!([]));
        assert_eq!(start["response"]["usage"], Value::Null);
    }
    let response = &events[9]["response"];
    assert_eq!(*response, view.response());
    assert_eq!(response["id"], format!("resp_{}", view.stream));
    assert_eq!(response["model"], "gpt-4o-mini");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["completed_at"], 1_733_480_000);
    assert_eq!(response["output_text"], "Hello");
    assert_eq!(
        response["usage"],
        json!({
            "input_tokens": 12,
            "input_tokens_details": { "cached_tokens": 5, "cache_write_tokens": 0 },
            "output_tokens": 2,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": 14,
        })
    );
    for key in [
        "error",
        "incomplete_details",
        "instructions",
        "metadata",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "text",
        "truncation",
        "background",
        "store",
        "previous_response_id",
        "max_output_tokens",
    ] {
        assert!(response.get(key).is_some(), "{key}");
    }
    assert!(view.ended());
    let mut after = Vec::new();
    view.record(&text("more"), &mut after);
    assert!(after.is_empty());
    assert_eq!(view.next_number(), 10);
}

#[test]
fn a_function_call_stream() {
    let mut view = view(false);
    let records = [
        call(0, Some("call_a"), Some("get_weather"), "{\"ci"),
        call(0, None, None, "ty\":\"Paris\"}"),
        finish("tool_calls"),
    ];
    let events = run(&mut view, &records);
    assert_eq!(
        types(&events)[2..],
        [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let id = format!("fc_{}_0", view.stream);
    let item = |arguments: &str, status: &str| {
        json!({ "id": id, "type": "function_call", "call_id": "call_a",
                "name": "get_weather", "arguments": arguments, "status": status })
    };
    let paris = "{\"city\":\"Paris\"}";
    assert_eq!(
        fields(&events[2]),
        json!({ "output_index": 0, "item": item("", "in_progress") })
    );
    assert_eq!(
        fields(&events[3]),
        json!({ "item_id": id, "output_index": 0, "delta": "{\"ci" })
    );
    assert_eq!(
        fields(&events[5]),
        json!({ "item_id": id, "output_index": 0, "arguments": paris })
    );
    assert_eq!(
        fields(&events[6]),
        json!({ "output_index": 0, "item": item(paris, "completed") })
    );
    assert_eq!(
        events[7]["response"]["output"],
        json!([item(paris, "completed")])
    );
    assert_eq!(events[7]["response"]["output_text"], "");
}

#[test]
fn text_then_a_call_closes_the_message_first() {
    let mut view = view(false);
    let records = [
        text("Let me check."),
        call(0, None, Some("f"), "{}"),
        finish("tool_calls"),
    ];
    let events = run(&mut view, &records);
    assert_eq!(
        types(&events)[5..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(events[7]["item"]["status"], "completed");
    let added = &events[8];
    assert_eq!(added["output_index"], 1);
    assert_eq!(added["item"]["id"], format!("fc_{}_1", view.stream));
    assert_eq!(added["item"]["call_id"], format!("call_{}_0", view.stream));
    assert_eq!(view.response()["output_text"], "Let me check.");
}

#[test]
fn parallel_calls_take_interleaved_deltas_and_close_in_order() {
    let mut view = view(false);
    let records = [
        call(0, Some("call_a"), Some("f"), "{\"a\""),
        call(1, Some("call_b"), Some("g"), "{\"b\""),
        call(0, None, None, ":1}"),
        call(1, None, None, ":2}"),
        finish("tool_calls"),
    ];
    let events = run(&mut view, &records);
    let summary: Vec<_> = events[2..]
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["output_index"].as_u64()))
        .collect();
    assert_eq!(
        summary,
        [
            ("response.output_item.added", Some(0)),
            ("response.function_call_arguments.delta", Some(0)),
            ("response.output_item.added", Some(1)),
            ("response.function_call_arguments.delta", Some(1)),
            ("response.function_call_arguments.delta", Some(0)),
            ("response.function_call_arguments.delta", Some(1)),
            ("response.function_call_arguments.done", Some(0)),
            ("response.output_item.done", Some(0)),
            ("response.function_call_arguments.done", Some(1)),
            ("response.output_item.done", Some(1)),
            ("response.completed", None),
        ]
    );
    let output = &events[12]["response"]["output"];
    assert_eq!(output[0]["arguments"], "{\"a\":1}");
    assert_eq!(output[1]["arguments"], "{\"b\":2}");
    assert_eq!(output[1]["name"], "g");
    assert_eq!(output[1]["call_id"], "call_b");
}

#[test]
fn length_ends_incomplete() {
    let mut view = view(false);
    let events = run(&mut view, &[text("abc"), finish("length")]);
    let last = &events[events.len() - 2..];
    assert_eq!(
        types(last),
        ["response.output_item.done", "response.incomplete"]
    );
    assert_eq!(last[0]["item"]["status"], "incomplete");
    let response = &last[1]["response"];
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"],
        json!({ "reason": "max_output_tokens" })
    );
    assert!(response.get("completed_at").is_none());
    assert_eq!(response["output_text"], "abc");
}

#[test]
fn an_upstream_error_ends_failed() {
    let events = run(
        &mut view(false),
        &[
            text("Hel"),
            call(0, None, Some("f"), "{"),
            error("upstream_timeout"),
        ],
    );
    let last = &events[events.len() - 3..];
    assert_eq!(
        types(last),
        [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.failed"
        ]
    );
    assert_eq!(last[1]["item"]["status"], "incomplete");
    let response = &last[2]["response"];
    assert_eq!(response["status"], "failed");
    assert_eq!(
        response["error"],
        json!({ "code": "server_error", "message": "it broke" })
    );
    assert_eq!(response["output"][0]["status"], "completed");

    // An error before any output still starts the response.
    let events = run(&mut view(false), &[error("upstream_rate_limited")]);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    assert_eq!(
        events[2]["response"]["error"]["code"],
        "rate_limit_exceeded"
    );
    assert_eq!(error_code("busy"), "rate_limit_exceeded");
    assert_eq!(error_code("generate_failed"), "server_error");
}

#[test]
fn a_cancelled_answer_ends_failed_with_status_cancelled() {
    let mut view = view(true);
    let events = run(&mut view, &[text("Hel"), error("cancelled")]);
    let terminal = events.last().unwrap();
    assert_eq!(terminal["type"], "response.failed");
    assert_eq!(terminal["response"]["status"], "cancelled");
    assert_eq!(terminal["response"]["error"], Value::Null);
    assert_eq!(terminal["response"]["output"][0]["status"], "incomplete");
}

#[test]
fn the_object_at_each_stage() {
    let mut view = view(true);
    let queued = view.response();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["background"], true);
    assert_eq!(queued["output"], json!([]));
    let events = run(&mut view, &[text("A")]);
    assert_eq!(events[0]["response"]["status"], "queued");
    assert_eq!(events[1]["response"]["status"], "in_progress");
    let open = view.response();
    assert_eq!(open["status"], "in_progress");
    assert_eq!(open["output"][0]["status"], "in_progress");
    assert_eq!(open["output"][0]["content"][0]["text"], "A");
    assert!(!view.ended());
    // Text after a call opens a second message; output_text joins both.
    let mut rest = Vec::new();
    for record in [call(0, None, Some("f"), "{}"), text("B"), finish("stop")] {
        view.record(&record, &mut rest);
    }
    let done = view.response();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][2]["id"], format!("msg_{}_2", view.stream));
    assert_eq!(done["output_text"], "AB");
    assert_eq!(
        View::new(view.stream, 0, "m", envelope(false)).response()["status"],
        "in_progress"
    );
}

#[test]
fn a_replay_after_n_yields_the_same_events_above_n() {
    let records = [
        Record::Upstream {
            target: "t".into(),
            model: "m".into(),
        },
        text("Hel\nlo"),
        call(0, Some("call_a"), Some("f"), "{}"),
        finish("tool_calls"),
    ];
    let id = StreamId::new();
    let render = |after: Option<u64>| {
        let view = View::new(id, 7, "gpt-4o-mini", envelope(false));
        let mut events = ResponseEvents::new(view, after);
        let mut out = Vec::new();
        for (seq, record) in (1..).zip(&records) {
            events.record(seq, record, &mut out);
        }
        events.end(&mut out);
        let mut decoder = sse::Decoder::new();
        decoder.push(&out).unwrap();
        std::iter::from_fn(|| decoder.next_frame())
            .map(|frame| match frame {
                sse::Frame::Event(event) => event,
                sse::Frame::Retry(_) => panic!("no retry expected"),
            })
            .collect::<Vec<_>>()
    };
    let full = render(None);
    assert_eq!(full.len(), 13);
    for (n, event) in full.iter().enumerate() {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.id, n.to_string());
        assert_eq!(data["type"], *event.event);
        assert_eq!(data["sequence_number"], n);
    }
    let resumed = render(Some(4));
    assert_eq!(resumed, full[5..]);
    assert!(render(Some(12)).is_empty());
}

/// The SSE of text deltas written in place is byte for byte what the general path writes.
#[test]
fn text_deltas_in_place_are_the_events_of_the_general_path() {
    let records = [
        text("He said \"hi\"\n"),
        text("and é, \u{1f600}, \\ and </script>"),
        text(""),
        text("more"),
        finish("stop"),
    ];
    let id = StreamId::new();
    let mut fast = ResponseEvents::new(View::new(id, 7, "m", envelope(false)), None);
    let mut fast_out = Vec::new();
    let mut slow = View::new(id, 7, "m", envelope(false));
    let mut slow_out = Vec::new();
    for (seq, record) in (1..).zip(&records) {
        fast.record(seq, record, &mut fast_out);
        let mut events = Vec::new();
        slow.record(record, &mut events);
        for (number, event) in events {
            write_event(&mut slow_out, number, &event);
        }
    }
    assert_eq!(
        String::from_utf8(fast_out).unwrap(),
        String::from_utf8(slow_out).unwrap()
    );
}
