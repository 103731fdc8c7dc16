//! Session channels end to end: two answers on one channel, a reader that reconnects
//! between and inside them, history, 409 during an answer, ownership.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, http};
use serde_json::{Value, json};

const SIM: &str = r#"
[server]
progress_every = 5
[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 12, interval_ms = 2 }]
"#;

async fn send(gateway: &Gateway, session: &str, content: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/sessions/{session}/messages", gateway.url))
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap()
}

/// Create the session `id` (a channel can be opened on an existing session only).
async fn create(gateway: &Gateway, id: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/sessions", gateway.url))
        .json(&json!({ "sessionId": id }))
        .send()
        .await
        .unwrap()
}

async fn channel(gateway: &Gateway, session: &str, last: Option<&str>) -> Events {
    let mut request = http().get(format!("{}/v1/sessions/{session}/events", gateway.url));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    Events::new(request.send().await.unwrap())
}

fn data(event: &sse::Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn two_answers_reach_a_reconnecting_reader_exactly_once() {
    let gateway = Gateway::start(SIM).await;
    // Nothing to read before the session exists; creating it again is idempotent.
    let unknown = http()
        .get(format!("{}/v1/sessions/s-1/events", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(create(&gateway, "s-1").await.status(), 201);
    assert_eq!(create(&gateway, "s-1").await.status(), 200);
    let mut reader = channel(&gateway, "s-1", None).await;
    let connected = reader.next().await.unwrap();
    assert_eq!(connected.event, "connected");
    assert_eq!(data(&connected)["sessionId"], "s-1");

    let accepted = send(&gateway, "s-1", "first question").await;
    assert_eq!(accepted.status(), 202);
    let first_stream = accepted.json::<Value>().await.unwrap()["streamId"].clone();

    // Read into the first answer, then drop the connection.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.push(reader.next().await.unwrap());
    }
    drop(reader);
    let mut reader = channel(&gateway, "s-1", Some(&seen.last().unwrap().id)).await;
    assert_eq!(reader.next().await.unwrap().event, "connected");
    loop {
        let event = reader.next().await.unwrap();
        let done = event.event == "complete";
        seen.push(event);
        if done {
            break;
        }
    }
    // Between answers: reconnect again, then ask the second question.
    drop(reader);
    let mut reader = channel(&gateway, "s-1", Some(&seen.last().unwrap().id)).await;
    assert_eq!(reader.next().await.unwrap().event, "connected");
    assert_eq!(send(&gateway, "s-1", "second question").await.status(), 202);
    loop {
        let event = reader.next().await.unwrap();
        let done = event.event == "complete";
        seen.push(event);
        if done {
            break;
        }
    }

    let ids: Vec<u64> = seen
        .iter()
        .map(|e| e.id.split('.').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_ref()).collect();
    let first: Vec<&str> = names
        .iter()
        .take_while(|n| **n != "complete")
        .copied()
        .collect();
    assert_eq!(first[..2], ["user", "start"]);
    assert_eq!(names.iter().filter(|n| **n == "token").count(), 24);
    assert_eq!(
        names.iter().filter(|n| **n == "progress").count(),
        4,
        "at 5 and 10, twice"
    );
    assert_eq!(names.iter().filter(|n| **n == "complete").count(), 2);
    let start = seen.iter().find(|e| e.event == "start").unwrap();
    assert_eq!(data(start)["streamId"], first_stream);
    let complete = seen.iter().find(|e| e.event == "complete").unwrap();
    let tokens: String = seen
        .iter()
        .take_while(|e| e.event != "complete")
        .filter(|e| e.event == "token")
        .map(|e| data(e)["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(data(complete)["response"], tokens.as_str());
    assert_eq!(data(complete)["tokenCount"], 12);
    assert_eq!(data(complete)["finishReason"], "stop");

    let history: Value = http()
        .get(format!("{}/v1/sessions/s-1", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(
        messages[0],
        json!({ "role": "user", "content": "first question" })
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], data(complete)["response"]);
    assert_eq!(messages[2]["content"], "second question");
}

#[tokio::test]
async fn a_second_message_during_an_answer_is_refused() {
    let gateway = Gateway::start(common::SLOW).await;
    let accepted = send(&gateway, "busy", "go on").await;
    assert_eq!(accepted.status(), 202);
    let stream = accepted.json::<Value>().await.unwrap()["streamId"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = send(&gateway, "busy", "and again").await;
    assert_eq!(refused.status(), 409);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "answer_in_progress");
    // Stopping the answer frees the session; the channel shows the error.
    gateway.cancel(&stream).await;
    gateway.settle().await;
    let mut reader = channel(&gateway, "busy", None).await;
    let events = {
        let mut out = Vec::new();
        loop {
            let event = reader.next().await.unwrap();
            let done = event.event == "error";
            out.push(event);
            if done {
                break out;
            }
        }
    };
    assert_eq!(data(events.last().unwrap())["code"], "cancelled");
    assert_eq!(send(&gateway, "busy", "now?").await.status(), 202);
}

#[tokio::test]
async fn session_ids_are_validated_and_ended_sessions_close() {
    let gateway = Gateway::start(SIM).await;
    let bad = http()
        .get(format!("{}/v1/sessions/bad%20id/events", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let created: Value = http()
        .post(format!("{}/v1/sessions", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["sessionId"].as_str().unwrap().to_owned();
    let mut reader = channel(&gateway, &id, None).await;
    assert_eq!(reader.next().await.unwrap().event, "connected");
    let ended = http()
        .delete(format!("{}/v1/sessions/{id}", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    assert!(
        reader.next().await.is_none(),
        "the channel ends with the session"
    );
    assert_eq!(send(&gateway, &id, "hello?").await.status(), 409);
    let missing = http()
        .post(format!("{}/v1/sessions/{id}/messages", gateway.url))
        .json(&json!({ "content": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    // The rest is checked as the chat endpoint checks it, naming the field.
    for (body, field) in [
        (json!({ "content": "hi", "n": 64 }), "n"),
        (json!({ "content": "hi", "max_tokens": -1 }), "max_tokens"),
        (json!({ "content": "hi", "messages": [] }), "messages"),
    ] {
        let refused = http()
            .post(format!("{}/v1/sessions/fresh/messages", gateway.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{body}");
        let error: Value = refused.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field}: {message}");
    }
}
