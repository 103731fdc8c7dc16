//! The OpenAI adapter against the simulator's HTTP server and recording fake upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{collect, recording_upstream, request, simulator, text};
use providers::openai::{OpenAiConfig, OpenAiProvider};
use providers::simulator::SimulatorConfig;
use providers::{Delta, Provider, ProviderError};
use serde_json::json;

fn adapter(base_url: String) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig::new(base_url, "upstream-model")).unwrap()
}

#[tokio::test]
async fn a_full_answer_streams_as_text_usage_and_finish() {
    let config = SimulatorConfig {
        tokens: 20,
        seed: 3,
        ..SimulatorConfig::default()
    };
    let (simulator, server) = simulator(config).await;
    let mut request = request("hello there");
    request.seed = Some(11);

    let stream = adapter(server.base_url())
        .stream(request.clone())
        .await
        .unwrap();
    let (deltas, error) = collect(stream).await;

    assert_eq!(error, None);
    assert_eq!(text(&deltas), simulator.answer_text(&request));
    assert_eq!(
        deltas
            .iter()
            .filter(|d| matches!(d, Delta::Text(_)))
            .count(),
        20
    );
    assert_eq!(
        deltas[deltas.len() - 2..],
        [
            Delta::Usage {
                prompt_tokens: 2,
                completion_tokens: 20,
                cached_tokens: 0,
            },
            Delta::Finish {
                reason: "stop".into()
            },
        ]
    );
    assert_eq!(simulator.requests(), 1);
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_are_retryable() {
    let config = SimulatorConfig {
        error_status: Some(429),
        retry_after_s: Some(7),
        ..SimulatorConfig::default()
    };
    let (simulator, server) = simulator(config).await;

    let error = adapter(server.base_url())
        .stream(request("hi"))
        .await
        .err()
        .unwrap();

    assert_eq!(
        error,
        ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(error.is_retryable());
    assert_eq!(simulator.requests(), 1);
}

#[tokio::test]
async fn a_refused_request_carries_the_upstreams_explanation_and_other_errors_hide_it() {
    let (refusing, _requests) = recording_upstream(
        400,
        "application/json",
        r#"{"error":{"message":"the context is too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
    )
    .await;
    let error = adapter(refusing.base_url())
        .stream(request("hi"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        error,
        ProviderError::Rejected {
            status: 400,
            message: "the context is too long".into(),
            code: Some("context_length_exceeded".into()),
        }
    );
    assert!(!error.is_retryable());
    assert!(error.is_the_requests_fault());
    assert_eq!(error.status_code(), 400);

    // Not about the client's request (our key, the upstream's state): only the status.
    let (unauthorised, _requests) = recording_upstream(
        401,
        "application/json",
        r#"{"error":{"message":"secret upstream detail","type":"invalid_request_error"}}"#,
    )
    .await;
    let error = adapter(unauthorised.base_url())
        .stream(request("hi"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        error,
        ProviderError::Status {
            status: 401,
            retry_after: None
        }
    );
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains("secret"));
}

#[tokio::test]
async fn a_cut_stream_is_an_interruption_never_a_finish() {
    let config = SimulatorConfig {
        tokens: 10,
        fail_after: Some(4),
        ..SimulatorConfig::default()
    };
    let (simulator, server) = simulator(config).await;
    let request = request("hi");

    let stream = adapter(server.base_url())
        .stream(request.clone())
        .await
        .unwrap();
    let (deltas, error) = collect(stream).await;

    assert!(
        matches!(error, Some(ProviderError::Interrupted(_))),
        "{error:?}"
    );
    assert_eq!(deltas.len(), 4);
    assert!(deltas.iter().all(|d| matches!(d, Delta::Text(_))));
    assert!(simulator.answer_text(&request).starts_with(&text(&deltas)));
}

#[tokio::test]
async fn the_upstream_request_streams_under_the_mapped_name_with_the_key_and_extras() {
    let reply = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (server, mut requests) = recording_upstream(200, "text/event-stream", reply).await;
    let mut config = OpenAiConfig::new(server.base_url(), "upstream-model");
    config.api_key = Some("sk-test".into());
    config.extra_headers = vec![("OpenAI-Organization".into(), "org-1".into())];
    let provider = OpenAiProvider::new(config).unwrap();
    let mut request = request("hi");
    request.temperature = Some(0.5);
    request.extra.insert("stream".into(), json!(false));
    request
        .extra
        .insert("stream_options".into(), json!({"include_usage": false}));
    request.extra.insert("user".into(), json!("u-1"));
    request.extra.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "f"}}]),
    );

    let (deltas, error) = collect(provider.stream(request).await.unwrap()).await;
    let recorded = requests.recv().await.unwrap();

    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            Delta::Text("ok".into()),
            Delta::Finish {
                reason: "stop".into()
            }
        ]
    );
    assert_eq!(recorded.headers["authorization"], "Bearer sk-test");
    assert_eq!(recorded.headers["openai-organization"], "org-1");
    assert_eq!(recorded.headers["content-type"], "application/json");
    let body = recorded.body;
    assert_eq!(body["model"], "upstream-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["user"], "u-1");
    assert_eq!(body["tools"][0]["function"]["name"], "f");
    assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
}

#[tokio::test]
async fn tool_call_chunks_become_tool_call_deltas() {
    let reply = concat!(
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,",
        "\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",",
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,",
        "\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,",
        "\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n",
        "data: [DONE]\n\n",
    );
    let (server, _requests) =
        recording_upstream(200, "text/event-stream; charset=utf-8", reply).await;

    let (deltas, error) = collect(
        adapter(server.base_url())
            .stream(request("weather?"))
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(error, None);
    assert_eq!(
        deltas,
        [
            Delta::ToolCall {
                index: 0,
                id: Some("call_abc".into()),
                name: Some("get_weather".into()),
                arguments: String::new(),
            },
            Delta::ToolCall {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"city\":".into(),
            },
            Delta::ToolCall {
                index: 0,
                id: None,
                name: None,
                arguments: "\"Paris\"}".into(),
            },
            Delta::Usage {
                prompt_tokens: 9,
                completion_tokens: 5,
                cached_tokens: 0,
            },
            Delta::Finish {
                reason: "tool_calls".into()
            },
        ]
    );
}

#[tokio::test]
async fn a_body_that_ends_without_a_finish_reason_is_interrupted() {
    let reply = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n";
    let (server, _requests) = recording_upstream(200, "text/event-stream", reply).await;

    let (deltas, error) = collect(
        adapter(server.base_url())
            .stream(request("hi"))
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(deltas, [Delta::Text("par".into())]);
    assert!(
        matches!(error, Some(ProviderError::Interrupted(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_a_protocol_error() {
    let (server, _requests) = recording_upstream(200, "application/json", "{}").await;

    let error = adapter(server.base_url())
        .stream(request("hi"))
        .await
        .err()
        .unwrap();

    assert!(matches!(error, ProviderError::Protocol(_)), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_retryable_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let error = adapter(format!("http://{addr}/v1"))
        .stream(request("hi"))
        .await
        .err()
        .unwrap();

    assert!(matches!(error, ProviderError::Connect(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn prefill_through_http_continues_the_simulators_answer() {
    let (simulator, server) = simulator(SimulatorConfig {
        tokens: 16,
        ..SimulatorConfig::default()
    })
    .await;
    let mut config = OpenAiConfig::new(server.base_url(), "upstream-model");
    config.continuation = providers::Continuation::AssistantMessage;
    let provider = OpenAiProvider::new(config).unwrap();
    let request = request("continue me");
    let full = simulator.answer_text(&request);

    for cut in [0, 1, 5, full.len() / 2, full.len() - 1, full.len()] {
        let mut continued = request.clone();
        continued.assistant_prefix = Some(full[..cut].to_owned());
        let (deltas, error) = collect(provider.stream(continued).await.unwrap()).await;
        assert_eq!(error, None);
        assert_eq!(
            format!("{}{}", &full[..cut], text(&deltas)),
            full,
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn a_prefix_for_an_upstream_without_prefill_is_refused_before_sending() {
    let (simulator, server) = simulator(SimulatorConfig::default()).await;
    let mut request = request("hi");
    request.assistant_prefix = Some(" partial".into());

    let error = adapter(server.base_url())
        .stream(request)
        .await
        .err()
        .unwrap();

    assert!(
        matches!(error, ProviderError::InvalidRequest(_)),
        "{error:?}"
    );
    assert_eq!(simulator.requests(), 0);
}
