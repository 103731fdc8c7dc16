//! The upstream request body: a Chat Completions [`ChatRequest`] as a streaming Messages
//! API request.
//!
//! System and developer messages become the top-level `system`; the other turns become
//! content blocks (text, image, `tool_use`, `tool_result`), and consecutive turns of the
//! same role are merged because the Messages API wants user and assistant to alternate.
//! Tools, `tool_choice`, `stop`, `max_tokens`, `temperature`, `top_p` and `user` are
//! translated; every other field is left out, because the Messages API refuses fields it
//! does not know. A continuation prefix becomes a trailing assistant turn without its
//! trailing whitespace, which the API refuses there.

use serde_json::{Map, Value, json};

use super::AnthropicConfig;
use crate::Continuation;
use crate::error::ProviderError;
use crate::request::{ChatRequest, Message};

/// One turn of the conversation as the Messages API takes it.
struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

/// Serialise `request` as a streaming Messages request for `config`'s model.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] when the conversation has no user or assistant
/// turn, a message or part cannot be translated (unknown role or part type, a tool call
/// whose arguments are not a JSON object, an image URL that is neither `data:…;base64`
/// nor http(s)), or the request has a prefix but the upstream cannot continue.
pub(super) fn body(
    request: &ChatRequest,
    config: &AnthropicConfig,
) -> Result<Vec<u8>, ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role.as_str() {
            "system" | "developer" => {
                let text = message.text();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", content_blocks(&message.content)?),
            "assistant" => ("assistant", assistant_blocks(message)?),
            "tool" => ("user", vec![tool_result(message)?]),
            other => return Err(invalid(format!("unsupported message role {other:?}"))),
        };
        push(&mut turns, role, blocks);
    }
    if turns.is_empty() {
        return Err(invalid(
            "the conversation has no user or assistant message".into(),
        ));
    }
    for turn in turns.iter_mut().filter(|turn| turn.role == "user") {
        // Tool results must open the user turn that answers the tool calls.
        turn.content
            .sort_by_key(|block| block.get("type").and_then(Value::as_str) != Some("tool_result"));
    }
    if let Some(prefix) = request
        .assistant_prefix
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if config.continuation == Continuation::None {
            return Err(invalid(
                "this upstream does not support continuing a partial answer (prefill)".into(),
            ));
        }
        // A final assistant turn may not end in whitespace; the continuation's repeat of
        // it is dropped from the output instead (`super::prefix`).
        let kept = prefix.trim_end();
        if !kept.is_empty() {
            push(&mut turns, "assistant", vec![text_block(kept)]);
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), Value::String(config.model.clone()));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(config.max_tokens)),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|turn| json!({"role": turn.role, "content": turn.content}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), Value::Bool(true));
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if let Some(stop) = stop_sequences(request.extra.get("stop"))? {
        body.insert("stop_sequences".into(), stop);
    }
    if let Some(user) = request
        .extra
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    let tools = tools(request.extra.get("tools"))?;
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        let parallel = request
            .extra
            .get("parallel_tool_calls")
            .and_then(Value::as_bool);
        if let Some(choice) = tool_choice(request.extra.get("tool_choice"), parallel)? {
            body.insert("tool_choice".into(), choice);
        }
    }
    serde_json::to_vec(&body).map_err(|_| invalid("the request could not be serialised".into()))
}

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidRequest(message)
}

/// Add `blocks` as a turn of `role`, merged into the previous turn if it has the same
/// role. A message without content adds nothing (the API refuses empty turns).
fn push(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A message's `content` (a string or an array of parts) as content blocks; empty text is
/// left out (the API refuses empty text blocks).
fn content_blocks(content: &Value) -> Result<Vec<Value>, ProviderError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text_block(text)]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            blocks.push(text_block(text));
                        }
                    }
                    Some("image_url") => blocks.push(image_block(part)?),
                    other => {
                        return Err(invalid(format!(
                            "content parts of type {other:?} are not supported by the \
                             Anthropic adapter"
                        )));
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(invalid(
            "message content must be a string or an array of parts".into(),
        )),
    }
}

/// An `image_url` part as an image block: a `data:<type>;base64,` URL as a base64 source,
/// an http(s) URL as a url source.
fn image_block(part: &Value) -> Result<Value, ProviderError> {
    let image = part.get("image_url");
    let url = image
        .and_then(|i| i.get("url"))
        .or(image)
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(data_url) = url.strip_prefix("data:") {
        let (header, data) = data_url.split_once(',').unwrap_or((data_url, ""));
        let media_type = header
            .strip_suffix(";base64")
            .and_then(|h| h.split(';').next())
            .filter(|m| !m.is_empty() && !data.is_empty())
            .ok_or_else(|| {
                invalid("an image data: URL must be base64 (data:<type>;base64,…)".into())
            })?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid(
        "an image_url must be an http(s) URL or a base64 data: URL".into(),
    ))
}

/// An assistant message: its text, then a `tool_use` block per tool call.
fn assistant_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = content_blocks(&message.content)?;
    let calls = match message.extra.get("tool_calls") {
        None | Some(Value::Null) => return Ok(blocks),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(invalid("tool_calls must be an array".into())),
    };
    for call in calls {
        let id = call.get("id").and_then(Value::as_str);
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(invalid(
                "every tool call needs an id and a function name".into(),
            ));
        };
        let input = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(arguments)) if arguments.trim().is_empty() => json!({}),
            Some(Value::String(arguments)) => serde_json::from_str(arguments)
                .map_err(|_| invalid(format!("the arguments of tool call {id:?} are not JSON")))?,
            Some(object) => object.clone(),
        };
        if !input.is_object() {
            return Err(invalid(format!(
                "the arguments of tool call {id:?} must be a JSON object"
            )));
        }
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

/// A `tool` message as a `tool_result` block for the call it answers.
fn tool_result(message: &Message) -> Result<Value, ProviderError> {
    let id = message
        .extra
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a tool message needs a tool_call_id".into()))?;
    let mut block = Map::new();
    block.insert("type".into(), json!("tool_result"));
    block.insert("tool_use_id".into(), json!(id));
    let content = match &message.content {
        Value::String(text) if !text.is_empty() => Some(Value::String(text.clone())),
        Value::Array(_) => {
            let blocks = content_blocks(&message.content)?;
            (!blocks.is_empty()).then_some(Value::Array(blocks))
        }
        _ => None,
    };
    if let Some(content) = content {
        block.insert("content".into(), content);
    }
    Ok(Value::Object(block))
}

/// OpenAI's `stop` (a string or an array of strings) as `stop_sequences`.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, ProviderError> {
    let sequences: Vec<&str> = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(stop)) => vec![stop.as_str()],
        Some(Value::Array(stops)) => stops
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("stop must be a string or an array of strings".into()))?,
        Some(_) => {
            return Err(invalid(
                "stop must be a string or an array of strings".into(),
            ));
        }
    };
    Ok((!sequences.is_empty()).then(|| json!(sequences)))
}

/// OpenAI's function tools as Messages API tools (`input_schema` for `parameters`).
fn tools(tools: Option<&Value>) -> Result<Vec<Value>, ProviderError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(invalid("tools must be an array".into())),
    };
    tools
        .iter()
        .map(|tool| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid(
                    "only tools of type \"function\" are supported by the Anthropic adapter".into(),
                ));
            }
            let function = tool.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("every tool needs a function name".into()))?;
            let schema = function
                .and_then(|f| f.get("parameters"))
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut out = Map::new();
            out.insert("name".into(), json!(name));
            if let Some(description) = function
                .and_then(|f| f.get("description"))
                .filter(|d| d.is_string())
            {
                out.insert("description".into(), description.clone());
            }
            out.insert("input_schema".into(), schema);
            Ok(Value::Object(out))
        })
        .collect()
}

/// OpenAI's `tool_choice` and `parallel_tool_calls` as the Messages API's `tool_choice`.
fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, ProviderError> {
    let mut choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) => Some(match mode.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(invalid(format!("unsupported tool_choice {other:?}"))),
        }),
        Some(object) => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| object.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    invalid(
                        "tool_choice must name a function: {type: function, function: {name}}"
                            .into(),
                    )
                })?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if parallel == Some(false) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Value::Object(map) = choice {
            if map.get("type").and_then(Value::as_str) != Some("none") {
                map.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> ChatRequest {
        let mut base = json!({"model": "gateway-name"});
        if let (Value::Object(map), Value::Object(extra)) = (&mut base, value) {
            map.extend(extra);
        }
        serde_json::from_value(base).unwrap()
    }

    fn config(continuation: Continuation) -> AnthropicConfig {
        let mut config = AnthropicConfig::new("https://api.anthropic.com", "claude-up");
        config.continuation = continuation;
        config
    }

    fn sent(request: &ChatRequest) -> Value {
        sent_with(request, Continuation::None)
    }

    fn sent_with(request: &ChatRequest, continuation: Continuation) -> Value {
        serde_json::from_slice(&body(request, &config(continuation)).unwrap()).unwrap()
    }

    fn refused(request: &ChatRequest) -> bool {
        matches!(
            body(request, &config(Continuation::AssistantMessage)),
            Err(ProviderError::InvalidRequest(_))
        )
    }

    #[test]
    fn system_and_developer_messages_become_the_system_prompt() {
        let body = sent(&request(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        ]})));
        assert_eq!(
            body,
            json!({
                "model": "claude-up",
                "max_tokens": 4096,
                "system": "Be brief.\n\nAnswer in French.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": true,
            })
        );
    }

    #[test]
    fn consecutive_turns_of_one_role_are_merged_and_empty_ones_dropped() {
        let body = sent(&request(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]})));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
                {"role": "user", "content": [{"type": "text", "text": "five"}]},
            ])
        );
    }

    #[test]
    fn tools_and_every_tool_choice_translate() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "ping"}},
        ]);
        let with = |choice: Value, parallel: Value| -> Value {
            sent(&request(json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tools": tools,
                "tool_choice": choice,
                "parallel_tool_calls": parallel,
            })))
        };
        let body = with(Value::Null, Value::Null);
        assert_eq!(
            body["tools"],
            json!([
                {"name": "get_weather", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert!(body.get("tool_choice").is_none());
        assert!(body.get("parallel_tool_calls").is_none());
        assert_eq!(
            with(json!("auto"), Value::Null)["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            with(json!("none"), Value::Null)["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(json!("required"), Value::Null)["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "ping"}}),
                Value::Null
            )["tool_choice"],
            json!({"type": "tool", "name": "ping"})
        );
        assert_eq!(
            with(Value::Null, json!(false))["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(json!("required"), json!(false))["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(json!("none"), json!(false))["tool_choice"],
            json!({"type": "none"})
        );
        assert!(with(Value::Null, json!(true)).get("tool_choice").is_none());
        // No tools: no tool_choice either (the API refuses one without tools).
        let body = sent(&request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": "none",
        })));
        assert!(body.get("tool_choice").is_none() && body.get("tools").is_none());
        assert!(refused(&request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search"}],
        }))));
    }

    #[test]
    fn tool_calls_become_tool_use_blocks_and_tool_messages_tool_results() {
        let body = sent(&request(json!({"messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "user", "content": "(one more)"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        ]})));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                    {"type": "tool_result", "tool_use_id": "call_2",
                     "content": [{"type": "text", "text": "noon"}]},
                    {"type": "text", "text": "(one more)"},
                ]},
            ])
        );
        let call = |arguments: &str| {
            request(json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
            ]}))
        };
        assert!(refused(&call("{not json")));
        assert!(refused(&call("[1, 2]")));
        assert!(!refused(&call("{}")));
        assert!(refused(&request(json!({"messages": [
            {"role": "tool", "content": "no id"},
        ]}))));
    }

    #[test]
    fn sampling_stop_max_tokens_and_user_are_mapped_and_openai_only_fields_dropped() {
        let mut chat = request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 64,
            "seed": 7,
            "stop": "END",
            "user": "u-1",
            "stream": false,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
            "frequency_penalty": 0.5,
            "n": 1,
        }));
        let body = sent(&chat);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["temperature"], 0.3);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(body["stream"], true);
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "max_tokens",
                "messages",
                "metadata",
                "model",
                "stop_sequences",
                "stream",
                "temperature",
                "top_p"
            ]
        );

        chat.extra.insert("stop".into(), json!(["a", "b"]));
        assert_eq!(sent(&chat)["stop_sequences"], json!(["a", "b"]));
        chat.extra.insert("stop".into(), json!([]));
        assert!(sent(&chat).get("stop_sequences").is_none());
        chat.extra.insert("stop".into(), json!([1]));
        assert!(refused(&chat));

        let mut config = config(Continuation::None);
        config.max_tokens = 1000;
        chat.extra.remove("stop");
        chat.max_tokens = None;
        let sent: Value = serde_json::from_slice(&super::body(&chat, &config).unwrap()).unwrap();
        assert_eq!(sent["max_tokens"], 1000);
    }

    #[test]
    fn a_prefix_is_a_trailing_assistant_turn_without_trailing_whitespace() {
        let mut chat = request(json!({"messages": [{"role": "user", "content": "Tell a story"}]}));
        chat.assistant_prefix = Some("Once upon a time, \n".into());
        assert!(matches!(
            body(&chat, &config(Continuation::None)),
            Err(ProviderError::InvalidRequest(_))
        ));
        let body = sent_with(&chat, Continuation::AssistantMessage);
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": [{"type": "text", "text": "Once upon a time,"}]})
        );
        assert!(body.get("assistant_prefix").is_none());

        // Merged into an assistant turn the client already ends with.
        chat.messages.push(Message {
            role: "assistant".into(),
            content: json!("Title: The Fox."),
            extra: Map::new(),
        });
        let body = sent_with(&chat, Continuation::AssistantMessage);
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            body["messages"][1]["content"],
            json!([
                {"type": "text", "text": "Title: The Fox."},
                {"type": "text", "text": "Once upon a time,"},
            ])
        );

        // Only whitespace: nothing to send; the answer simply starts.
        chat.messages.pop();
        chat.assistant_prefix = Some(" \n".into());
        let body = sent_with(&chat, Continuation::AssistantMessage);
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        // An empty prefix is no prefix, whatever the mode.
        chat.assistant_prefix = Some(String::new());
        assert_eq!(sent(&chat)["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let body = sent(&request(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
        ]}]})));
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
        let image = |url: &str| {
            request(json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]}))
        };
        assert!(refused(&image("ftp://example.com/cat.jpg")));
        assert!(refused(&image("data:image/png,rawbytes")));
        assert!(refused(&request(
            json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "..."}}]}]})
        )));
    }

    #[test]
    fn an_empty_or_system_only_conversation_and_unknown_roles_are_refused() {
        assert!(refused(&request(json!({"messages": []}))));
        assert!(refused(&request(json!({"messages": [
            {"role": "system", "content": "Be brief."}]}))));
        assert!(refused(&request(json!({"messages": [
            {"role": "function", "name": "f", "content": "x"}]}))));
        assert!(refused(&request(json!({"messages": [
            {"role": "user", "content": {"odd": true}}]}))));
    }
}
