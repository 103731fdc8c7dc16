//! The Gemini adapter against a recording fake upstream serving the streams in
//! `fixtures/gemini/` (see its README for their sources).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Server, collect, fake_upstream, request};
use providers::gemini::{GeminiConfig, GeminiProvider};
use providers::{ChatRequest, Delta, Provider, ProviderError};
use serde_json::json;

const TEXT: &str = include_str!("fixtures/gemini/text.sse");
const FUNCTION_CALL: &str = include_str!("fixtures/gemini/function_call.sse");
const SAFETY: &str = include_str!("fixtures/gemini/safety.sse");
const PROMPT_BLOCKED: &str = include_str!("fixtures/gemini/prompt_blocked.sse");
const CUT: &str = include_str!("fixtures/gemini/cut.sse");
const ERROR: &str = include_str!("fixtures/gemini/error.sse");

/// Any model's `streamGenerateContent` call (the last path segment is
/// `{model}:streamGenerateContent`).
const ANY_MODEL: &str = "/v1beta/models/{call}";
const EVENT_STREAM: &[(&str, &str)] = &[("content-type", "text/event-stream")];

fn base_url(server: &Server) -> String {
    format!("http://{}/v1beta", server.addr)
}

fn adapter(server: &Server) -> GeminiProvider {
    GeminiProvider::new(GeminiConfig::new(base_url(server), "gemini-2.5-flash")).unwrap()
}

/// Serve `reply` as an event stream and collect the answer to `request`.
async fn answer(reply: &'static str, request: ChatRequest) -> (Vec<Delta>, Option<ProviderError>) {
    let (server, _requests) = fake_upstream(ANY_MODEL, 200, EVENT_STREAM, reply).await;
    collect(adapter(&server).stream(request).await.unwrap()).await
}

/// The error an upstream answering `status` with `headers` and `body` ends a request with.
async fn refusal(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> ProviderError {
    let (server, _requests) = fake_upstream(ANY_MODEL, status, headers, body).await;
    adapter(&server).stream(request("hi")).await.err().unwrap()
}

fn finish(reason: &str) -> Delta {
    Delta::Finish {
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_text_answer_streams_as_text_then_the_last_usage_then_the_finish() {
    let (deltas, error) = answer(TEXT, request("Explain how AI works in a few words")).await;

    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            Delta::Text("AI learns patterns".into()),
            Delta::Text(" from data to make predictions".into()),
            Delta::Text(" or decisions.".into()),
            Delta::Usage {
                prompt_tokens: 8,
                completion_tokens: 11 + 643,
                cached_tokens: 0,
            },
            finish("stop"),
        ]
    );
}

#[tokio::test]
async fn parallel_function_calls_become_whole_tool_calls_and_finish_as_tool_calls() {
    let (deltas, error) = answer(FUNCTION_CALL, request("Turn this place into a party!")).await;

    assert_eq!(error, None);
    let calls: Vec<(u32, &str, &str, &str)> = deltas
        .iter()
        .filter_map(|delta| match delta {
            Delta::ToolCall {
                index,
                id: Some(id),
                name: Some(name),
                arguments,
            } => Some((*index, id.as_str(), name.as_str(), arguments.as_str())),
            _ => None,
        })
        .collect();
    let summary: Vec<(u32, &str, &str)> = calls
        .iter()
        .map(|(index, _, name, arguments)| (*index, *name, *arguments))
        .collect();
    assert_eq!(
        summary,
        [
            (0, "power_disco_ball", r#"{"power":true}"#),
            (1, "start_music", r#"{"energetic":true,"loud":true}"#),
            (2, "dim_lights", r#"{"brightness":0.5}"#),
        ]
    );
    // Gemini sent no ids: made-up ones, distinct within the answer.
    let mut ids: Vec<&str> = calls.iter().map(|(_, id, _, _)| *id).collect();
    assert!(ids.iter().all(|id| id.starts_with("call_")), "{ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        deltas[3..],
        [
            Delta::Usage {
                prompt_tokens: 154,
                completion_tokens: 36 + 68,
                cached_tokens: 0,
            },
            finish("tool_calls"),
        ]
    );
}

#[tokio::test]
async fn the_request_goes_to_the_models_sse_url_with_the_key_header_and_a_translated_body() {
    // A literal route: any other path would be a 404.
    let (server, mut requests) = fake_upstream(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        200,
        EVENT_STREAM,
        TEXT,
    )
    .await;
    let mut config = GeminiConfig::new(format!("{}/", base_url(&server)), "gemini-2.5-flash");
    config.api_key = Some("AIza-test-key".into());
    config.extra_headers = vec![("x-goog-user-project".into(), "project-1".into())];
    let provider = GeminiProvider::new(config).unwrap();
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "gateway-name",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            }]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\":21}"},
        ],
        "max_tokens": 200,
        "temperature": 0.2,
        "stop": "END",
        "stream": true,
        "user": "u-1",
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }}],
        "tool_choice": "auto",
    }))
    .unwrap();

    let (_, error) = collect(provider.stream(request).await.unwrap()).await;
    let recorded = requests.recv().await.unwrap();

    assert_eq!(error, None);
    assert_eq!(recorded.headers["x-query"], "alt=sse");
    assert_eq!(recorded.headers["x-goog-api-key"], "AIza-test-key");
    assert_eq!(recorded.headers["x-goog-user-project"], "project-1");
    assert_eq!(recorded.headers["content-type"], "application/json");
    assert!(recorded.headers.get("authorization").is_none());
    assert_eq!(
        recorded.body,
        json!({
            "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "What's the weather in Paris?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}},
                ]},
            ],
            "generationConfig": {
                "maxOutputTokens": 200,
                "temperature": 0.2,
                "stopSequences": ["END"],
            },
            "tools": [{"functionDeclarations": [{
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        })
    );
}

#[tokio::test]
async fn blocked_answers_and_blocked_prompts_finish_as_content_filter() {
    let (deltas, error) = answer(SAFETY, request("How do I …")).await;
    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            Delta::Text("Here is how".into()),
            Delta::Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
                cached_tokens: 0,
            },
            finish("content_filter"),
        ]
    );

    let (deltas, error) = answer(PROMPT_BLOCKED, request("How do I …")).await;
    assert_eq!(error, None);
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

#[tokio::test]
async fn a_body_that_ends_without_a_finish_reason_is_interrupted() {
    let (deltas, error) = answer(CUT, request("Explain how AI works in a few words")).await;

    assert_eq!(
        deltas,
        [
            Delta::Text("AI learns patterns".into()),
            Delta::Text(" from data to make predictions".into()),
        ]
    );
    let error = error.unwrap();
    assert!(matches!(error, ProviderError::Interrupted(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn an_error_mid_stream_is_interrupted_without_the_upstreams_words() {
    let (deltas, error) = answer(ERROR, request("hi")).await;

    assert_eq!(deltas, [Delta::Text("AI learns patterns".into())]);
    let error = error.unwrap();
    assert!(matches!(error, ProviderError::Interrupted(_)), "{error:?}");
    assert!(!error.to_string().contains("overloaded"), "{error}");
}

#[tokio::test]
async fn resource_exhausted_is_a_retryable_429_with_retry_after() {
    let error = refusal(
        429,
        &[("content-type", "application/json"), ("retry-after", "7")],
        r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
    )
    .await;

    assert_eq!(
        error,
        ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        }
    );
    assert!(error.is_retryable());
    assert!(!error.to_string().contains("exhausted"));
}

#[tokio::test]
async fn an_input_too_long_is_rejected_as_context_length_exceeded() {
    let error = refusal(
        400,
        &[("content-type", "application/json")],
        r#"{"error":{"code":400,"message":"The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
    )
    .await;

    assert_eq!(
        error,
        ProviderError::Rejected {
            status: 400,
            message: "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).".into(),
            code: Some("context_length_exceeded".into()),
        }
    );
    assert!(error.is_the_requests_fault());
    assert!(!error.is_retryable());
    assert_eq!(error.code(), "context_length_exceeded");
    assert_eq!(error.status_code(), 400);
}

#[tokio::test]
async fn a_key_gemini_refuses_is_our_fault_not_the_requests() {
    let error = refusal(
        400,
        &[("content-type", "application/json")],
        r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#,
    )
    .await;

    assert_eq!(
        error,
        ProviderError::Status {
            status: 400,
            retry_after: None,
        }
    );
    assert!(!error.is_the_requests_fault());
    assert_eq!(error.status_code(), 502);
    assert!(!error.to_string().contains("API key"), "{error}");
}

#[tokio::test]
async fn a_continuation_is_refused_before_anything_is_sent() {
    let (server, mut requests) = fake_upstream(ANY_MODEL, 200, EVENT_STREAM, TEXT).await;
    let mut request = request("hi");
    request.assistant_prefix = Some("Once upon".into());

    let error = adapter(&server).stream(request).await.err().unwrap();

    assert!(
        matches!(error, ProviderError::InvalidRequest(_)),
        "{error:?}"
    );
    assert!(requests.try_recv().is_err());
}
