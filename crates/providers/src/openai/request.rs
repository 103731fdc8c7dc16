//! The upstream request body: a [`ChatRequest`] as a streaming Chat Completions request.
//!
//! The client's own `stream` and `stream_options` (kept in `extra`) are replaced: the
//! gateway always streams upstream and always asks for usage. A continuation prefix
//! becomes a final assistant message, marked as the target's [`Continuation`] mode says.

use serde_json::{Map, Value, json};

use crate::Continuation;
use crate::error::ProviderError;
use crate::request::ChatRequest;

/// Serialise `request` for an upstream that knows the model as `model`.
///
/// # Errors
/// [`ProviderError::InvalidRequest`] when the request has a prefix but the upstream
/// cannot continue, or cannot be serialised.
pub(crate) fn body(
    request: &ChatRequest,
    model: &str,
    continuation: Continuation,
) -> Result<Vec<u8>, ProviderError> {
    let mut map = match serde_json::to_value(request) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => {
            return Err(ProviderError::InvalidRequest(
                "the request could not be serialised".into(),
            ));
        }
    };
    map.insert("model".into(), Value::String(model.to_owned()));
    map.insert("stream".into(), Value::Bool(true));
    map.insert("stream_options".into(), json!({ "include_usage": true }));
    if let Some(prefix) = request
        .assistant_prefix
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if continuation == Continuation::None {
            return Err(ProviderError::InvalidRequest(
                "this upstream does not support continuing a partial answer (prefill)".into(),
            ));
        }
        if let Some(Value::Array(messages)) = map.get_mut("messages") {
            let mut message = Map::new();
            message.insert("role".into(), Value::String("assistant".into()));
            message.insert("content".into(), Value::String(prefix.to_owned()));
            if continuation == Continuation::PrefixFlag {
                message.insert("prefix".into(), Value::Bool(true));
            }
            messages.push(Value::Object(message));
        }
        if continuation == Continuation::ContinueFinalMessage {
            map.insert("continue_final_message".into(), Value::Bool(true));
            map.insert("add_generation_prompt".into(), Value::Bool(false));
        }
    }
    serde_json::to_vec(&map)
        .map_err(|_| ProviderError::InvalidRequest("the request could not be serialised".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> ChatRequest {
        let mut value = json!({
            "model": "client-name",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        });
        if let (Value::Object(map), Value::Object(extra)) = (&mut value, extra) {
            map.extend(extra);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn streams_with_usage_under_the_upstream_name_and_passes_extras_through() {
        let request = request(json!({
            "stream": false,
            "stream_options": {"include_usage": false, "x": 1},
            "tools": [{"type": "function"}],
            "user": "u1",
        }));
        let body: Value =
            serde_json::from_slice(&body(&request, "gpt-up", Continuation::None).unwrap()).unwrap();
        assert_eq!(body["model"], "gpt-up");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["tools"], json!([{"type": "function"}]));
        assert_eq!(body["user"], "u1");
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_prefix_is_sent_as_the_continuation_mode_says() {
        let mut request = request(json!({}));
        request.assistant_prefix = Some("Once upon".into());
        assert!(matches!(
            body(&request, "m", Continuation::None),
            Err(ProviderError::InvalidRequest(_))
        ));
        let sent = |mode| -> Value {
            serde_json::from_slice(&body(&request, "m", mode).unwrap()).unwrap()
        };
        let plain = sent(Continuation::AssistantMessage);
        assert_eq!(
            plain["messages"][1],
            json!({"role": "assistant", "content": "Once upon"})
        );
        assert!(plain.get("assistant_prefix").is_none());
        assert!(plain.get("continue_final_message").is_none());
        let flagged = sent(Continuation::PrefixFlag);
        assert_eq!(
            flagged["messages"][1],
            json!({"role": "assistant", "content": "Once upon", "prefix": true})
        );
        let vllm = sent(Continuation::ContinueFinalMessage);
        assert_eq!(vllm["messages"][1]["content"], "Once upon");
        assert_eq!(vllm["continue_final_message"], true);
        assert_eq!(vllm["add_generation_prompt"], false);
    }
}
