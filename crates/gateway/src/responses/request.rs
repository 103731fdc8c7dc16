//! A `POST /v1/responses` body, validated and translated into a Chat Completions request:
//! `input` items become chat messages (function calls and their outputs become assistant
//! `tool_calls` and `tool` messages), function tools and `tool_choice` take their chat form,
//! `text.format` becomes `response_format`, and what the response object echoes goes into
//! the [`Envelope`]. A previous response is continued by [`continue_from`], which turns its
//! stored messages and its `output` items back into chat messages. Errors name the field
//! at fault, as `POST /v1/chat/completions` does.

use serde_json::{Map, Value, json};

use super::Envelope;
use crate::error::ApiError;
use crate::http::extract::whole_number;

/// A validated `POST /v1/responses` body.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The client-facing model name.
    pub model: String,
    /// Whether the client asked for a stream of events.
    pub stream: bool,
    /// Whether the response runs in the background (answered at once, read later).
    pub background: bool,
    /// The chat messages of `input` (this request's own turn(s)), translated.
    pub input: Vec<Value>,
    /// The rest of the chat completion body (no model, messages or stream): tools,
    /// tool_choice, max_tokens, temperature, top_p, parallel_tool_calls, response_format,
    /// user — in Chat Completions form, each only when it applies.
    pub chat: Map<String, Value>,
    /// What the response object echoes (instructions, metadata, tools in Responses form,
    /// …; `instructions_message` is the caller's to set, and is false here).
    pub envelope: Envelope,
}

/// The top-level keys a body may hold; any other is refused as OpenAI does.
const PARAMETERS: [&str; 24] = [
    "model",
    "input",
    "instructions",
    "stream",
    "background",
    "store",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "metadata",
    "tools",
    "tool_choice",
    "text",
    "previous_response_id",
    "truncation",
    "user",
    "conversation",
    // Accepted and ignored.
    "include",
    "reasoning",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
];

/// Validate and translate a body, naming the field at fault.
///
/// # Errors
/// 413 `request_too_complex` for a body of too many values; 400 `invalid_json`,
/// `unknown_parameter` (OpenAI's wording) or `invalid_request` naming the field.
pub fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
    crate::http::budget::check(body)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(object) = value else {
        return Err(field_error("body", "must be a JSON object"));
    };
    if let Some(name) = object.keys().find(|k| !PARAMETERS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "unknown_parameter",
            format!("Unknown parameter: '{name}'."),
        ));
    }
    if given(&object, "conversation").is_some() {
        return Err(field_error(
            "conversation",
            "is not supported; continue a response with previous_response_id",
        ));
    }
    let model = required(&object, "", "model", non_empty, "a non-empty string")?;
    let input = input(object.get("input"))?;
    ignored(&object)?;

    let mut chat = Map::new();
    let tools = tools(given(&object, "tools"))?;
    let (tool_choice, allowed) = tool_choice(given(&object, "tool_choice"), &tools)?;
    let parallel_tool_calls = flag(&object, "parallel_tool_calls", true)?;
    let chat_tools: Vec<Value> = tools
        .iter()
        .filter(|tool| {
            allowed
                .as_ref()
                .is_none_or(|names| names.contains(&tool.name))
        })
        .map(|tool| tool.chat.clone())
        .collect();
    // Chat Completions refuses `tool_choice` and `parallel_tool_calls` without tools.
    if !chat_tools.is_empty() {
        chat.insert("tools".into(), Value::Array(chat_tools));
        if let Some(choice) = chat_choice(&tool_choice) {
            chat.insert("tool_choice".into(), choice);
        }
        if given(&object, "parallel_tool_calls").is_some() {
            chat.insert("parallel_tool_calls".into(), parallel_tool_calls.into());
        }
    }
    let max_output_tokens = optional(
        &object,
        "",
        "max_output_tokens",
        |v| whole_number(v).is_some_and(|n| (1..=u64::from(u32::MAX)).contains(&n)),
        "a whole number from 1 to 4294967295",
    )?
    .and_then(whole_number);
    if let Some(n) = max_output_tokens {
        chat.insert("max_tokens".into(), n.into());
    }
    let temperature = number(&object, "temperature", 2.0)?;
    let top_p = number(&object, "top_p", 1.0)?;
    for (field, value) in [("temperature", temperature), ("top_p", top_p)] {
        if let Some(value) = value {
            chat.insert(field.into(), value.into());
        }
    }
    let text = text(given(&object, "text"), &mut chat)?;
    let user = text_of(&object, "", "user")?;
    if let Some(user) = user {
        if user.chars().count() > 256 {
            return Err(field_error("user", "must be at most 256 characters"));
        }
        chat.insert("user".into(), user.into());
    }
    let previous_response_id = text_of(&object, "", "previous_response_id")?;
    if previous_response_id.is_some_and(|id| !id.starts_with("resp_")) {
        return Err(field_error(
            "previous_response_id",
            "must be a response id (beginning resp_)",
        ));
    }
    let truncation = match text_of(&object, "", "truncation")? {
        None => "disabled",
        Some(mode @ ("auto" | "disabled")) => mode,
        Some(_) => return Err(field_error("truncation", "must be auto or disabled")),
    };
    let envelope = Envelope {
        model: model.as_str().unwrap_or_default().to_owned(),
        instructions: text_of(&object, "", "instructions")?.map(str::to_owned),
        metadata: metadata(given(&object, "metadata"))?,
        tools: tools.into_iter().map(|tool| tool.echo).collect(),
        tool_choice,
        parallel_tool_calls,
        max_output_tokens,
        temperature,
        top_p,
        background: flag(&object, "background", false)?,
        store: flag(&object, "store", true)?,
        previous_response_id: previous_response_id.map(str::to_owned),
        text,
        truncation: truncation.to_owned(),
        user: user.map(str::to_owned),
        instructions_message: false,
    };
    Ok(Parsed {
        model: model.as_str().unwrap_or_default().to_owned(),
        stream: flag(&object, "stream", false)?,
        background: envelope.background,
        input,
        chat,
        envelope,
    })
}

/// The chat messages that continue a previous response: its stored chat `messages`
/// (without its leading instructions message when `had_instructions`: instructions do not
/// carry over), then its `output` items — message items as assistant messages of their
/// text, function calls as the `tool_calls` of an assistant message (consecutive ones, and
/// the text message just before them, merged into one, as Chat Completions expects).
/// Reasoning and unknown items are left out.
pub fn continue_from(
    previous_messages: &[Value],
    had_instructions: bool,
    previous_output: &[Value],
) -> Vec<Value> {
    let mut turns = Turns {
        messages: previous_messages
            .iter()
            .skip(usize::from(had_instructions))
            .cloned()
            .collect(),
        open: false,
    };
    for item in previous_output {
        let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
        match field("type") {
            "message" => {
                let text: String = item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(part_text)
                    .collect();
                if !text.is_empty() {
                    turns.push(json!({ "role": "assistant", "content": text }));
                }
            }
            "function_call" => turns.call(field("call_id"), field("name"), field("arguments")),
            _ => {}
        }
    }
    turns.messages
}

/// The system message for `instructions`.
pub fn instructions_message(instructions: &str) -> Value {
    json!({ "role": "system", "content": instructions })
}

/// Chat messages being built: function calls join the assistant message just before them.
#[derive(Default)]
struct Turns {
    messages: Vec<Value>,
    /// Whether the last message is an assistant message that function calls may join.
    open: bool,
}

impl Turns {
    fn push(&mut self, message: Value) {
        self.open = message["role"] == "assistant";
        self.messages.push(message);
    }

    /// A function call: one more tool call of the open assistant message, or a new one.
    fn call(&mut self, call_id: &str, name: &str, arguments: &str) {
        let call = json!({
            "id": call_id,
            "type": "function",
            "function": { "name": name, "arguments": arguments },
        });
        if self.open
            && let Some(Value::Object(last)) = self.messages.last_mut()
        {
            match last.get_mut("tool_calls") {
                Some(Value::Array(calls)) => calls.push(call),
                _ => {
                    last.insert("tool_calls".into(), json!([call]));
                }
            }
            return;
        }
        self.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }));
    }
}

/// `input`: a string (one user message) or an array of items, as chat messages.
fn input(value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => {
            Ok(vec![json!({ "role": "user", "content": text })])
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut turns = Turns::default();
            for (i, item) in items.iter().enumerate() {
                add_item(&mut turns, i, item)?;
            }
            if turns.messages.is_empty() {
                return Err(field_error(
                    "input",
                    "must hold a message, function call or function call output",
                ));
            }
            Ok(turns.messages)
        }
        Some(_) => Err(field_error(
            "input",
            "must be a non-empty string or a non-empty array of items",
        )),
        None => Err(field_error("input", "is required")),
    }
}

/// One input item, translated onto `turns`.
fn add_item(turns: &mut Turns, i: usize, item: &Value) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    let Value::Object(item) = item else {
        return Err(field_error(&at, "must be an object"));
    };
    let kind = match text_of(item, &at, "type")? {
        Some(kind) => kind,
        // An item reference may leave out its type too: `{"id": "msg_…"}`.
        None if item.contains_key("id") && !item.contains_key("role") => "item_reference",
        None => "message",
    };
    match kind {
        "message" => turns.push(message(&at, item)?),
        "function_call" => turns.call(
            required_text(item, &at, "call_id")?,
            required_text(item, &at, "name")?,
            required_text(item, &at, "arguments")?,
        ),
        "function_call_output" => {
            let call_id = required_text(item, &at, "call_id")?;
            let wanted = "a string or an array of input_text parts";
            let output = match required(item, &at, "output", string_or_array, wanted)? {
                Value::Array(parts) => tool_output(&at, parts)?,
                output => output.as_str().unwrap_or_default().to_owned(),
            };
            turns.push(json!({ "role": "tool", "tool_call_id": call_id, "content": output }));
        }
        "item_reference" => {
            return Err(field_error(
                &at,
                "is an item reference, which is not supported; continue a response with \
                 previous_response_id instead",
            ));
        }
        // Reasoning is the upstream's own; a chat upstream cannot take it back.
        "reasoning" => {}
        other => {
            return Err(key_error(
                &at,
                "type",
                format!(
                    "{other:?} is not supported (message, function_call, \
                     function_call_output and reasoning items are)"
                ),
            ));
        }
    }
    Ok(())
}

/// The roles of Responses input messages.
const ROLES: [&str; 4] = ["user", "system", "developer", "assistant"];

/// A message item as a chat message: user content keeps its parts (text and images), the
/// other roles' content becomes one string.
fn message(at: &str, item: &Map<String, Value>) -> Result<Value, ApiError> {
    let role = required_text(item, at, "role")?;
    if !ROLES.contains(&role) {
        return Err(key_error(
            at,
            "role",
            "must be one of user, system, developer, assistant",
        ));
    }
    let wanted = "a string or an array of content parts";
    let content = match required(item, at, "content", string_or_array, wanted)? {
        Value::Array(parts) => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(j, part)| content_part(&format!("{at}.content[{j}]"), role, part))
                .collect::<Result<Vec<_>, _>>()?;
            if role == "user" {
                Value::Array(parts)
            } else {
                Value::String(parts.iter().filter_map(part_text).collect())
            }
        }
        text => text.clone(),
    };
    Ok(json!({ "role": role, "content": content }))
}

/// One content part of a `role` message, in chat form.
fn content_part(at: &str, role: &str, part: &Value) -> Result<Value, ApiError> {
    let Value::Object(part) = part else {
        return Err(field_error(at, "must be an object"));
    };
    let text =
        |key| required_text(part, at, key).map(|text| json!({ "type": "text", "text": text }));
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => text("text"),
        Some("refusal") => text("refusal"),
        Some("input_image") if role != "user" => Err(key_error(
            at,
            "type",
            format!("input_image is allowed in user messages only, not {role} messages"),
        )),
        Some("input_image") => {
            let Some(url) = optional(part, at, "image_url", non_empty, "a non-empty string")?
            else {
                if given(part, "file_id").is_some() {
                    return Err(key_error(
                        at,
                        "file_id",
                        "is not supported (there are no files here); send the image as \
                         image_url (an https or data URL)",
                    ));
                }
                return Err(key_error(at, "image_url", "is required"));
            };
            let mut image = json!({ "url": url });
            if let Some(detail) = optional(part, at, "detail", Value::is_string, "a string")? {
                image["detail"] = detail.clone();
            }
            Ok(json!({ "type": "image_url", "image_url": image }))
        }
        _ => Err(key_error(
            at,
            "type",
            "must be one of input_text, input_image, output_text, refusal",
        )),
    }
}

/// The text of a content part of either form (input, output or chat), if it has one.
fn part_text(part: &Value) -> Option<&str> {
    match part.get("type").and_then(Value::as_str)? {
        "input_text" | "output_text" | "text" => part.get("text")?.as_str(),
        "refusal" => part.get("refusal")?.as_str(),
        _ => None,
    }
}

/// A function call output given as parts: their text (a tool message holds text only).
fn tool_output(at: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut output = String::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}.output[{j}]");
        let Value::Object(part) = part else {
            return Err(field_error(&at, "must be an object"));
        };
        if part.get("type").and_then(Value::as_str) != Some("input_text") {
            return Err(key_error(
                &at,
                "type",
                "must be input_text (a function call output is text here)",
            ));
        }
        output.push_str(required_text(part, &at, "text")?);
    }
    Ok(output)
}

/// A function tool, in both forms.
struct Tool {
    name: String,
    /// `{"type":"function","function":{…}}`, for the chat upstream.
    chat: Value,
    /// `{"type":"function","name",…,"parameters","strict"}`, for the response object.
    echo: Value,
}

const FUNCTION_NAME: &str = "must be 1 to 64 letters, digits, underscores or dashes";

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `tools`: function tools only.
fn tools(value: Option<&Value>) -> Result<Vec<Tool>, ApiError> {
    let tools = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(field_error("tools", "must be an array")),
    };
    let mut translated: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(tool) = tool else {
            return Err(field_error(&at, "must be an object"));
        };
        let kind = required_text(tool, &at, "type")?;
        if kind != "function" {
            let problem = format!("{kind:?} is not supported: only function tools are supported");
            return Err(key_error(&at, "type", problem));
        }
        let name = required_text(tool, &at, "name")?;
        if !is_function_name(name) {
            return Err(key_error(&at, "name", FUNCTION_NAME));
        }
        if translated.iter().any(|t| t.name == name) {
            return Err(key_error(
                &at,
                "name",
                format!("{name:?} names another tool too"),
            ));
        }
        let mut function = Map::from_iter([("name".into(), name.into())]);
        let mut echo = Map::from_iter([("type".into(), kind.into()), ("name".into(), name.into())]);
        for (key, check, wanted) in [
            (
                "description",
                Value::is_string as fn(&Value) -> bool,
                "a string",
            ),
            ("parameters", Value::is_object, "an object (a JSON Schema)"),
            ("strict", Value::is_boolean, "a boolean"),
        ] {
            match optional(tool, &at, key, check, wanted)? {
                Some(value) => {
                    function.insert(key.into(), value.clone());
                    echo.insert(key.into(), value.clone());
                }
                // The SDKs' Response types require `parameters` and `strict`.
                None if key != "description" => {
                    echo.insert(key.into(), Value::Null);
                }
                None => {}
            }
        }
        translated.push(Tool {
            name: name.to_owned(),
            chat: json!({ "type": "function", "function": function }),
            echo: Value::Object(echo),
        });
    }
    Ok(translated)
}

/// `tool_choice` as given (`"auto"` when not), with the names of the tools it allows when
/// it is `allowed_tools`.
fn tool_choice(
    value: Option<&Value>,
    tools: &[Tool],
) -> Result<(Value, Option<Vec<String>>), ApiError> {
    let known = |at: &str, object: &Map<String, Value>| {
        let name = required_text(object, at, "name")?;
        if tools.iter().any(|tool| tool.name == name) {
            Ok(name.to_owned())
        } else {
            let problem = format!("{name:?} is not the name of a function tool in tools");
            Err(key_error(at, "name", problem))
        }
    };
    let Some(choice) = value else {
        return Ok((json!("auto"), None));
    };
    let allowed = match choice {
        Value::String(mode) if mode == "required" && tools.is_empty() => {
            return Err(field_error(
                "tool_choice",
                "\"required\" needs at least one tool in tools",
            ));
        }
        Value::String(mode) if ["none", "auto", "required"].contains(&mode.as_str()) => None,
        Value::String(_) => {
            return Err(field_error(
                "tool_choice",
                "must be none, auto, required or an object of type function or allowed_tools",
            ));
        }
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("function") => {
                known("tool_choice", object)?;
                None
            }
            Some("allowed_tools") => {
                if !matches!(
                    text_of(object, "tool_choice", "mode")?,
                    Some("auto" | "required")
                ) {
                    return Err(field_error("tool_choice.mode", "must be auto or required"));
                }
                let allowed = match object.get("tools") {
                    Some(Value::Array(allowed)) if !allowed.is_empty() => allowed,
                    _ => {
                        return Err(field_error(
                            "tool_choice.tools",
                            "must be a non-empty array",
                        ));
                    }
                };
                let mut names = Vec::with_capacity(allowed.len());
                for (j, tool) in allowed.iter().enumerate() {
                    let at = format!("tool_choice.tools[{j}]");
                    let Value::Object(tool) = tool else {
                        return Err(field_error(&at, "must be an object"));
                    };
                    if tool.get("type").and_then(Value::as_str) != Some("function") {
                        let problem = "must be function: only function tools are supported";
                        return Err(key_error(&at, "type", problem));
                    }
                    names.push(known(&at, tool)?);
                }
                Some(names)
            }
            _ => {
                return Err(field_error(
                    "tool_choice.type",
                    "must be function or allowed_tools: only function tools are supported",
                ));
            }
        },
        _ => return Err(field_error("tool_choice", "must be a string or an object")),
    };
    Ok((choice.clone(), allowed))
}

/// A validated `tool_choice` in chat form.
fn chat_choice(choice: &Value) -> Option<Value> {
    match choice.get("type").and_then(Value::as_str) {
        Some("function") => Some(json!({
            "type": "function",
            "function": { "name": choice.get("name")? },
        })),
        Some("allowed_tools") => choice.get("mode").cloned(),
        _ => Some(choice.clone()),
    }
}

/// `text` as echoed (`{"format":{"type":"text"}}` when not given); a JSON format goes into
/// `chat` as `response_format`.
fn text(value: Option<&Value>, chat: &mut Map<String, Value>) -> Result<Value, ApiError> {
    let plain = json!({ "type": "text" });
    let mut text = match value {
        None => return Ok(json!({ "format": plain })),
        Some(Value::Object(text)) => text.clone(),
        Some(_) => return Err(field_error("text", "must be an object")),
    };
    optional(&text, "text", "verbosity", Value::is_string, "a string")?;
    let format = match given(&text, "format") {
        None => {
            text.insert("format".into(), plain);
            return Ok(Value::Object(text));
        }
        Some(Value::Object(format)) => format,
        Some(_) => return Err(field_error("text.format", "must be an object")),
    };
    let at = "text.format";
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            chat.insert("response_format".into(), json!({ "type": "json_object" }));
        }
        Some("json_schema") => {
            let name = required_text(format, at, "name")?;
            if !is_function_name(name) {
                return Err(key_error(at, "name", FUNCTION_NAME));
            }
            let wanted = "an object (a JSON Schema)";
            let schema = required(format, at, "schema", Value::is_object, wanted)?;
            let mut json_schema = Map::from_iter([
                ("name".into(), name.into()),
                ("schema".into(), schema.clone()),
            ]);
            for (key, check, wanted) in [
                (
                    "strict",
                    Value::is_boolean as fn(&Value) -> bool,
                    "a boolean",
                ),
                ("description", Value::is_string, "a string"),
            ] {
                if let Some(value) = optional(format, at, key, check, wanted)? {
                    json_schema.insert(key.into(), value.clone());
                }
            }
            chat.insert(
                "response_format".into(),
                json!({ "type": "json_schema", "json_schema": json_schema }),
            );
        }
        _ => {
            let problem = "must be one of text, json_object, json_schema";
            return Err(key_error(at, "type", problem));
        }
    }
    Ok(Value::Object(text))
}

/// `metadata`: at most 16 string values, keys of at most 64 characters and values of at
/// most 512.
fn metadata(value: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let metadata = match value {
        None => return Ok(Map::new()),
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err(field_error("metadata", "must be an object")),
    };
    if metadata.len() > 16 {
        return Err(field_error("metadata", "must hold at most 16 entries"));
    }
    for (key, value) in metadata {
        if key.chars().count() > 64 {
            return Err(key_error(
                "metadata",
                key,
                "is a key longer than 64 characters",
            ));
        }
        if value.as_str().is_none_or(|text| text.chars().count() > 512) {
            let problem = "must be a string of at most 512 characters";
            return Err(key_error("metadata", key, problem));
        }
    }
    Ok(metadata.clone())
}

/// The keys accepted and ignored: they still must have their type.
fn ignored(object: &Map<String, Value>) -> Result<(), ApiError> {
    let strings = |v: &Value| v.as_array().is_some_and(|v| v.iter().all(Value::is_string));
    optional(object, "", "include", strings, "an array of strings")?;
    for field in ["reasoning", "stream_options"] {
        optional(object, "", field, Value::is_object, "an object")?;
    }
    for field in ["service_tier", "prompt_cache_key", "safety_identifier"] {
        text_of(object, "", field)?;
    }
    Ok(())
}

/// An optional boolean of the body (`default` when absent or null).
fn flag(object: &Map<String, Value>, field: &str, default: bool) -> Result<bool, ApiError> {
    let value = optional(object, "", field, Value::is_boolean, "a boolean")?;
    Ok(value.and_then(Value::as_bool).unwrap_or(default))
}

/// An optional number of the body from 0 to `max`.
fn number(object: &Map<String, Value>, field: &str, max: f64) -> Result<Option<f64>, ApiError> {
    let in_range = |v: &Value| v.as_f64().is_some_and(|n| (0.0..=max).contains(&n));
    let wanted = format!("a number from 0 to {max}");
    Ok(optional(object, "", field, in_range, &wanted)?.and_then(Value::as_f64))
}

/// `key` of `object`, unless it is absent or null (OpenAI's "not given").
fn given<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

/// `key` of the object at `at` (`""`: the body) if given, refused unless it passes `check`.
fn optional<'a>(
    object: &'a Map<String, Value>,
    at: &str,
    key: &str,
    check: impl Fn(&Value) -> bool,
    wanted: &str,
) -> Result<Option<&'a Value>, ApiError> {
    match given(object, key) {
        Some(value) if !check(value) => Err(key_error(at, key, format!("must be {wanted}"))),
        value => Ok(value),
    }
}

/// [`optional`], refused when not given.
fn required<'a>(
    object: &'a Map<String, Value>,
    at: &str,
    key: &str,
    check: impl Fn(&Value) -> bool,
    wanted: &str,
) -> Result<&'a Value, ApiError> {
    optional(object, at, key, check, wanted)?.ok_or_else(|| key_error(at, key, "is required"))
}

/// An optional string.
fn text_of<'a>(
    object: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<Option<&'a str>, ApiError> {
    Ok(optional(object, at, key, Value::is_string, "a string")?.and_then(Value::as_str))
}

/// A required string.
fn required_text<'a>(
    object: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a str, ApiError> {
    text_of(object, at, key)?.ok_or_else(|| key_error(at, key, "is required"))
}

fn non_empty(value: &Value) -> bool {
    value.as_str().is_some_and(|text| !text.is_empty())
}

fn string_or_array(value: &Value) -> bool {
    value.is_string() || value.is_array()
}

/// 400 `invalid_request`: `field` and what is wrong with it, as chat completions words it.
fn field_error(field: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_request", format!("{field} {problem}"))
}

/// [`field_error`] for `key` of the object at `at` (`""`: the body).
fn key_error(at: &str, key: &str, problem: impl std::fmt::Display) -> ApiError {
    if at.is_empty() {
        field_error(key, problem)
    } else {
        field_error(&format!("{at}.{key}"), problem)
    }
}

#[cfg(test)]
mod tests;
