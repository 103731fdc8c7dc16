//! The Anthropic adapter against a fake Messages API serving the documented streams in
//! `fixtures/anthropic/` (see its README for their sources).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{collect, fake_upstream, request, text};
use providers::anthropic::{AnthropicConfig, AnthropicProvider};
use providers::{Continuation, Delta, Provider, ProviderError};
use serde_json::{Value, json};

const TEXT: &str = include_str!("fixtures/anthropic/text.sse");
const TOOL_USE: &str = include_str!("fixtures/anthropic/tool_use.sse");
const THINKING: &str = include_str!("fixtures/anthropic/thinking.sse");
const OVERLOADED: &str = include_str!("fixtures/anthropic/overloaded.sse");
const CUT: &str = include_str!("fixtures/anthropic/cut.sse");

const ROUTE: &str = "/v1/messages";
const EVENT_STREAM: (&str, &str) = ("content-type", "text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");

fn config(server: &common::Server) -> AnthropicConfig {
    AnthropicConfig::new(format!("http://{}", server.addr), "claude-upstream")
}

fn adapter(server: &common::Server) -> AnthropicProvider {
    AnthropicProvider::new(config(server)).unwrap()
}

/// The deltas and the error of one answer from a fake upstream serving `reply`.
async fn answer(reply: &'static str) -> (Vec<Delta>, Option<ProviderError>) {
    let (server, _requests) = fake_upstream(ROUTE, 200, &[EVENT_STREAM], reply).await;
    collect(adapter(&server).stream(request("hi")).await.unwrap()).await
}

/// The error a fake upstream answering `status` with `headers` and `body` causes.
async fn refusal(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> ProviderError {
    let (server, _requests) = fake_upstream(ROUTE, status, headers, body).await;
    adapter(&server)
        .stream(request("hi"))
        .await
        .err()
        .expect("an error status is an error")
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Delta {
    Delta::Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
    }
}

fn finish(reason: &str) -> Delta {
    Delta::Finish {
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_text_answer_streams_as_text_usage_and_finish() {
    let (deltas, error) = answer(TEXT).await;

    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            usage(25, 1),
            Delta::Text("Hello".into()),
            Delta::Text("!".into()),
            usage(25, 15),
            finish("stop"),
        ]
    );
}

#[tokio::test]
async fn a_tool_use_block_becomes_tool_call_deltas() {
    let (deltas, error) = answer(TOOL_USE).await;

    assert_eq!(error, None);
    assert_eq!(
        text(&deltas),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let calls: Vec<&Delta> = deltas
        .iter()
        .filter(|d| matches!(d, Delta::ToolCall { .. }))
        .collect();
    assert_eq!(
        calls[0],
        &Delta::ToolCall {
            index: 0,
            id: Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()),
            name: Some("get_weather".into()),
            arguments: String::new(),
        }
    );
    let mut arguments = String::new();
    for call in &calls[1..] {
        let Delta::ToolCall {
            index,
            id,
            name,
            arguments: fragment,
        } = call
        else {
            unreachable!()
        };
        assert_eq!((*index, id, name), (0, &None, &None));
        arguments.push_str(fragment);
    }
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    assert_eq!(deltas[0], usage(472, 2));
    assert_eq!(
        deltas[deltas.len() - 2..],
        [usage(472, 89), finish("tool_calls")]
    );
}

#[tokio::test]
async fn thinking_is_not_shown_only_the_answer() {
    let (deltas, error) = answer(THINKING).await;

    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            Delta::Text("The greatest common divisor of 1071 and 462 is **21**.".into()),
            finish("stop"),
        ]
    );
}

#[tokio::test]
async fn an_overloaded_error_mid_stream_interrupts_after_the_text() {
    let (deltas, error) = answer(OVERLOADED).await;

    assert_eq!(deltas, [usage(25, 1), Delta::Text("Hello".into())]);
    let error = error.expect("the error event ends the stream");
    assert!(matches!(error, ProviderError::Interrupted(_)), "{error:?}");
    assert!(error.is_retryable());
    assert!(!error.to_string().contains("Overloaded"), "{error}");
}

#[tokio::test]
async fn a_cut_stream_is_an_interruption_that_still_reports_the_prompt() {
    let (deltas, error) = answer(CUT).await;

    assert_eq!(deltas, [usage(25, 1), Delta::Text("Hello".into())]);
    assert!(
        matches!(error, Some(ProviderError::Interrupted(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_request_carries_the_key_the_version_the_extra_headers_and_a_messages_body() {
    let (server, mut requests) = fake_upstream(ROUTE, 200, &[EVENT_STREAM], TEXT).await;
    let mut config = config(&server);
    config.api_key = Some("sk-ant-test".into());
    config.extra_headers = vec![("anthropic-beta".into(), "some-feature-2025-01-01".into())];
    let provider = AnthropicProvider::new(config).unwrap();
    let chat = serde_json::from_value(json!({
        "model": "gateway-name",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "stop": ["\n\n"],
        "seed": 3,
        "stream": false,
        "stream_options": {"include_usage": true},
    }))
    .unwrap();

    let (_, error) = collect(provider.stream(chat).await.unwrap()).await;
    let recorded = requests.recv().await.unwrap();

    assert_eq!(error, None);
    assert_eq!(recorded.headers["x-api-key"], "sk-ant-test");
    assert_eq!(recorded.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        recorded.headers["anthropic-beta"],
        "some-feature-2025-01-01"
    );
    assert_eq!(recorded.headers["content-type"], "application/json");
    assert!(recorded.headers.get("authorization").is_none());
    assert_eq!(
        recorded.body,
        json!({
            "model": "claude-upstream",
            "max_tokens": 4096,
            "stream": true,
            "system": "Be brief.",
            "stop_sequences": ["\n\n"],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                    "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                    "content": "18°C"}]},
            ],
            "tools": [{"name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"},
        })
    );
}

#[tokio::test]
async fn overloaded_and_rate_limited_answers_are_retryable_with_retry_after() {
    let overloaded = refusal(
        529,
        &[JSON, ("retry-after", "30")],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .await;
    assert_eq!(
        overloaded,
        ProviderError::Status {
            status: 529,
            retry_after: Some(Duration::from_secs(30)),
        }
    );
    assert!(overloaded.is_retryable());
    assert!(!overloaded.is_the_requests_fault());

    let limited = refusal(
        429,
        &[JSON, ("retry-after", "7")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
    )
    .await;
    assert_eq!(
        limited,
        ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        }
    );
    assert!(limited.is_retryable());
    assert_eq!(limited.status_code(), 429);
}

#[tokio::test]
async fn a_prompt_too_long_is_refused_as_context_length_exceeded() {
    let too_long = refusal(
        400,
        &[JSON],
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
    )
    .await;
    assert_eq!(
        too_long,
        ProviderError::Rejected {
            status: 400,
            message: "prompt is too long: 210000 tokens > 200000 maximum".into(),
            code: Some("context_length_exceeded".into()),
        }
    );
    assert_eq!(too_long.code(), "context_length_exceeded");
    assert!(too_long.is_the_requests_fault());
    assert!(!too_long.is_retryable());

    let other = refusal(
        400,
        &[JSON],
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"temperature: range: 0..1"}}"#,
    )
    .await;
    assert_eq!(other.code(), "invalid_request_error");
    assert_eq!(other.to_string(), "temperature: range: 0..1");
}

#[tokio::test]
async fn a_partial_answer_is_continued_without_repeating_its_trailing_whitespace() {
    let reply = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"time, a fox.\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":6}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let (server, mut requests) = fake_upstream(ROUTE, 200, &[EVENT_STREAM], reply).await;
    let mut config = config(&server);
    config.continuation = Continuation::AssistantMessage;
    let provider = AnthropicProvider::new(config).unwrap();
    let mut chat = request("Tell a story");
    chat.assistant_prefix = Some("Once upon a ".into());

    let (deltas, error) = collect(provider.stream(chat).await.unwrap()).await;
    let recorded = requests.recv().await.unwrap();

    assert_eq!(error, None);
    assert_eq!(
        format!("Once upon a {}", text(&deltas)),
        "Once upon a time, a fox."
    );
    assert_eq!(
        recorded.body["messages"][1],
        json!({"role": "assistant", "content": [{"type": "text", "text": "Once upon a"}]})
    );
    assert_eq!(deltas.last(), Some(&finish("stop")));
}

#[tokio::test]
async fn a_prefix_for_a_model_without_prefill_is_refused_before_sending() {
    let (server, mut requests) = fake_upstream(ROUTE, 200, &[EVENT_STREAM], TEXT).await;
    let mut chat = request("hi");
    chat.assistant_prefix = Some("partial".into());

    let error = adapter(&server).stream(chat).await.err().unwrap();

    assert!(
        matches!(error, ProviderError::InvalidRequest(_)),
        "{error:?}"
    );
    assert!(requests.try_recv().is_err(), "nothing was sent upstream");
}
