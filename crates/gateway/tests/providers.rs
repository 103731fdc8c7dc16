//! Claude, Gemini and DeepSeek-style upstreams behind one gateway: native wire formats
//! reach clients as chat chunks, a cut Claude answer continues on a `prefix_flag` target
//! and both requests are paid for, failover follows `retry_same_target_on`,
//! `fallback_on` and `deadline_ms`, and `/v1/usage` sums what answers cost.
//!
//! The fake upstreams serve the providers' documented event sequences (the fixtures of
//! `crates/providers/tests/fixtures`, each naming its source).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{Events, Gateway, Upstream, http, text_of};
use providers::simulator::SimulatorConfig;
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

/// Requests each route of the fake received.
#[derive(Default)]
struct Counts {
    anthropic: AtomicUsize,
    gemini: AtomicUsize,
    openai: AtomicUsize,
    /// The last continuation request the DeepSeek-style route received.
    continued: std::sync::Mutex<Option<Value>>,
}

/// Fake Anthropic, Gemini and OpenAI-compatible upstreams on one port.
struct Fake {
    url: String,
    counts: Arc<Counts>,
    _tracker: TaskTracker,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn fixture(provider: &str, name: &str) -> Option<&'static str> {
    Some(match (provider, name) {
        ("anthropic", "text") => include_str!("../../providers/tests/fixtures/anthropic/text.sse"),
        ("anthropic", "cut") => include_str!("../../providers/tests/fixtures/anthropic/cut.sse"),
        ("anthropic", "tool_use") => {
            include_str!("../../providers/tests/fixtures/anthropic/tool_use.sse")
        }
        ("gemini", "text") => include_str!("../../providers/tests/fixtures/gemini/text.sse"),
        _ => return None,
    })
}

fn event_stream(body: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

fn model_of(body: &Bytes) -> String {
    let body: Value = serde_json::from_slice(body).unwrap();
    body["model"].as_str().unwrap_or_default().to_owned()
}

/// `overloaded-once`: the first request is refused 529 (Anthropic's "overloaded") with a
/// `retry-after`, the next gets the text answer.
async fn anthropic(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    let earlier = counts.anthropic.fetch_add(1, Ordering::SeqCst);
    let mut model = model_of(&body);
    if model == "overloaded-once" {
        if earlier == 0 {
            let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            return (
                StatusCode::from_u16(529).unwrap(),
                [("retry-after", "0")],
                axum::Json(error),
            )
                .into_response();
        }
        model = "text".into();
    }
    match fixture("anthropic", &model) {
        Some(stream) => event_stream(stream),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn gemini(State(counts): State<Arc<Counts>>, Path(call): Path<String>) -> Response {
    counts.gemini.fetch_add(1, Ordering::SeqCst);
    let model = call.split(':').next().unwrap_or_default();
    match fixture("gemini", model) {
        Some(stream) => event_stream(stream),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `too-small`: refuses every request as too long for its context. `deepseek`: continues
/// a partial answer marked `"prefix": true` with " world." and its usage.
async fn openai(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    counts.openai.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(&body).unwrap();
    if request["model"] == "huge-index" {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 4294967295u32, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": null}]});
        let body = format!("data: {chunk}\n\n");
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream")],
            body,
        )
            .into_response();
    }
    if request["model"] == "too-small" {
        let error = json!({"error": {"message": "This model's maximum context length is 10 tokens.", "type": "invalid_request_error", "code": "context_length_exceeded"}});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    let last = request["messages"].as_array().unwrap().last().unwrap();
    if last["role"] != "assistant" || last["prefix"] != true {
        return StatusCode::BAD_REQUEST.into_response();
    }
    *counts.continued.lock().unwrap() = Some(request.clone());
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "model": "deepseek", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let body = [
        chunk(json!({"role": "assistant", "content": " world"}), Value::Null),
        chunk(json!({"content": "."}), Value::Null),
        chunk(json!({}), json!("stop")),
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}})
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        body,
    )
        .into_response()
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Counts::default());
        let router = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1beta/models/{call}", post(gemini))
            .route("/v1/chat/completions", post(openai))
            .with_state(Arc::clone(&counts));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tracker = TaskTracker::new();
        tracker.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Fake {
            url,
            counts,
            _tracker: tracker,
            _stop: stop,
        }
    }
}

async fn chat(gateway: &Gateway, model: &str) -> reqwest::Response {
    gateway
        .chat(&json!({
            "model": model,
            "stream": true,
            "stream_options": { "include_usage": true },
            "messages": [{ "role": "user", "content": "Hello, Claude" }],
        }))
        .await
}

/// The data of every chunk of a finished answer.
async fn chunks(response: reqwest::Response) -> (Vec<Value>, Vec<sse::Event>) {
    let events = Events::new(response).rest().await;
    let chunks = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    (chunks, events)
}

fn finish_of(chunks: &[Value]) -> Option<&str> {
    chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
}

#[tokio::test]
async fn a_claude_answer_reaches_the_client_as_chat_chunks_named_by_its_target() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"claude\"\ntargets = [{{ provider = \"anthropic\", base_url = {:?}, model = \"text\" }}]\n",
        fake.url
    ))
    .await;

    let response = chat(&gateway, "claude").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["unbroken-target"], "anthropic:text");
    let (chunks, events) = chunks(response).await;

    assert_eq!(text_of(&events), "Hello!");
    assert_eq!(finish_of(&chunks), Some("stop"));
    // The model that served, as OpenAI reports the resolved model.
    assert!(chunks.iter().all(|c| c["model"] == "text"), "{chunks:?}");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(25), &json!(15))
    );

    // A reader resuming mid-answer is told the same model.
    let id = chunks[0]["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-");
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let (resumed, _) = self::chunks(resumed).await;
    assert!(!resumed.is_empty());
    assert!(resumed.iter().all(|c| c["model"] == "text"), "{resumed:?}");
}

#[tokio::test]
async fn a_gemini_answer_counts_its_thinking_as_paid_output() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"gemini\"\ntargets = [{{ provider = \"gemini\", base_url = \"{}/v1beta\", model = \"text\" }}]\n",
        fake.url
    ))
    .await;

    let (chunks, events) = chunks(chat(&gateway, "gemini").await).await;

    assert_eq!(
        text_of(&events),
        "AI learns patterns from data to make predictions or decisions."
    );
    assert_eq!(finish_of(&chunks), Some("stop"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 8);
    assert_eq!(usage["completion_tokens"], 11 + 643);
    assert_eq!(fake.counts.gemini.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_claude_answer_cut_mid_stream_continues_on_a_prefix_flag_target_and_both_are_paid() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"claude\"\ntargets = [\n  {{ provider = \"anthropic\", base_url = {url:?}, model = \"cut\", name = \"claude\", price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }} }},\n  {{ provider = \"openai\", base_url = \"{url}/v1\", model = \"deepseek\", continuation = \"prefix_flag\", name = \"deepseek\", price = {{ input_per_mtok = 0.5, output_per_mtok = 2.0 }} }},\n]\n",
        url = fake.url
    ))
    .await;

    let (chunks, events) = chunks(chat(&gateway, "claude").await).await;

    assert_eq!(text_of(&events), "Hello world.");
    assert_eq!(finish_of(&chunks), Some("stop"));
    // The partial answer went to the continuing target as a prefix.
    let continued = fake.counts.continued.lock().unwrap().clone().unwrap();
    let last = continued["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last,
        &json!({"role": "assistant", "content": "Hello", "prefix": true})
    );
    // From the continuation on, the chunks name the model that continued.
    let texts: Vec<(&str, &str)> = chunks
        .iter()
        .filter_map(|c| {
            Some((
                c["choices"][0]["delta"]["content"].as_str()?,
                c["model"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        texts,
        [("Hello", "cut"), (" world", "deepseek"), (".", "deepseek")]
    );
    // The client's usage: its prompt, and every token it received.
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 25);
    assert_eq!(usage["completion_tokens"], 1 + 3);

    let id = chunks[0]["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-");
    let status = gateway.status(id).await;
    let requests = status["upstream_requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2, "{status}");
    assert_eq!(
        (&requests[0]["target"], &requests[0]["status"]),
        (&json!("claude"), &json!("cut"))
    );
    // The cut request reported its prompt when it started; its output is estimated.
    assert_eq!(requests[0]["prompt_tokens"], 25);
    assert_eq!(requests[0]["estimated"], true);
    assert_eq!(
        (&requests[1]["target"], &requests[1]["status"]),
        (&json!("deepseek"), &json!("ok"))
    );
    let claude = (25.0 * 3.0 + 1.0 * 15.0) / 1e6;
    let deepseek = (30.0 * 0.5 + 3.0 * 2.0) / 1e6;
    let cost = status["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - (claude + deepseek)).abs() < 1e-12, "{status}");

    // The usage API has both once the ledger has the answer (recorded as it ended).
    gateway.settle().await;
    let report: Value = http()
        .get(format!("{}/v1/usage?group_by=target", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = report["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    let row = |target: &str| rows.iter().find(|r| r["key"] == target).unwrap().clone();
    assert_eq!(row("claude")["requests"], 1);
    assert_eq!(row("deepseek")["prompt_tokens"], 30);
    assert!((row("deepseek")["cost_usd"].as_f64().unwrap() - deepseek).abs() < 1e-12);
}

#[tokio::test]
async fn a_timeout_goes_to_the_next_target_at_once_and_a_429_is_retried_first() {
    let slow = Upstream::start(SimulatorConfig {
        ttft_ms: 60_000,
        ..SimulatorConfig::default()
    })
    .await;
    let limited = Upstream::start(SimulatorConfig {
        error_status: Some(429),
        error_times: Some(1),
        tokens: 3,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [\n  {{ provider = \"openai\", base_url = {:?}, first_token_timeout_ms = 300, max_retries = 2, retry_base_ms = 1 }},\n  {{ provider = \"openai\", base_url = {:?}, max_retries = 2, retry_base_ms = 1 }},\n]\n",
        slow.url, limited.url
    ))
    .await;

    let response = gateway.chat(&common::chat_body("m", false)).await;

    assert_eq!(response.status(), 200);
    // The slow target was asked once: a timeout is not retried on it.
    assert_eq!(slow.requests(), 1);
    // The 429 was retried on the same target, which then answered.
    assert_eq!(limited.requests(), 2);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().trim_start_matches("chatcmpl-");
    let status = gateway.status(id).await;
    let statuses: Vec<&str> = status["upstream_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["upstream_timeout", "429", "ok"], "{status}");
}

#[tokio::test]
async fn a_deadline_bounds_the_whole_search_for_a_first_token() {
    let slow = Upstream::start(SimulatorConfig {
        ttft_ms: 60_000,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ndeadline_ms = 300\ntargets = [{{ provider = \"openai\", base_url = {:?} }}, {{ provider = \"openai\", base_url = {:?} }}]\n",
        slow.url, slow.url
    ))
    .await;

    let response = gateway.chat(&common::chat_body("m", false)).await;

    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    // The first target used the whole deadline; the second was not asked.
    assert_eq!(slow.requests(), 1);
}

#[tokio::test]
async fn fallback_on_moves_a_refusal_to_the_next_target_and_without_it_the_client_sees_it() {
    let fake = Fake::start().await;
    let model = |name: &str, fallback: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\n{fallback}targets = [\n  {{ provider = \"openai\", base_url = \"{url}/v1\", model = \"too-small\" }},\n  {{ provider = \"anthropic\", base_url = {url:?}, model = \"text\" }},\n]\n",
            url = fake.url
        )
    };
    let gateway = Gateway::start(&format!(
        "{}{}",
        model("strict", ""),
        model("lenient", "fallback_on = [\"context_length_exceeded\"]\n")
    ))
    .await;

    let refused = gateway.chat(&common::chat_body("strict", false)).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(fake.counts.anthropic.load(Ordering::SeqCst), 0);

    let answered = gateway.chat(&common::chat_body("lenient", false)).await;
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["unbroken-target"], "anthropic:text");
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(body["model"], "text");
}

#[tokio::test]
async fn a_claude_tool_call_reaches_the_client_in_openai_shape() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"claude\"\ntargets = [{{ provider = \"anthropic\", base_url = {:?}, model = \"tool_use\" }}]\n",
        fake.url
    ))
    .await;

    let response = gateway.chat(&common::chat_body("claude", false)).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["location"].is_string(), "{arguments}");
}

#[tokio::test]
async fn an_overloaded_claude_is_retried_on_the_same_target() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"claude\"\ntargets = [{{ provider = \"anthropic\", base_url = {:?}, model = \"overloaded-once\", retry_base_ms = 1 }}]\n",
        fake.url
    ))
    .await;

    let response = gateway.chat(&common::chat_body("claude", false)).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(fake.counts.anthropic.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_tool_call_index_out_of_range_is_an_upstream_error_not_a_huge_table() {
    let fake = Fake::start().await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{{ provider = \"openai\", base_url = \"{}/v1\", model = \"huge-index\" }}]\n",
        fake.url
    ))
    .await;

    let response = gateway.chat(&common::chat_body("m", false)).await;

    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("tool call number 4294967295"), "{body}");
}
