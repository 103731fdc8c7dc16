//! What may stay open and for how long: quotas on open sessions, tasks and topics, and
//! the sweep that ends sessions and tasks left idle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Gateway, http};
use serde_json::{Value, json};

async fn post(gateway: &Gateway, path: &str, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}{path}", gateway.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

#[tokio::test]
async fn open_sessions_tasks_and_topics_are_capped_and_an_ended_one_frees_its_place() {
    let gateway = Gateway::start(
        "[sessions]\nmax_open_per_principal = 2\n[tasks]\nmax_open_per_principal = 1\n[topics]\nmax_topics = 1\n",
    )
    .await;
    for id in ["a", "b"] {
        let created = post(&gateway, "/v1/sessions", json!({"sessionId": id})).await;
        assert_eq!(created.status(), 201);
    }
    let third = post(&gateway, "/v1/sessions", json!({"sessionId": "c"})).await;
    assert_eq!(code(third).await, (429, "too_many_sessions".to_owned()));
    // An existing session is not a new one.
    let again = post(&gateway, "/v1/sessions", json!({"sessionId": "a"})).await;
    assert_eq!(again.status(), 200);
    let deleted = http()
        .delete(format!("{}/v1/sessions/a", gateway.url))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let third = post(&gateway, "/v1/sessions", json!({"sessionId": "c"})).await;
    assert_eq!(third.status(), 201);

    let task = post(&gateway, "/v1/tasks", json!({})).await;
    assert_eq!(task.status(), 201);
    let task: Value = task.json().await.unwrap();
    let second = post(&gateway, "/v1/tasks", json!({})).await;
    assert_eq!(code(second).await, (429, "too_many_tasks".to_owned()));
    let done = post(
        &gateway,
        &format!("/v1/tasks/{}/complete", task["taskId"].as_str().unwrap()),
        json!({"result": 1}),
    )
    .await;
    assert!(done.status().is_success());
    assert_eq!(post(&gateway, "/v1/tasks", json!({})).await.status(), 201);

    let event = json!({"event": "e", "data": {}});
    assert!(
        post(&gateway, "/v1/topics/one/events", event.clone())
            .await
            .status()
            .is_success()
    );
    let refused = post(&gateway, "/v1/topics/two/events", event.clone()).await;
    assert_eq!(code(refused).await, (429, "too_many_topics".to_owned()));
    // Publishing to the topic that exists is not creating one.
    assert!(
        post(&gateway, "/v1/topics/one/events", event)
            .await
            .status()
            .is_success()
    );
}

#[tokio::test]
async fn sessions_and_tasks_left_idle_are_ended_and_busy_ones_are_not() {
    let gateway =
        Gateway::start("[sessions]\nidle_ttl_s = 600\n[tasks]\nidle_ttl_s = 60\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokens = 2 }]\n").await;
    assert_eq!(
        post(&gateway, "/v1/sessions", json!({"sessionId": "s"}))
            .await
            .status(),
        201
    );
    let task: Value = post(&gateway, "/v1/tasks", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let task = task["taskId"].as_str().unwrap().to_owned();
    // An answer, so the usage ledger has a day: the system's streams are never swept.
    let answer = gateway.chat(&common::chat_body("m", false)).await;
    assert_eq!(answer.status(), 200);
    gateway.settle().await;
    let now = gateway::usage::now_ms();

    // Within both TTLs nothing ends; past the task's only the task; past both, the session.
    assert_eq!(gateway::idle::sweep(&gateway.state, now + 30_000).await, 0);
    assert_eq!(gateway::idle::sweep(&gateway.state, now + 120_000).await, 1);
    let events = http()
        .get(format!("{}/v1/tasks/{task}/events", gateway.url))
        .send()
        .await
        .unwrap();
    let events = common::Events::new(events).rest().await;
    let failed = events
        .iter()
        .find(|e| e.event == "failed")
        .expect("a failed event");
    let data: Value = serde_json::from_str(&failed.data).unwrap();
    assert_eq!(data["error"], "idle");

    assert_eq!(gateway::idle::sweep(&gateway.state, now + 700_000).await, 1);
    let session: Value = http()
        .get(format!("{}/v1/sessions/s", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["state"], "ended");
    let message = post(
        &gateway,
        "/v1/sessions/s/messages",
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(code(message).await, (409, "session_ended".to_owned()));
    // Ended streams are not swept again.
    assert_eq!(gateway::idle::sweep(&gateway.state, now + 700_000).await, 0);
}
