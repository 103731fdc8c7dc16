use axum::http::StatusCode;
use serde_json::json;

use super::*;

fn parsed(body: Value) -> Parsed {
    parse(body.to_string().as_bytes()).unwrap()
}

fn refused(body: Value) -> ApiError {
    parse(body.to_string().as_bytes()).err().unwrap()
}

/// A body of `model` and `input` plus `extra`'s keys.
fn with(extra: Value) -> Value {
    let mut body = json!({ "model": "m", "input": "hi" });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

#[test]
fn a_string_input_is_one_user_message_and_defaults_are_openais() {
    let call = parsed(json!({ "model": "m", "input": "Hello" }));
    assert_eq!(call.model, "m");
    assert!(!call.stream && !call.background);
    assert_eq!(
        call.input,
        vec![json!({ "role": "user", "content": "Hello" })]
    );
    assert!(call.chat.is_empty());
    let envelope = call.envelope;
    assert_eq!(envelope.tool_choice, json!("auto"));
    assert_eq!(envelope.text, json!({ "format": { "type": "text" } }));
    assert_eq!(envelope.truncation, "disabled");
    assert!(envelope.parallel_tool_calls && envelope.store);
    assert!(!envelope.instructions_message);
    assert_eq!(envelope.instructions, None);
}

#[test]
fn typed_and_easy_messages_translate() {
    let call = parsed(json!({
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            { "role": "developer", "content": "Answer in French." },
            { "type": "message", "role": "user", "status": "completed",
              "content": [{ "type": "input_text", "text": "Hello" }] },
            { "type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{ "type": "output_text", "text": "Bon", "annotations": [] },
                          { "type": "output_text", "text": "jour" }] },
            { "role": "assistant", "content": [{ "type": "refusal", "refusal": "Non." }] },
            { "type": "reasoning", "id": "rs_1", "summary": [] },
            { "role": "user", "content": "" },
        ],
    }));
    assert_eq!(
        call.input,
        vec![
            json!({ "role": "developer", "content": "Answer in French." }),
            json!({ "role": "user", "content": [{ "type": "text", "text": "Hello" }] }),
            json!({ "role": "assistant", "content": "Bonjour" }),
            json!({ "role": "assistant", "content": "Non." }),
            json!({ "role": "user", "content": "" }),
        ]
    );
    assert_eq!(call.envelope.instructions.as_deref(), Some("Be brief."));
    assert_eq!(
        instructions_message("Be brief."),
        json!({ "role": "system", "content": "Be brief." })
    );
}

#[test]
fn images_become_image_url_parts() {
    let call = parsed(json!({
        "model": "m",
        "input": [{ "role": "user", "content": [
            { "type": "input_text", "text": "What is this?" },
            { "type": "input_image", "image_url": "https://example.com/a.png", "detail": "low" },
            { "type": "input_image", "image_url": "data:image/png;base64,AAAA" },
        ] }],
    }));
    assert_eq!(
        call.input[0]["content"],
        json!([
            { "type": "text", "text": "What is this?" },
            { "type": "image_url", "image_url": { "url": "https://example.com/a.png", "detail": "low" } },
            { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
        ])
    );
}

#[test]
fn a_function_calling_round_trip_becomes_tool_calls_and_a_tool_message() {
    let call = parsed(json!({
        "model": "m",
        "input": [
            { "role": "user", "content": "Weather in Paris?" },
            { "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
              "arguments": "{\"city\":\"Paris\"}", "status": "completed" },
            { "type": "function_call_output", "call_id": "call_1", "output": "21C" },
            { "type": "function_call_output", "call_id": "call_2",
              "output": [{ "type": "input_text", "text": "2" }, { "type": "input_text", "text": "1C" }] },
        ],
    }));
    assert_eq!(
        call.input,
        vec![
            json!({ "role": "user", "content": "Weather in Paris?" }),
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" },
            }] }),
            json!({ "role": "tool", "tool_call_id": "call_1", "content": "21C" }),
            json!({ "role": "tool", "tool_call_id": "call_2", "content": "21C" }),
        ]
    );
}

#[test]
fn consecutive_calls_merge_with_the_assistant_text_before_them() {
    let call = parsed(json!({
        "model": "m",
        "input": [
            { "role": "user", "content": "Two cities?" },
            { "role": "assistant", "content": "Looking both up." },
            { "type": "function_call", "call_id": "a", "name": "w", "arguments": "{}" },
            { "type": "function_call", "call_id": "b", "name": "w", "arguments": "{}" },
            { "type": "function_call_output", "call_id": "a", "output": "1" },
            { "type": "function_call", "call_id": "c", "name": "w", "arguments": "{}" },
        ],
    }));
    let ids = |message: &Value| -> Vec<String> {
        message["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(call.input.len(), 4);
    assert_eq!(call.input[1]["content"], "Looking both up.");
    assert_eq!(ids(&call.input[1]), ["a", "b"]);
    assert_eq!(call.input[2]["role"], "tool");
    // After a tool message, a call starts a new assistant message.
    assert_eq!(call.input[3]["content"], Value::Null);
    assert_eq!(ids(&call.input[3]), ["c"]);
}

fn weather_tools() -> Value {
    json!([
        { "type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": { "type": "object", "properties": { "city": { "type": "string" } } },
          "strict": true },
        { "type": "function", "name": "get_time" },
    ])
}

#[test]
fn tools_take_the_chat_form_and_echo_the_responses_form() {
    let call = parsed(with(json!({
        "tools": weather_tools(),
        "tool_choice": { "type": "function", "name": "get_time" },
        "parallel_tool_calls": false,
    })));
    assert_eq!(
        call.chat["tools"],
        json!([
            { "type": "function", "function": {
                "name": "get_weather", "description": "Weather of a city",
                "parameters": { "type": "object", "properties": { "city": { "type": "string" } } },
                "strict": true } },
            { "type": "function", "function": { "name": "get_time" } },
        ])
    );
    assert_eq!(
        call.chat["tool_choice"],
        json!({ "type": "function", "function": { "name": "get_time" } })
    );
    assert_eq!(call.chat["parallel_tool_calls"], json!(false));
    assert_eq!(
        call.envelope.tools[1],
        json!({ "type": "function", "name": "get_time", "parameters": null, "strict": null })
    );
    assert_eq!(call.envelope.tools[0]["description"], "Weather of a city");
    assert_eq!(
        call.envelope.tool_choice,
        json!({ "type": "function", "name": "get_time" })
    );
    assert!(!call.envelope.parallel_tool_calls);

    let call = parsed(with(
        json!({ "tools": weather_tools(), "tool_choice": "required" }),
    ));
    assert_eq!(call.chat["tool_choice"], "required");
    assert!(!call.chat.contains_key("parallel_tool_calls"));
    // Without tools, a chat upstream would refuse tool_choice and parallel_tool_calls.
    let call = parsed(with(
        json!({ "tool_choice": "none", "parallel_tool_calls": true }),
    ));
    assert!(call.chat.is_empty());
    assert_eq!(call.envelope.tool_choice, "none");
}

#[test]
fn allowed_tools_restrict_the_chat_tools() {
    let choice = json!({ "type": "allowed_tools", "mode": "required",
                         "tools": [{ "type": "function", "name": "get_time" }] });
    let call = parsed(with(
        json!({ "tools": weather_tools(), "tool_choice": choice }),
    ));
    assert_eq!(call.chat["tool_choice"], "required");
    assert_eq!(
        call.chat["tools"],
        json!([{ "type": "function", "function": { "name": "get_time" } }])
    );
    assert_eq!(call.envelope.tools.len(), 2);
    assert_eq!(call.envelope.tool_choice, choice);
}

#[test]
fn text_formats_become_response_formats() {
    let call = parsed(with(
        json!({ "text": { "format": { "type": "text" }, "verbosity": "low" } }),
    ));
    assert!(!call.chat.contains_key("response_format"));
    assert_eq!(call.envelope.text["verbosity"], "low");

    let call = parsed(with(
        json!({ "text": { "format": { "type": "json_object" } } }),
    ));
    assert_eq!(
        call.chat["response_format"],
        json!({ "type": "json_object" })
    );

    let schema = json!({ "type": "object", "properties": { "a": { "type": "integer" } } });
    let text = json!({ "format": { "type": "json_schema", "name": "answer", "schema": schema,
                                   "strict": true, "description": "An answer" } });
    let call = parsed(with(json!({ "text": text })));
    assert_eq!(
        call.chat["response_format"],
        json!({ "type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema, "strict": true, "description": "An answer" } })
    );
    assert_eq!(call.envelope.text, text);

    let call = parsed(with(json!({ "text": { "verbosity": "high" } })));
    assert_eq!(
        call.envelope.text,
        json!({ "verbosity": "high", "format": { "type": "text" } })
    );
}

#[test]
fn sampling_and_the_envelope_fields_are_read() {
    let call = parsed(with(json!({
        "stream": true, "background": true, "store": false,
        "max_output_tokens": 5.0, "temperature": 0.5, "top_p": 1,
        "metadata": { "k": "v" }, "previous_response_id": "resp_abc", "truncation": "auto",
        "user": "u1", "include": ["reasoning.encrypted_content"], "reasoning": { "effort": "low" },
        "service_tier": "auto", "prompt_cache_key": "p", "safety_identifier": "s",
        "stream_options": { "include_obfuscation": false }, "conversation": null,
    })));
    assert!(call.stream && call.background);
    assert_eq!(call.chat["max_tokens"], json!(5));
    assert!(call.chat["max_tokens"].is_u64());
    assert_eq!(call.chat["temperature"], json!(0.5));
    assert_eq!(call.chat["top_p"], json!(1.0));
    assert_eq!(call.chat["user"], "u1");
    assert_eq!(call.chat.len(), 4);
    let envelope = call.envelope;
    assert_eq!(envelope.max_output_tokens, Some(5));
    assert_eq!(
        (envelope.temperature, envelope.top_p),
        (Some(0.5), Some(1.0))
    );
    assert!(envelope.background && !envelope.store);
    assert_eq!(envelope.metadata["k"], "v");
    assert_eq!(envelope.previous_response_id.as_deref(), Some("resp_abc"));
    assert_eq!(envelope.truncation, "auto");
    assert_eq!(envelope.user.as_deref(), Some("u1"));
}

#[test]
fn an_unknown_parameter_is_refused_in_openais_words() {
    let error = refused(with(json!({ "max_tokens": 5 })));
    assert_eq!(error.status, StatusCode::BAD_REQUEST);
    assert_eq!(error.code, "unknown_parameter");
    assert_eq!(error.message, "Unknown parameter: 'max_tokens'.");
}

#[test]
fn errors_name_the_field() {
    let message = |role: &str, part: Value| json!([{ "role": role, "content": [part] }]);
    let long = "x".repeat(65);
    let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (json!([]), "body must be a JSON object"),
        (json!({ "input": "hi" }), "model is required"),
        (
            json!({ "model": "", "input": "hi" }),
            "model must be a non-empty string",
        ),
        (json!({ "model": "m" }), "input is required"),
        (
            json!({ "model": "m", "input": "" }),
            "input must be a non-empty string",
        ),
        (
            json!({ "model": "m", "input": [] }),
            "input must be a non-empty string",
        ),
        (
            json!({ "model": "m", "input": [5] }),
            "input[0] must be an object",
        ),
        (
            json!({ "model": "m", "input": [{ "content": "x" }] }),
            "input[0].role is required",
        ),
        (
            json!({ "model": "m", "input": [{ "role": "tool", "content": "x" }] }),
            "input[0].role must be one of user, system, developer, assistant",
        ),
        (
            json!({ "model": "m", "input": [{ "role": "user" }] }),
            "input[0].content is required",
        ),
        (
            json!({ "model": "m", "input": [{ "role": "user", "content": 5 }] }),
            "input[0].content must be a string or an array",
        ),
        (
            json!({ "model": "m", "input": message("user", json!({ "type": "input_file", "file_id": "f" })) }),
            "input[0].content[0].type must be one of input_text, input_image, output_text, refusal",
        ),
        (
            json!({ "model": "m", "input": message("user", json!({ "type": "input_text" })) }),
            "input[0].content[0].text is required",
        ),
        (
            json!({ "model": "m", "input": message("user", json!({ "type": "input_image", "file_id": "file_1" })) }),
            "input[0].content[0].file_id is not supported",
        ),
        (
            json!({ "model": "m", "input": message("user", json!({ "type": "input_image" })) }),
            "input[0].content[0].image_url is required",
        ),
        (
            json!({ "model": "m", "input": message("assistant", json!({ "type": "input_image", "image_url": "u" })) }),
            "input[0].content[0].type input_image is allowed in user messages only",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "function_call", "name": "w", "arguments": "{}" }] }),
            "input[0].call_id is required",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "function_call", "call_id": "c", "name": "w", "arguments": {} }] }),
            "input[0].arguments must be a string",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "function_call_output", "call_id": "c" }] }),
            "input[0].output is required",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "function_call_output", "call_id": "c",
                                             "output": [{ "type": "input_image", "image_url": "u" }] }] }),
            "input[0].output[0].type must be input_text",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "item_reference", "id": "msg_1" }] }),
            "input[0] is an item reference, which is not supported; continue a response with previous_response_id",
        ),
        (
            json!({ "model": "m", "input": ["hi", { "id": "msg_1" }] }),
            "input[0] must be an object",
        ),
        (
            json!({ "model": "m", "input": [{ "role": "user", "content": "x" }, { "id": "msg_1" }] }),
            "input[1] is an item reference",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "web_search_call", "id": "ws_1" }] }),
            "input[0].type \"web_search_call\" is not supported",
        ),
        (
            json!({ "model": "m", "input": [{ "type": "reasoning", "summary": [] }] }),
            "input must hold a message",
        ),
        (
            with(json!({ "conversation": "conv_1" })),
            "conversation is not supported; continue a response with previous_response_id",
        ),
        (
            with(json!({ "instructions": 5 })),
            "instructions must be a string",
        ),
        (with(json!({ "stream": "yes" })), "stream must be a boolean"),
        (
            with(json!({ "background": 1 })),
            "background must be a boolean",
        ),
        (with(json!({ "store": "no" })), "store must be a boolean"),
        (
            with(json!({ "parallel_tool_calls": 0 })),
            "parallel_tool_calls must be a boolean",
        ),
        (
            with(json!({ "max_output_tokens": 0 })),
            "max_output_tokens must be a whole number from 1",
        ),
        (
            with(json!({ "max_output_tokens": 5_000_000_000_u64 })),
            "max_output_tokens must be a whole number from 1",
        ),
        (
            with(json!({ "max_output_tokens": 5.5 })),
            "max_output_tokens must be a whole number from 1",
        ),
        (
            with(json!({ "temperature": 2.5 })),
            "temperature must be a number from 0 to 2",
        ),
        (
            with(json!({ "temperature": "hot" })),
            "temperature must be a number from 0 to 2",
        ),
        (
            with(json!({ "top_p": -0.1 })),
            "top_p must be a number from 0 to 1",
        ),
        (
            with(json!({ "metadata": [] })),
            "metadata must be an object",
        ),
        (
            with(json!({ "metadata": many })),
            "metadata must hold at most 16 entries",
        ),
        (
            with(json!({ "metadata": { long.clone(): "v" } })),
            "is a key longer than 64 characters",
        ),
        (
            with(json!({ "metadata": { "k": "x".repeat(513) } })),
            "metadata.k must be a string of at most 512",
        ),
        (
            with(json!({ "metadata": { "k": 5 } })),
            "metadata.k must be a string",
        ),
        (with(json!({ "tools": {} })), "tools must be an array"),
        (
            with(json!({ "tools": [{ "type": "web_search" }] })),
            "tools[0].type \"web_search\" is not supported: only function tools are supported",
        ),
        (
            with(json!({ "tools": [{ "type": "mcp", "server_label": "s" }] })),
            "tools[0].type \"mcp\" is not supported",
        ),
        (
            with(json!({ "tools": [{ "name": "f" }] })),
            "tools[0].type is required",
        ),
        (
            with(json!({ "tools": [{ "type": "function" }] })),
            "tools[0].name is required",
        ),
        (
            with(json!({ "tools": [{ "type": "function", "name": "a b" }] })),
            "tools[0].name must be 1 to 64 letters",
        ),
        (
            with(json!({ "tools": [{ "type": "function", "name": long }] })),
            "tools[0].name must be 1 to 64 letters",
        ),
        (
            with(
                json!({ "tools": [{ "type": "function", "name": "f" }, { "type": "function", "name": "f" }] }),
            ),
            "tools[1].name \"f\" names another tool too",
        ),
        (
            with(json!({ "tools": [{ "type": "function", "name": "f", "parameters": "{}" }] })),
            "tools[0].parameters must be an object",
        ),
        (
            with(json!({ "tools": [{ "type": "function", "name": "f", "strict": "yes" }] })),
            "tools[0].strict must be a boolean",
        ),
        (
            with(json!({ "tool_choice": "any" })),
            "tool_choice must be none, auto, required",
        ),
        (
            with(json!({ "tool_choice": 5 })),
            "tool_choice must be a string or an object",
        ),
        (
            with(json!({ "tool_choice": "required" })),
            "tool_choice \"required\" needs at least one tool",
        ),
        (
            with(json!({ "tool_choice": { "type": "file_search" } })),
            "tool_choice.type must be function or allowed_tools",
        ),
        (
            with(json!({ "tools": weather_tools(), "tool_choice": { "type": "function" } })),
            "tool_choice.name is required",
        ),
        (
            with(
                json!({ "tools": weather_tools(), "tool_choice": { "type": "function", "name": "nope" } }),
            ),
            "tool_choice.name \"nope\" is not the name of a function tool in tools",
        ),
        (
            with(
                json!({ "tools": weather_tools(), "tool_choice": { "type": "allowed_tools", "mode": "none", "tools": [] } }),
            ),
            "tool_choice.mode must be auto or required",
        ),
        (
            with(
                json!({ "tools": weather_tools(), "tool_choice": { "type": "allowed_tools", "mode": "auto", "tools": [] } }),
            ),
            "tool_choice.tools must be a non-empty array",
        ),
        (
            with(
                json!({ "tools": weather_tools(), "tool_choice": { "type": "allowed_tools", "mode": "auto", "tools": [{ "type": "mcp" }] } }),
            ),
            "tool_choice.tools[0].type must be function",
        ),
        (
            with(
                json!({ "tools": weather_tools(), "tool_choice": { "type": "allowed_tools", "mode": "auto", "tools": [{ "type": "function", "name": "nope" }] } }),
            ),
            "tool_choice.tools[0].name \"nope\" is not the name",
        ),
        (with(json!({ "text": "json" })), "text must be an object"),
        (
            with(json!({ "text": { "verbosity": 1 } })),
            "text.verbosity must be a string",
        ),
        (
            with(json!({ "text": { "format": "json" } })),
            "text.format must be an object",
        ),
        (
            with(json!({ "text": { "format": { "type": "yaml" } } })),
            "text.format.type must be one of text, json_object, json_schema",
        ),
        (
            with(json!({ "text": { "format": { "type": "json_schema", "schema": {} } } })),
            "text.format.name is required",
        ),
        (
            with(json!({ "text": { "format": { "type": "json_schema", "name": "a" } } })),
            "text.format.schema is required",
        ),
        (
            with(
                json!({ "text": { "format": { "type": "json_schema", "name": "a", "schema": {}, "strict": 1 } } }),
            ),
            "text.format.strict must be a boolean",
        ),
        (
            with(json!({ "previous_response_id": "msg_1" })),
            "previous_response_id must be a response id",
        ),
        (
            with(json!({ "previous_response_id": 5 })),
            "previous_response_id must be a string",
        ),
        (
            with(json!({ "truncation": "never" })),
            "truncation must be auto or disabled",
        ),
        (
            with(json!({ "user": "u".repeat(257) })),
            "user must be at most 256 characters",
        ),
        (
            with(json!({ "include": "everything" })),
            "include must be an array of strings",
        ),
        (
            with(json!({ "reasoning": "high" })),
            "reasoning must be an object",
        ),
        (
            with(json!({ "stream_options": true })),
            "stream_options must be an object",
        ),
        (
            with(json!({ "service_tier": 1 })),
            "service_tier must be a string",
        ),
    ];
    for (body, expected) in cases {
        let error = refused(body);
        assert_eq!(error.status, StatusCode::BAD_REQUEST, "{expected}");
        assert_eq!(error.code, "invalid_request", "{expected}");
        assert!(
            error.message.contains(expected),
            "{} vs {expected}",
            error.message
        );
    }
    let error = parse(b"{").err().unwrap();
    assert_eq!(error.code, "invalid_json");
}

#[test]
fn a_body_of_too_many_values_is_refused_before_it_is_parsed() {
    let body = format!(
        r#"{{"model":"m","input":[{}]}}"#,
        vec!["1"; 60_000].join(",")
    );
    assert_eq!(
        parse(body.as_bytes()).err().unwrap().code,
        "request_too_complex"
    );
}

#[test]
fn a_previous_text_answer_continues() {
    let messages = [
        instructions_message("Be brief."),
        json!({ "role": "user", "content": "Hi" }),
    ];
    let output = [
        json!({ "type": "reasoning", "id": "rs_1", "summary": [] }),
        json!({ "id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                "content": [{ "type": "output_text", "text": "Hel", "annotations": [] },
                            { "type": "output_text", "text": "lo", "annotations": [] }] }),
    ];
    assert_eq!(
        continue_from(&messages, true, &output),
        vec![
            json!({ "role": "user", "content": "Hi" }),
            json!({ "role": "assistant", "content": "Hello" }),
        ]
    );
    // Without instructions, every stored message stays.
    assert_eq!(continue_from(&messages, false, &output).len(), 3);
}

#[test]
fn previous_function_calls_continue_as_one_assistant_message() {
    let messages = [json!({ "role": "user", "content": "Two cities?" })];
    let call = |id: &str| {
        json!({ "id": format!("fc_{id}"), "type": "function_call", "call_id": id,
                "name": "w", "arguments": "{}", "status": "completed" })
    };
    let output = [
        json!({ "id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                "content": [{ "type": "output_text", "text": "Checking.", "annotations": [] }] }),
        call("a"),
        call("b"),
    ];
    let continued = continue_from(&messages, false, &output);
    assert_eq!(
        continued[1],
        json!({ "role": "assistant", "content": "Checking.", "tool_calls": [
            { "id": "a", "type": "function", "function": { "name": "w", "arguments": "{}" } },
            { "id": "b", "type": "function", "function": { "name": "w", "arguments": "{}" } },
        ] })
    );
    assert_eq!(continued.len(), 2);
    // Calls alone make an assistant message without content.
    let continued = continue_from(&messages, false, &output[1..]);
    assert_eq!(continued[1]["content"], Value::Null);
    assert_eq!(continued[1]["tool_calls"].as_array().unwrap().len(), 2);
}
