//! The simulator: deterministic answers, continuation, faults, pacing and its HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{collect, request, simulator, text};
use providers::simulator::{SimulatorConfig, SimulatorProvider};
use providers::{ChatRequest, Delta, Provider, ProviderError};
use serde_json::{Value, json};

async fn answer(simulator: &SimulatorProvider, request: &ChatRequest) -> Vec<Delta> {
    let (deltas, error) = collect(simulator.stream(request.clone()).await.unwrap()).await;
    assert_eq!(error, None);
    deltas
}

fn config(tokens: u32) -> SimulatorConfig {
    SimulatorConfig {
        tokens,
        ..SimulatorConfig::default()
    }
}

#[tokio::test]
async fn the_same_request_gets_the_same_tokens_and_other_seeds_others() {
    let simulator = SimulatorProvider::new(config(32));
    let request = request("what is a stream?");

    let first = answer(&simulator, &request).await;
    let second = answer(&simulator, &request).await;
    assert_eq!(first, second);
    assert_eq!(first.len(), 32 + 2);
    for delta in &first[..32] {
        let Delta::Text(token) = delta else {
            panic!("{delta:?}")
        };
        assert!(token.starts_with(' ') && token.len() > 1, "{token:?}");
    }
    assert_eq!(text(&first), simulator.answer_text(&request));

    let other_config = SimulatorProvider::new(SimulatorConfig {
        seed: 1,
        ..config(32)
    });
    assert_ne!(text(&answer(&other_config, &request).await), text(&first));
    let mut seeded = request.clone();
    seeded.seed = Some(5);
    assert_ne!(text(&answer(&simulator, &seeded).await), text(&first));
    assert_ne!(
        text(&answer(&simulator, &common::request("another question")).await),
        text(&first)
    );
}

#[tokio::test]
async fn a_cut_and_continued_answer_equals_the_uninterrupted_one() {
    let simulator = SimulatorProvider::new(config(24));
    assert!(simulator.supports_prefill());
    let request = request("tell me a story");
    let full = simulator.answer_text(&request);

    for cut in [
        0,
        1,
        2,
        3,
        7,
        full.len() / 3,
        full.len() / 2,
        full.len() - 2,
        full.len(),
    ] {
        let mut continued = request.clone();
        continued.assistant_prefix = Some(full[..cut].to_owned());
        let deltas = answer(&simulator, &continued).await;
        assert_eq!(
            format!("{}{}", &full[..cut], text(&deltas)),
            full,
            "cut at {cut}"
        );
        assert_eq!(
            deltas.last(),
            Some(&Delta::Finish {
                reason: "stop".into()
            })
        );
    }
}

#[tokio::test]
async fn max_tokens_below_the_answer_length_finishes_with_length() {
    let simulator = SimulatorProvider::new(config(10));
    let mut request = request("one two three");
    request.max_tokens = Some(4);

    let deltas = answer(&simulator, &request).await;

    assert_eq!(deltas.len(), 4 + 2);
    assert_eq!(
        deltas[4..],
        [
            Delta::Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cached_tokens: 0,
            },
            Delta::Finish {
                reason: "length".into()
            },
        ]
    );
}

#[tokio::test]
async fn error_times_refuses_the_first_requests_then_answers() {
    let simulator = SimulatorProvider::new(SimulatorConfig {
        error_status: Some(429),
        error_times: Some(2),
        retry_after_s: Some(1),
        ..config(3)
    });
    let refusal = ProviderError::Status {
        status: 429,
        retry_after: Some(Duration::from_secs(1)),
    };

    assert_eq!(
        simulator.stream(request("a")).await.err(),
        Some(refusal.clone())
    );
    assert_eq!(simulator.stream(request("a")).await.err(), Some(refusal));
    assert_eq!(answer(&simulator, &request("a")).await.len(), 3 + 2);
    assert_eq!(simulator.requests(), 3);
    assert_eq!(simulator.clone().requests(), 3, "clones share the counter");
}

#[tokio::test]
async fn error_probability_zero_never_refuses() {
    let simulator = SimulatorProvider::new(SimulatorConfig {
        error_status: Some(503),
        error_probability: 0.0,
        ..config(2)
    });
    for _ in 0..5 {
        answer(&simulator, &request("a")).await;
    }
    assert_eq!(simulator.requests(), 5);
}

#[tokio::test]
async fn fail_after_interrupts_the_stream_without_a_finish() {
    let simulator = SimulatorProvider::new(SimulatorConfig {
        fail_after: Some(3),
        ..config(8)
    });

    let (deltas, error) = collect(simulator.stream(request("a")).await.unwrap()).await;

    assert_eq!(deltas.len(), 3);
    assert!(deltas.iter().all(|d| matches!(d, Delta::Text(_))));
    assert!(matches!(error, Some(ProviderError::Interrupted(_))));
}

#[tokio::test(start_paused = true)]
async fn tokens_follow_time_to_first_token_and_interval() {
    let simulator = SimulatorProvider::new(SimulatorConfig {
        ttft_ms: 1000,
        interval_ms: 100,
        ..config(5)
    });
    let start = tokio::time::Instant::now();

    answer(&simulator, &request("a")).await;

    assert_eq!(start.elapsed(), Duration::from_millis(1400));
}

#[test]
fn the_config_has_defaults_and_refuses_unknown_keys() {
    let config: SimulatorConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, SimulatorConfig::default());
    assert_eq!((config.tokens, config.error_probability), (64, 1.0));
    assert!(serde_json::from_str::<SimulatorConfig>(r#"{"tokenz": 3}"#).is_err());
}

async fn post(base_url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base_url}/chat/completions"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn http_non_streaming_answers_one_completion_echoing_the_model() {
    let (simulator, server) = simulator(config(6)).await;
    let body = json!({"model": "any-name", "messages": [{"role": "user", "content": "hi there"}]});

    let response = post(&server.base_url(), body.clone()).await;
    assert_eq!(response.status(), 200);
    let completion = json_of(response).await;

    let request: ChatRequest = serde_json::from_value(body).unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "any-name");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        simulator.answer_text(&request)
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        completion["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8})
    );
    assert_eq!(simulator.requests(), 1);
}

#[tokio::test]
async fn http_streaming_sends_chunks_then_done() {
    let (_simulator, server) = simulator(config(3)).await;
    let body = json!({
        "model": "echo-me",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}],
    });

    let response = post(&server.base_url(), body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();

    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1, "{text}");
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "echo-me")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn http_fail_after_cuts_the_body_without_done() {
    let (_simulator, server) = simulator(SimulatorConfig {
        fail_after: Some(2),
        ..config(10)
    })
    .await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});

    let mut response = post(&server.base_url(), body).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("the body ended normally"),
            Err(error) => break error,
        }
    };

    assert!(error.is_body() || error.is_decode(), "{error:?}");
    let received = String::from_utf8(received).unwrap();
    assert_eq!(received.matches("\"content\":\" ").count(), 2, "{received}");
    assert!(!received.contains("[DONE]"));
}

#[tokio::test]
async fn http_refusals_are_openai_shaped_with_retry_after() {
    let (simulator, server) = simulator(SimulatorConfig {
        error_status: Some(429),
        error_times: Some(1),
        retry_after_s: Some(3),
        ..config(2)
    })
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    let refused = post(&server.base_url(), body.clone()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "3");
    let error = json_of(refused).await;
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(error["error"]["message"].is_string());

    assert_eq!(post(&server.base_url(), body).await.status(), 200);
    assert_eq!(simulator.requests(), 2);

    let bad = post(&server.base_url(), json!({"messages": "nope"})).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(json_of(bad).await["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn http_models_lists_the_simulator() {
    let (_simulator, server) = simulator(SimulatorConfig::default()).await;

    let response = reqwest::get(format!("{}/models", server.base_url()))
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let models = json_of(response).await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "simulator");
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    providers::openai::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tracker = tokio_util::task::TaskTracker::new();
    let server = tracker.spawn(providers::simulator::serve(listener, config(1), async {
        let _ = stopped.await;
    }));

    let models = reqwest::get(format!("http://{addr}/v1/models"))
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    drop(models);
    stop.send(()).unwrap();

    server.await.unwrap().unwrap();
}
