//! The Responses API over the log: every response resumable by `starting_after` or
//! `Last-Event-ID`, the same events under the same numbers on every read, background
//! responses that finish unread (even after a takeover), cancel, delete and ownership.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Events, Gateway, http, parse};
use gateway::AppState;
use serde_json::{Value, json};
use streamlog::{MemoryLog, NewStream, Record, StreamId, StreamKind, StreamLog, SystemClock};

const WITHIN: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 30 }]
[[models]]
name = "slow"
targets = [{ provider = "simulator", tokens = 2000, interval_ms = 5 }]
[[models]]
name = "medium"
targets = [{ provider = "simulator", tokens = 100, interval_ms = 5 }]
"#;

async fn create(gateway: &Gateway, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/responses", gateway.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Every event of an SSE response: (sequence_number, event JSON).
async fn events_of(response: reqwest::Response) -> Vec<(u64, Value)> {
    assert_eq!(response.status(), 200);
    let events = tokio::time::timeout(WITHIN, Events::new(response).rest())
        .await
        .expect("the stream ends");
    events
        .into_iter()
        .map(|event| {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(data["type"], event.event.as_ref(), "event: names the type");
            let number = data["sequence_number"].as_u64().unwrap();
            assert_eq!(event.id, number.to_string(), "id: is the sequence_number");
            (number, data)
        })
        .collect()
}

fn text_of(events: &[(u64, Value)]) -> String {
    events
        .iter()
        .filter(|(_, e)| e["type"] == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect()
}

async fn get(gateway: &Gateway, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}{path}", gateway.url))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_read_of_a_response_numbers_its_events_alike_and_resumes_anywhere() {
    let gateway = Gateway::start(CONFIG).await;
    let streamed = events_of(
        create(
            &gateway,
            json!({"model": "sim", "input": "Hi", "stream": true}),
        )
        .await,
    )
    .await;
    let numbers: Vec<u64> = streamed.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
    let last = streamed.last().unwrap();
    assert_eq!(last.1["type"], "response.completed");
    let id = last.1["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(last.1["response"]["output_text"], text_of(&streamed));

    // A replay is the same events, and from any point exactly the rest.
    let replayed = events_of(get(&gateway, &format!("/v1/responses/{id}?stream=true")).await).await;
    assert_eq!(replayed, streamed);
    for after in [0, 5, numbers.len() as u64 - 2] {
        let rest = events_of(
            get(
                &gateway,
                &format!("/v1/responses/{id}?stream=true&starting_after={after}"),
            )
            .await,
        )
        .await;
        assert_eq!(rest, streamed[after as usize + 1..]);
    }
    let by_header = http()
        .get(format!("{}/v1/responses/{id}?stream=true", gateway.url))
        .header("last-event-id", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(events_of(by_header).await, streamed[8..]);
    // At the end: nothing left; past it: 400.
    let end = streamed.len() - 1;
    let nothing = get(
        &gateway,
        &format!("/v1/responses/{id}?stream=true&starting_after={end}"),
    )
    .await;
    assert_eq!(events_of(nothing).await, []);
    let beyond = get(
        &gateway,
        &format!("/v1/responses/{id}?stream=true&starting_after={}", end + 1),
    )
    .await;
    assert_eq!(beyond.status(), 400);
    let error: Value = beyond.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_starting_after");
    let largest = get(
        &gateway,
        &format!("/v1/responses/{id}?stream=true&starting_after={}", u64::MAX),
    )
    .await;
    assert_eq!(largest.status(), 400);

    // The object is the terminal event's.
    let object: Value = get(&gateway, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(object, last.1["response"]);
}

#[tokio::test]
async fn a_background_response_answers_at_once_finishes_unread_and_cancels() {
    let gateway = Gateway::start(&format!("[server]\nreader_grace_ms = 50\n{CONFIG}")).await;
    // Nobody reads it, past the reader grace: it still finishes.
    let queued: Value = create(
        &gateway,
        json!({"model": "medium", "input": "Hi", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(["queued", "in_progress"].contains(&queued["status"].as_str().unwrap()));
    assert_eq!(queued["background"], true);
    let id = queued["id"].as_str().unwrap().to_owned();
    gateway.settle().await;
    let done: Value = get(&gateway, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");

    // A long one is cancelled: the final object, again on a second cancel.
    let long: Value = create(
        &gateway,
        json!({"model": "slow", "input": "Hi", "background": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    let long = long["id"].as_str().unwrap().to_owned();
    let cancel = || {
        http()
            .post(format!("{}/v1/responses/{long}/cancel", gateway.url))
            .send()
    };
    let cancelled: Value = cancel().await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let again: Value = cancel().await.unwrap().json().await.unwrap();
    assert_eq!(again, cancelled);
    let events = events_of(get(&gateway, &format!("/v1/responses/{long}?stream=true")).await).await;
    let last = &events.last().unwrap().1;
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "cancelled");
}

#[tokio::test]
async fn a_streamed_response_without_background_stops_when_nobody_reads_it() {
    let gateway = Gateway::start(&format!("[server]\nreader_grace_ms = 50\n{CONFIG}")).await;
    let response = create(
        &gateway,
        json!({"model": "slow", "input": "Hi", "stream": true}),
    )
    .await;
    let mut events = Events::new(response);
    let first = events.next().await.unwrap();
    let created: Value = serde_json::from_str(&first.data).unwrap();
    let id = created["response"]["id"].as_str().unwrap().to_owned();
    drop(events);
    gateway.settle().await;
    let object: Value = get(&gateway, &format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(object["status"], "cancelled", "{object}");
}

#[tokio::test]
async fn responses_belong_to_their_principal_and_a_deleted_one_is_gone() {
    let hash = |key: &str| -> String {
        gateway::auth::sha256(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let gateway = Gateway::start(&format!(
        "[[auth.keys]]\nprincipal = \"alice\"\nsha256 = \"{}\"\n[[auth.keys]]\nprincipal = \"bob\"\nsha256 = \"{}\"\n{CONFIG}",
        hash("alice-key"),
        hash("bob-key")
    ))
    .await;
    let made: Value = http()
        .post(format!("{}/v1/responses", gateway.url))
        .bearer_auth("alice-key")
        .json(&json!({"model": "sim", "input": "Hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let read = |key: &'static str, path: String| {
        let url = format!("{}{path}", gateway.url);
        async move {
            http()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(read("alice-key", format!("/v1/responses/{id}")).await, 200);
    assert_eq!(read("bob-key", format!("/v1/responses/{id}")).await, 404);
    let continued = http()
        .post(format!("{}/v1/responses", gateway.url))
        .bearer_auth("bob-key")
        .json(&json!({"model": "sim", "input": "Hi", "previous_response_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        continued.status(),
        404,
        "another's response cannot be continued"
    );
    // A chat completion's stream is not a response.
    let chat = http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth("alice-key")
        .json(&common::chat_body("sim", false))
        .send()
        .await
        .unwrap();
    let stream = chat.headers()["unbroken-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        read("alice-key", format!("/v1/responses/resp_{stream}")).await,
        404
    );

    let deleted = http()
        .delete(format!("{}/v1/responses/{id}", gateway.url))
        .bearer_auth("alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response", "deleted": true})
    );
    assert_eq!(read("alice-key", format!("/v1/responses/{id}")).await, 404);
    assert_eq!(
        read("alice-key", format!("/v1/responses/{id}?stream=true")).await,
        404
    );
}

/// A background response its writer was streaming when it died, with the first three
/// words written: the node that takes it over finishes it (half a second of tokens), though
/// nobody reads it for far longer than the reader grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_response_is_taken_over_and_finishes_unread() {
    let log: Arc<dyn StreamLog> = Arc::new(MemoryLog::new(Arc::new(SystemClock)));
    let body = json!({
        "model": "medium",
        "messages": [{"role": "user", "content": "Hi"}],
        gateway::responses::ENVELOPE_KEY: {"background": true, "tool_choice": "auto"},
    });
    let id = StreamId::new();
    let new = NewStream {
        id,
        owner: "anonymous".into(),
        kind: StreamKind::Chat,
        request: Bytes::from(body.to_string()),
    };
    let (_, lease) = log
        .create_leased(new, "node-a/earlier".into(), Duration::from_secs(3600))
        .await
        .unwrap();
    let upstream = Record::Upstream {
        target: "simulator:medium".into(),
        model: "medium".into(),
    };
    let words = ["one ", "two ", "three "].map(|w| Record::Text { text: w.into() });
    let mut records = vec![upstream];
    records.extend(words);
    log.append(id, lease.token, records).await.unwrap();

    let config = parse(&format!(
        "[server]\nnode_id = \"node-a\"\nreader_grace_ms = 50\n\n[store]\nkind = \"memory\"\n{CONFIG}"
    ));
    let gateway = Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await;
    let path = format!("/v1/responses/resp_{id}");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let object = loop {
        let object: Value = get(&gateway, &path).await.json().await.unwrap();
        if object["status"] != "in_progress" {
            break object;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {object}"
        );
        gateway.settle().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(object["status"], "completed", "{object}");
    let text = object["output_text"].as_str().unwrap();
    assert!(text.starts_with("one two three "), "{text}");
    let events = events_of(get(&gateway, &format!("{path}?stream=true")).await).await;
    assert_eq!(text_of(&events), text);
}
