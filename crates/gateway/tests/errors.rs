//! Bad input gets a clear OpenAI-shaped error with the right status — never a panic — and
//! streams stay invisible to other principals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, chat_body, http};
use serde_json::{Value, json};

const SIM: &str = r#"
[server]
max_body_bytes = 2048
[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 5 }]
"#;

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap().to_owned();
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["type"].is_string());
    (status, code)
}

#[tokio::test]
async fn malformed_requests_are_refused_clearly() {
    let gateway = Gateway::start(SIM).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json"),
        (b"{}".to_vec(), 400, "invalid_request"),
        (
            br#"{"model":"sim","messages":"hi"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (vec![b' '; 4096], 413, "request_too_large"),
    ];
    for (body, status, code) in cases {
        let response = http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (status, code.to_owned()));
    }
    // What a web page may send to another site without a CORS preflight.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = http()
            .post(&url)
            .body(serde_json::to_vec(&chat_body("sim", true)).unwrap());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        assert_eq!(
            error_of(request.send().await.unwrap()).await,
            (415, "unsupported_media_type".to_owned()),
            "{content_type:?}"
        );
    }
    let wrong_method = http().get(&url).send().await.unwrap();
    assert_eq!(
        error_of(wrong_method).await,
        (405, "method_not_allowed".to_owned())
    );
    let bad_key = http()
        .post(&url)
        .header("idempotency-key", "")
        .json(&chat_body("sim", true))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(bad_key).await,
        (400, "invalid_idempotency_key".to_owned())
    );
}

#[tokio::test]
async fn unknown_streams_and_bad_event_ids_are_refused() {
    let gateway = Gateway::start(SIM).await;
    let events = Events::new(
        http()
            .post(format!("{}/v1/chat/completions", gateway.url))
            .json(&chat_body("sim", true))
            .send()
            .await
            .unwrap(),
    );
    let id = events.stream_id();
    events.rest().await;
    let get = |path: String, last: Option<&'static str>| {
        let mut request = http().get(format!("{}{path}", gateway.url));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send()
    };
    let unknown = streamlog::StreamId::new();
    for path in [
        format!("/v1/streams/{unknown}"),
        "/v1/streams/not-an-id".to_owned(),
    ] {
        assert_eq!(
            error_of(get(path, None).await.unwrap()).await,
            (404, "stream_not_found".into())
        );
    }
    let bad = get(format!("/v1/streams/{id}"), Some("abc")).await.unwrap();
    assert_eq!(error_of(bad).await, (400, "invalid_last_event_id".into()));
    let beyond = get(format!("/v1/streams/{id}"), Some("99")).await.unwrap();
    assert_eq!(
        error_of(beyond).await,
        (400, "invalid_last_event_id".into())
    );
    let format = get(format!("/v1/streams/{id}?format=xml"), None)
        .await
        .unwrap();
    assert_eq!(error_of(format).await, (400, "invalid_format".into()));
    let route = get("/v2/nothing".to_owned(), None).await.unwrap();
    assert_eq!(error_of(route).await, (404, "not_found".into()));
    // A path or a query the extractors refuse is answered in OpenAI's shape too.
    for path in [
        "/v1/streams/%ff",
        "/v1/sessions/%ff/events",
        "/v1/tasks/%ff/events",
    ] {
        let response = get(path.to_owned(), None).await.unwrap();
        assert_eq!(
            error_of(response).await,
            (400, "invalid_path".into()),
            "{path}"
        );
    }
    let twice = get(
        format!("/v1/streams/{id}?last_event_id=1&last_event_id=2"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(error_of(twice).await, (400, "invalid_query".into()));
}

#[tokio::test]
async fn streams_belong_to_their_principal() {
    let hash = |key: &str| {
        use std::fmt::Write;
        gateway::auth::sha256(key.as_bytes())
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    };
    let gateway = Gateway::start(&format!(
        "[[auth.keys]]\nprincipal = \"alice\"\nsha256 = \"{}\"\n[[auth.keys]]\nprincipal = \"bob\"\nsha256 = \"{}\"\n{SIM}",
        hash("alice-key"),
        hash("bob-key")
    ))
    .await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let anonymous = http()
        .post(&url)
        .json(&chat_body("sim", true))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(anonymous).await, (401, "invalid_api_key".into()));
    let wrong = http()
        .post(&url)
        .bearer_auth("guess")
        .json(&chat_body("sim", true))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(wrong).await, (401, "invalid_api_key".into()));
    // The model list needs a key too, as OpenAI's does.
    let models = format!("{}/v1/models", gateway.url);
    let anonymous = http().get(&models).send().await.unwrap();
    assert_eq!(error_of(anonymous).await, (401, "invalid_api_key".into()));
    let listed = http()
        .get(&models)
        .bearer_auth("bob-key")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    let events = Events::new(
        http()
            .post(&url)
            .bearer_auth("alice-key")
            .json(&chat_body("sim", true))
            .send()
            .await
            .unwrap(),
    );
    let id = events.stream_id();
    events.rest().await;
    for (method, path) in [
        ("GET", format!("/v1/streams/{id}")),
        ("GET", format!("/v1/streams/{id}/status")),
        ("POST", format!("/v1/streams/{id}/cancel")),
    ] {
        let request = http()
            .request(method.parse().unwrap(), format!("{}{path}", gateway.url))
            .bearer_auth("bob-key");
        let response = request.send().await.unwrap();
        assert_eq!(
            error_of(response).await,
            (404, "stream_not_found".into()),
            "{path}"
        );
    }
    // The owner reads it; the scheme is case-insensitive, the key is not.
    for (authorization, status) in [
        ("Bearer alice-key", 200),
        ("bearer alice-key", 200),
        ("Bearer ALICE-KEY", 401),
    ] {
        let response = http()
            .get(format!("{}/v1/streams/{id}/status", gateway.url))
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{authorization}");
    }
}

#[tokio::test]
async fn cors_allows_only_the_listed_origins_and_exposes_the_stream_id() {
    let gateway = Gateway::start(
        "[server]\ncors_origins = [\"http://app.test\"]\n[[models]]\nname = \"sim\"\ntargets = [{ provider = \"simulator\", tokens = 2 }]\n",
    )
    .await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let allowed = http()
        .post(&url)
        .header("origin", "http://app.test")
        .json(&chat_body("sim", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    let exposed = allowed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("unbroken-stream-id"));
    let other = http()
        .post(&url)
        .header("origin", "http://evil.test")
        .json(&chat_body("sim", false))
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let gateway = Gateway::start(SIM).await;
    for path in [
        "/health",
        "/ready",
        "/openapi.json",
        "/v1/models",
        "/",
        "/sdk/unbroken.js",
        "/sdk/sse.js",
    ] {
        let response = http()
            .get(format!("{}{path}", gateway.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let models: serde_json::Value = http()
        .get(format!("{}/v1/models", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "sim");
    let answer = http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .json(&chat_body("sim", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // A streamed answer under a key, its idempotent replay and a resume: every metric
    // the operations guide lists shows up.
    let keyed = || {
        http()
            .post(format!("{}/v1/chat/completions", gateway.url))
            .header("idempotency-key", "metrics")
            .json(&chat_body("sim", true))
            .send()
    };
    let first = Events::new(keyed().await.unwrap());
    let id = first.stream_id();
    first.rest().await;
    Events::new(keyed().await.unwrap()).rest().await;
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    Events::new(resumed).rest().await;
    let metrics = http()
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "unbroken_upstream_requests_total{model=\"sim\"",
        "unbroken_active_streams",
        "unbroken_active_readers",
        "unbroken_appends_total",
        "unbroken_resumes_total",
        "unbroken_idempotent_replays_total",
        "unbroken_upstream_ttft_seconds_bucket{model=\"sim\"",
        "unbroken_queue_depth{model=\"sim\",target=\"simulator:sim\"}",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    assert!(
        metrics.contains("unbroken_upstream_ttft_seconds_bucket"),
        "{metrics}"
    );
}

/// What the gateway sends on a raw connection after `request`, until it closes it.
async fn raw_exchange(url: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // The bound only turns "never closes" into a failure; the close is the event awaited.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the gateway kept a stalled connection open")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn stalled_requests_are_cut_off() {
    let gateway =
        Gateway::start(&SIM.replace("[server]\n", "[server]\nrequest_read_timeout_ms = 300\n"))
            .await;
    // Nothing at all, and half a request: the connection is closed.
    assert_eq!(raw_exchange(&gateway.url, b"").await, "");
    let half = raw_exchange(&gateway.url, b"GET /health HTTP/1.1\r\nHost: localhost\r\n").await;
    assert!(!half.contains("200 OK"), "{half}");
    // A body announced and not sent: 408 in OpenAI's shape.
    let stalled = raw_exchange(
        &gateway.url,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
    )
    .await;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains(r#""code":"request_timeout""#), "{stalled}");
    // A prompt request on a fresh connection is still answered.
    let ok = http()
        .get(format!("{}/health", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// The status line and the JSON error code of a raw answer.
fn raw_error(answer: &str) -> (String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect(answer);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body).expect(body);
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn requests_hyper_refuses_get_the_json_error_shape_too() {
    let gateway = Gateway::start(SIM).await;
    // Longer than an `http::Uri` can hold: no router ever sees it.
    let long = format!(
        "GET /v1/streams/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(100_000)
    );
    let chat = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    let cases = [
        (long, "http/1.1 414 uri too long", "uri_too_long"),
        (
            format!("{chat}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"),
            "http/1.1 400 bad request",
            "malformed_request",
        ),
        (
            format!("{chat}Transfer-Encoding: gzip\r\n\r\n{{}}"),
            "http/1.1 400 bad request",
            "malformed_request",
        ),
        (
            "GET /health HTTP/1.1\r\nHost: localhost\r\nNo colon\r\n\r\n".to_owned(),
            "http/1.1 400 bad request",
            "malformed_request",
        ),
    ];
    for (request, status, code) in cases {
        let answer = raw_exchange(&gateway.url, request.as_bytes()).await;
        assert_eq!(
            raw_error(&answer),
            (status.to_owned(), code.to_owned()),
            "{}",
            &request[..request.len().min(80)]
        );
    }
    // A request after a good one on the same connection: the first answer is untouched.
    let pipelined = raw_exchange(
        &gateway.url,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let (first, refusal) = pipelined.split_once("HTTP/1.1 400").expect(&pipelined);
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.ends_with(r#"{"status":"ok"}"#), "{first}");
    assert_eq!(
        raw_error(&format!("HTTP/1.1 400{refusal}")).1,
        "malformed_request"
    );
}

#[tokio::test]
async fn whole_numbers_written_as_floats_are_whole_numbers() {
    let gateway = Gateway::start(SIM).await;
    let mut body = chat_body("sim", false);
    body["max_tokens"] = json!(3.0);
    body["seed"] = json!(7.0);
    assert_eq!(gateway.chat(&body).await.status(), 200);
    body["max_tokens"] = json!(3.5);
    assert_eq!(
        error_of(gateway.chat(&body).await).await,
        (400, "invalid_request".to_owned())
    );
    let task = http()
        .post(format!("{}/v1/tasks", gateway.url))
        .json(&json!({"title": null, "total": 4.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(task.status(), 201);
    let task: Value = task.json().await.unwrap();
    let progress = |body: Value| {
        let url = format!(
            "{}/v1/tasks/{}/progress",
            gateway.url,
            task["taskId"].as_str().unwrap()
        );
        async move { http().post(url).json(&body).send().await.unwrap() }
    };
    assert_eq!(
        progress(json!({"step": 1.0, "total": 4.0})).await.status(),
        200
    );
    assert_eq!(
        error_of(progress(json!({"step": 2, "message": {}})).await).await,
        (400, "invalid_request".to_owned())
    );
    let titled = http()
        .post(format!("{}/v1/tasks", gateway.url))
        .json(&json!({"title": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(titled).await, (400, "invalid_request".to_owned()));
}
