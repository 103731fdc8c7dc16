//! The upstream request body: a [`ChatRequest`] as a Gemini `GenerateContentRequest`.
//!
//! System and developer messages become `systemInstruction`; the rest become `contents`
//! turns with Gemini's two roles, `user` and `model` (tool results are `user` turns), and
//! consecutive turns of one role are merged into one, since Gemini expects the roles to
//! alternate. Sampling parameters go into `generationConfig`, `tools` become
//! `functionDeclarations` and `tool_choice` becomes `toolConfig`. OpenAI fields without a
//! Gemini equivalent are not forwarded; content Gemini cannot take (an image by URL, an
//! unknown part type, a tool result for a call nobody made) is refused rather than
//! silently dropped, since dropping it would change what the model is asked.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::request::{ChatRequest, Message};

/// The placeholder Google documents for replaying a function call whose thought
/// signature is unknown (https://ai.google.dev/gemini-api/docs/thought-signatures).
/// Gemini 3 refuses a replayed `functionCall` part without a signature; a Chat
/// Completions history cannot carry the real one.
const UNKNOWN_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Serialise `request` as a `streamGenerateContent` body for `model`.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] when the request asks for a continuation (Gemini
/// cannot continue a partial answer), has no conversation left to send, or holds
/// something Gemini cannot take (see the module documentation).
pub(crate) fn body(request: &ChatRequest, model: &str) -> Result<Vec<u8>, ProviderError> {
    if request
        .assistant_prefix
        .as_deref()
        .is_some_and(|prefix| !prefix.is_empty())
    {
        return Err(invalid(
            "this upstream does not support continuing a partial answer (prefill)",
        ));
    }
    let mut conversation = Conversation {
        sign_replayed_calls: requires_thought_signatures(model),
        ..Conversation::default()
    };
    for message in &request.messages {
        conversation.push(message)?;
    }
    if conversation.contents.is_empty() {
        return Err(invalid("the conversation has no user or assistant message"));
    }
    let mut body = Map::new();
    body.insert("contents".into(), json!(conversation.contents));
    if !conversation.system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": conversation.system }),
        );
    }
    let config = generation_config(request)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = present(request.extra.get("tools")) {
        let declarations = function_declarations(tools)?;
        if !declarations.is_empty() {
            body.insert(
                "tools".into(),
                json!([{ "functionDeclarations": declarations }]),
            );
        }
    }
    if let Some(choice) = present(request.extra.get("tool_choice")) {
        body.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": function_calling_config(choice)? }),
        );
    }
    serde_json::to_vec(&body).map_err(|_| invalid("the request could not be serialised"))
}

/// Whether `model` is Gemini 3 or later, which refuses replayed function calls without a
/// thought signature. Earlier models get none: they never required one.
fn requires_thought_signatures(model: &str) -> bool {
    let Some(version) = model.strip_prefix("gemini-") else {
        return false;
    };
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    major.parse::<u32>().is_ok_and(|major| major >= 3)
}

/// The conversation as Gemini takes it, built message by message.
#[derive(Default)]
struct Conversation {
    /// `systemInstruction.parts`.
    system: Vec<Value>,
    /// `contents`: alternating turns.
    contents: Vec<Turn>,
    /// The function name of every tool call made so far, by call id, to name the
    /// `functionResponse` that answers it.
    call_names: HashMap<String, String>,
    /// Whether replayed function calls carry [`UNKNOWN_THOUGHT_SIGNATURE`].
    sign_replayed_calls: bool,
}

/// One `contents` entry.
#[derive(Serialize)]
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

impl Conversation {
    fn push(&mut self, message: &Message) -> Result<(), ProviderError> {
        match message.role.as_str() {
            "system" | "developer" => {
                let text = message.text();
                if !text.is_empty() {
                    self.system.push(json!({ "text": text }));
                }
                Ok(())
            }
            "user" => {
                let parts = user_parts(&message.content)?;
                self.append("user", parts);
                Ok(())
            }
            "assistant" => {
                let parts = self.assistant_parts(message)?;
                self.append("model", parts);
                Ok(())
            }
            "tool" => {
                let part = self.function_response(message)?;
                self.append("user", vec![part]);
                Ok(())
            }
            other => Err(invalid(format!(
                "messages with the role {other:?} cannot be sent to Gemini"
            ))),
        }
    }

    /// Add `parts` to the last turn if it has `role`, else start a new turn.
    fn append(&mut self, role: &'static str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        match self.contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => self.contents.push(Turn { role, parts }),
        }
    }

    /// The assistant's text, then one `functionCall` part per tool call.
    fn assistant_parts(&mut self, message: &Message) -> Result<Vec<Value>, ProviderError> {
        let mut parts = Vec::new();
        let text = message.text();
        if !text.is_empty() {
            parts.push(json!({ "text": text }));
        }
        let calls = match present(message.extra.get("tool_calls")) {
            None => return Ok(parts),
            Some(Value::Array(calls)) => calls,
            Some(_) => {
                return Err(invalid(
                    "an assistant message's tool_calls must be an array",
                ));
            }
        };
        for call in calls {
            let function = call.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| invalid("an assistant tool call has no function name"))?;
            let args = call_arguments(function.and_then(|f| f.get("arguments")))?;
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                self.call_names.insert(id.to_owned(), name.to_owned());
            }
            let mut part = Map::new();
            part.insert("functionCall".into(), json!({ "name": name, "args": args }));
            if self.sign_replayed_calls {
                part.insert("thoughtSignature".into(), json!(UNKNOWN_THOUGHT_SIGNATURE));
            }
            parts.push(Value::Object(part));
        }
        Ok(parts)
    }

    /// A tool result as a `functionResponse` part, named after the call it answers.
    fn function_response(&self, message: &Message) -> Result<Value, ProviderError> {
        let id = message.extra.get("tool_call_id").and_then(Value::as_str);
        let name = id
            .and_then(|id| self.call_names.get(id))
            .map(String::as_str)
            .or_else(|| message.extra.get("name").and_then(Value::as_str))
            .ok_or_else(|| {
                invalid(format!(
                    "the tool message for tool_call_id {:?} answers no tool call of an \
                     earlier assistant message",
                    id.unwrap_or_default()
                ))
            })?;
        let content = message.text();
        let response = match serde_json::from_str::<Value>(&content) {
            Ok(Value::Object(object)) => Value::Object(object),
            _ => json!({ "result": content }),
        };
        Ok(json!({ "functionResponse": { "name": name, "response": response } }))
    }
}

/// A user message's content as Gemini parts: text, and images given as `data:` URLs.
fn user_parts(content: &Value) -> Result<Vec<Value>, ProviderError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({ "text": text })]),
        Value::Array(parts) => {
            let mut converted = Vec::with_capacity(parts.len());
            for part in parts {
                converted.extend(user_part(part)?);
            }
            Ok(converted)
        }
        _ => Err(invalid(
            "a message's content must be a string or an array of content parts",
        )),
    }
}

fn user_part(part: &Value) -> Result<Option<Value>, ProviderError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(part
            .get("text")
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(|text| json!({ "text": text }))),
        Some("image_url") => {
            let image = part.get("image_url");
            let url = image
                .and_then(|image| image.get("url"))
                .or(image)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("an image_url content part has no url"))?;
            inline_data(url).map(Some)
        }
        other => Err(invalid(format!(
            "content parts of type {:?} cannot be sent to Gemini",
            other.unwrap_or("(none)")
        ))),
    }
}

/// `data:<mime type>[;…];base64,<data>` as an `inlineData` part.
fn inline_data(url: &str) -> Result<Value, ProviderError> {
    let refused = || invalid("Gemini takes images only as base64 data: URLs");
    let (meta, data) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .ok_or_else(refused)?;
    let mime_type = meta
        .strip_suffix(";base64")
        .and_then(|meta| meta.split(';').next())
        .filter(|mime| mime.contains('/'))
        .ok_or_else(refused)?;
    Ok(json!({ "inlineData": { "mimeType": mime_type, "data": data } }))
}

/// A tool call's `arguments` (a JSON string, or already an object) as the object
/// Gemini's `args` must be.
fn call_arguments(arguments: Option<&Value>) -> Result<Value, ProviderError> {
    let refused = || invalid("an assistant tool call's arguments are not a JSON object");
    match arguments {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(args)) => Ok(Value::Object(args.clone())),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(json!({})),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(args @ Value::Object(_)) => Ok(args),
            _ => Err(refused()),
        },
        Some(_) => Err(refused()),
    }
}

/// `maxOutputTokens`, `temperature`, `topP`, `stopSequences` and `seed`, those given.
fn generation_config(request: &ChatRequest) -> Result<Map<String, Value>, ProviderError> {
    let mut config = Map::new();
    if let Some(max_tokens) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), json!(top_p));
    }
    let stop = match present(request.extra.get("stop")) {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|stop| stop.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop must be a string or an array of strings"))?,
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    };
    if !stop.is_empty() {
        config.insert("stopSequences".into(), json!(stop));
    }
    if let Some(seed) = request.seed {
        config.insert("seed".into(), json!(seed));
    }
    Ok(config)
}

/// Chat Completions `tools` as Gemini `functionDeclarations`.
fn function_declarations(tools: &Value) -> Result<Vec<Value>, ProviderError> {
    let Value::Array(tools) = tools else {
        return Err(invalid("tools must be an array"));
    };
    let mut declarations = Vec::with_capacity(tools.len());
    for tool in tools {
        match tool.get("type").and_then(Value::as_str) {
            None | Some("function") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "tools of type {other:?} cannot be sent to Gemini"
                )));
            }
        }
        let function = tool.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a tool has no function name"))?;
        let mut declaration = Map::new();
        declaration.insert("name".into(), json!(name));
        for field in ["description", "parameters"] {
            if let Some(value) = present(function.and_then(|f| f.get(field))) {
                declaration.insert(field.into(), value.clone());
            }
        }
        declarations.push(Value::Object(declaration));
    }
    Ok(declarations)
}

/// Chat Completions `tool_choice` as Gemini's `functionCallingConfig`.
fn function_calling_config(choice: &Value) -> Result<Value, ProviderError> {
    match choice {
        Value::String(choice) => match choice.as_str() {
            "auto" => Ok(json!({ "mode": "AUTO" })),
            "none" => Ok(json!({ "mode": "NONE" })),
            "required" => Ok(json!({ "mode": "ANY" })),
            other => Err(invalid(format!(
                "tool_choice {other:?} cannot be sent to Gemini"
            ))),
        },
        Value::Object(_) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice names no function"))?;
            Ok(json!({ "mode": "ANY", "allowedFunctionNames": [name] }))
        }
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// `value` unless it is absent or null.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|value| !value.is_null())
}

fn invalid(message: impl Into<String>) -> ProviderError {
    ProviderError::InvalidRequest(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> ChatRequest {
        let mut base = json!({ "model": "client-name" });
        if let (Value::Object(base), Value::Object(value)) = (&mut base, value) {
            base.extend(value);
        }
        serde_json::from_value(base).unwrap()
    }

    fn sent(request: &ChatRequest) -> Value {
        serde_json::from_slice(&body(request, "gemini-2.5-flash").unwrap()).unwrap()
    }

    fn refusal(request: &ChatRequest) -> String {
        match body(request, "gemini-2.5-flash") {
            Err(ProviderError::InvalidRequest(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn system_and_developer_messages_become_the_system_instruction() {
        let body = sent(&request(json!({
            "messages": [
                {"role": "system", "content": "You are a cat."},
                {"role": "developer", "content": [{"type": "text", "text": "Your name is Neko."}]},
                {"role": "user", "content": "Hello there"},
            ],
        })));
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "You are a cat."}, {"text": "Your name is Neko."}]})
        );
        assert_eq!(
            body["contents"],
            json!([{"role": "user", "parts": [{"text": "Hello there"}]}])
        );
    }

    #[test]
    fn roles_map_to_user_and_model_and_consecutive_turns_merge() {
        let body = sent(&request(json!({
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                ]},
                {"role": "assistant", "content": "A pixel."},
                {"role": "assistant", "content": "A red one."},
                {"role": "user", "content": "Thanks"},
            ],
        })));
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [
                    {"text": "Hi"},
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                ]},
                {"role": "model", "parts": [{"text": "A pixel."}, {"text": "A red one."}]},
                {"role": "user", "parts": [{"text": "Thanks"}]},
            ])
        );
        assert!(body.get("systemInstruction").is_none());
        assert!(body.get("generationConfig").is_none());
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn sampling_parameters_go_into_the_generation_config_and_the_rest_stays_behind() {
        let body = sent(&request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "stop": ["\n\n", "END"],
            "stream": false,
            "user": "u-1",
            "presence_penalty": 1.0,
        })));
        assert_eq!(
            body["generationConfig"],
            json!({
                "maxOutputTokens": 100,
                "temperature": 0.5,
                "topP": 0.9,
                "stopSequences": ["\n\n", "END"],
                "seed": 7,
            })
        );
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["contents", "generationConfig"]);

        let one_stop = sent(&request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "stop": "END",
        })));
        assert_eq!(
            one_stop["generationConfig"],
            json!({"stopSequences": ["END"]})
        );
    }

    #[test]
    fn tools_become_function_declarations_and_tool_choice_the_calling_mode() {
        let tools = json!([{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }, {
            "type": "function",
            "function": {"name": "now"},
        }]);
        let with_choice = |choice: Value| {
            sent(&request(json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tools": tools,
                "tool_choice": choice,
            })))
        };
        let body = with_choice(json!("auto"));
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
                {"name": "now"},
            ]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "AUTO"}})
        );
        assert_eq!(
            with_choice(json!("none"))["toolConfig"]["functionCallingConfig"],
            json!({"mode": "NONE"})
        );
        assert_eq!(
            with_choice(json!("required"))["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY"})
        );
        assert_eq!(
            with_choice(json!({"type": "function", "function": {"name": "now"}}))["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["now"]})
        );
        assert!(with_choice(Value::Null).get("toolConfig").is_none());
    }

    #[test]
    fn tool_calls_and_their_results_become_function_calls_and_named_responses() {
        let body = sent(&request(json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and the time?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "now", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"celsius\": 21}"},
            ],
        })));
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and the time?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "now", "args": {}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "now", "response": {"result": "12:00"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}},
                ]},
            ])
        );
    }

    #[test]
    fn replayed_calls_carry_the_documented_placeholder_signature_on_gemini_3_only() {
        let request = request(json!({
            "messages": [
                {"role": "user", "content": "time?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c", "content": "noon"},
            ],
        }));
        let part = |model: &str| -> Value {
            let body: Value = serde_json::from_slice(&body(&request, model).unwrap()).unwrap();
            body["contents"][1]["parts"][0].clone()
        };
        assert_eq!(
            part("gemini-3-pro-preview"),
            json!({
                "functionCall": {"name": "now", "args": {}},
                "thoughtSignature": "skip_thought_signature_validator",
            })
        );
        assert_eq!(
            part("gemini-3.1-flash")["thoughtSignature"],
            UNKNOWN_THOUGHT_SIGNATURE
        );
        assert!(part("gemini-2.5-flash").get("thoughtSignature").is_none());
        assert!(part("gemma-3-27b-it").get("thoughtSignature").is_none());
        assert!(
            part("gemini-flash-latest")
                .get("thoughtSignature")
                .is_none()
        );
    }

    #[test]
    fn what_gemini_cannot_take_is_refused_not_dropped() {
        let user =
            |content: Value| request(json!({"messages": [{"role": "user", "content": content}]}));
        assert!(refusal(&request(json!({"messages": []}))).contains("no user or assistant"));
        assert!(
            refusal(&request(
                json!({"messages": [{"role": "system", "content": "only"}]})
            ))
            .contains("no user or assistant")
        );
        assert!(
            refusal(&user(
                json!([{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}])
            ))
            .contains("data: URLs")
        );
        assert!(
            refusal(&user(
                json!([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])
            ))
            .contains("data: URLs")
        );
        assert!(
            refusal(&user(json!([{"type": "input_audio", "input_audio": {}}])))
                .contains("input_audio")
        );
        assert!(
            refusal(&request(json!({
                "messages": [{"role": "tool", "tool_call_id": "ghost", "content": "x"}],
            })))
            .contains("ghost")
        );
        assert!(
            refusal(&request(json!({
                "messages": [{"role": "assistant", "tool_calls": [
                    {"id": "c", "function": {"name": "f", "arguments": "[1, 2]"}},
                ]}],
            })))
            .contains("JSON object")
        );
        let mut prefixed = user(json!("hi"));
        prefixed.assistant_prefix = Some("Once upon".into());
        assert!(refusal(&prefixed).contains("prefill"));
        prefixed.assistant_prefix = Some(String::new());
        assert!(body(&prefixed, "gemini-2.5-flash").is_ok());
        assert!(
            refusal(&request(json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tool_choice": "sometimes",
            })))
            .contains("sometimes")
        );
    }
}
