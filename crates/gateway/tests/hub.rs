//! The hub: topics fan out in order to many subscribers (a slow one holds nobody up);
//! tasks report progress to early and late subscribers and refuse invalid transitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, http};
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn publish(gateway: &Gateway, topic: &str, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/topics/{topic}/events", gateway.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Create `topic` (subscribers attach to existing topics only).
async fn create_topic(gateway: &Gateway, topic: &str) -> reqwest::StatusCode {
    http()
        .post(format!("{}/v1/topics/{topic}", gateway.url))
        .send()
        .await
        .unwrap()
        .status()
}

async fn subscribe(gateway: &Gateway, path: &str) -> Events {
    Events::new(
        http()
            .get(format!("{}{path}", gateway.url))
            .send()
            .await
            .unwrap(),
    )
}

async fn take(events: &mut Events, n: usize) -> Vec<sse::Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(events.next().await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_topic_fans_out_in_order_and_a_slow_subscriber_holds_nobody_up() {
    const EVENTS: usize = 200;
    let gateway = Gateway::start("").await;
    // A topic nobody created or published to is not there to read; creating it is
    // idempotent.
    let unknown = http()
        .get(format!("{}/v1/topics/news", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(create_topic(&gateway, "news").await, 201);
    assert_eq!(create_topic(&gateway, "news").await, 200);
    // Subscribe before publishing (live only is the default).
    let mut subscribers = join_all((0..100).map(|_| subscribe(&gateway, "/v1/topics/news"))).await;
    let mut slow = subscribers.pop().unwrap(); // never read until the others are done
    for batch in 0..(EVENTS / 10) {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({ "event": "note", "data": { "n": batch * 10 + i } }))
            .collect();
        let published = publish(&gateway, "news", Value::Array(events)).await;
        assert_eq!(published.status(), 200);
    }
    let received = join_all(subscribers.iter_mut().map(|s| take(s, EVENTS))).await;
    let expected: Vec<(String, String)> = received[0]
        .iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    assert_eq!(expected.len(), EVENTS);
    for (i, (_, data)) in expected.iter().enumerate() {
        assert_eq!(serde_json::from_str::<Value>(data).unwrap()["n"], i);
    }
    for events in &received {
        let got: Vec<(String, String)> = events
            .iter()
            .map(|e| (e.id.clone(), e.data.clone()))
            .collect();
        assert_eq!(
            got, expected,
            "every subscriber sees the same ordered events"
        );
        assert!(events.iter().all(|e| e.event == "note"));
    }
    // The slow subscriber was never read; it still gets everything, in order.
    let late: Vec<(String, String)> = take(&mut slow, EVENTS)
        .await
        .iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    assert_eq!(late, expected);
}

#[tokio::test]
async fn topic_subscriptions_resume_and_replay() {
    let gateway = Gateway::start("").await;
    for n in 0..5 {
        publish(
            &gateway,
            "t",
            json!({ "event": "tick", "data": n, "id": format!("pub-{n}") }),
        )
        .await;
    }
    let mut earliest = subscribe(&gateway, "/v1/topics/t?from=earliest").await;
    let all = take(&mut earliest, 5).await;
    // A named stream's ids are `<seq>.<epoch>`, one epoch for the topic's history.
    let (first, epoch) = all[0].id.split_once('.').unwrap();
    assert_eq!(first, "1");
    assert!(all.iter().all(|e| e.id.ends_with(&format!(".{epoch}"))));
    assert_eq!(
        serde_json::from_str::<Value>(&all[4].data).unwrap(),
        json!({ "id": "pub-4", "data": 4 })
    );
    let resumed = Events::new(
        http()
            .get(format!("{}/v1/topics/t", gateway.url))
            .header("last-event-id", "3")
            .send()
            .await
            .unwrap(),
    );
    let mut resumed = resumed;
    let rest = take(&mut resumed, 2).await;
    assert_eq!(
        (rest[0].id.clone(), rest[1].id.clone()),
        (format!("4.{epoch}"), format!("5.{epoch}"))
    );
    for bad in [
        json!({ "event": "a\nb" }),
        json!({ "event": "x", "id": "1\r2" }),
        json!([]),
    ] {
        let refused = publish(&gateway, "t", bad).await;
        assert_eq!(refused.status(), 400);
    }
}

#[tokio::test]
async fn a_task_reports_to_early_and_late_subscribers() {
    let gateway = Gateway::start("").await;
    let created: Value = http()
        .post(format!("{}/v1/tasks", gateway.url))
        .json(&json!({ "title": "import", "total": 3 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["taskId"].as_str().unwrap().to_owned();
    let post = |path: String, body: Value| {
        let url = format!("{}/v1/tasks/{id}/{path}", gateway.url);
        async move { http().post(url).json(&body).send().await.unwrap() }
    };
    let mut early = subscribe(&gateway, &format!("/v1/tasks/{id}/events")).await;
    let snapshot = early.next().await.unwrap();
    assert_eq!(snapshot.event, "task_status");
    assert_eq!(
        serde_json::from_str::<Value>(&snapshot.data).unwrap(),
        json!({ "taskId": id, "status": "submitted", "step": 0, "total": 3 })
    );
    for step in 1..=2 {
        let reported = post(
            "progress".into(),
            json!({ "step": step, "message": "working" }),
        )
        .await;
        assert_eq!(reported.status(), 200);
    }
    let mut late = subscribe(&gateway, &format!("/v1/tasks/{id}/events")).await;
    let late_snapshot: Value = serde_json::from_str(&late.next().await.unwrap().data).unwrap();
    assert_eq!(late_snapshot["status"], "working");
    assert_eq!(late_snapshot["step"], 2);
    assert_eq!(
        post("complete".into(), json!({ "result": { "rows": 42 } }))
            .await
            .status(),
        200
    );

    let early_events = early.rest().await;
    let names: Vec<&str> = early_events.iter().map(|e| e.event.as_ref()).collect();
    assert_eq!(names, ["progress", "progress", "completed"]);
    assert_eq!(
        serde_json::from_str::<Value>(&early_events[1].data).unwrap()["step"],
        2
    );
    let late_events = late.rest().await;
    assert_eq!(late_events.len(), 1);
    assert_eq!(late_events[0].event, "completed");
    assert_eq!(
        serde_json::from_str::<Value>(&late_events[0].data).unwrap()["result"]["rows"],
        42
    );

    // A finished task: snapshot and terminal event at once, then the end.
    let after = subscribe(&gateway, &format!("/v1/tasks/{id}/events"))
        .await
        .rest()
        .await;
    assert_eq!(after.len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(&after[0].data).unwrap()["status"],
        "completed"
    );
    assert_eq!(after[1].event, "completed");

    // Invalid transitions.
    let refused = post("progress".into(), json!({ "step": 3 })).await;
    assert_eq!(refused.status(), 409);
    assert_eq!(
        post("fail".into(), json!({ "error": "late" }))
            .await
            .status(),
        409
    );
    let malformed = post("progress".into(), json!({ "step": "three" })).await;
    assert_eq!(malformed.status(), 400);
}

#[tokio::test]
async fn a_failed_task_ends_with_failed() {
    let gateway = Gateway::start("").await;
    let created: Value = http()
        .post(format!("{}/v1/tasks", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["taskId"].as_str().unwrap();
    let failed = http()
        .post(format!("{}/v1/tasks/{id}/fail", gateway.url))
        .json(&json!({ "error": "disk full" }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 200);
    let events = subscribe(&gateway, &format!("/v1/tasks/{id}/events"))
        .await
        .rest()
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].data).unwrap()["status"],
        "failed"
    );
    assert_eq!(events[1].event, "failed");
    let unknown = http()
        .get(format!(
            "{}/v1/tasks/{}/events",
            gateway.url,
            streamlog::StreamId::new()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn topics_keep_at_most_max_events() {
    let gateway = Gateway::start("[topics]\nmax_events = 5\n").await;
    let events: Vec<Value> = (0..20)
        .map(|n| json!({ "event": "n", "data": n }))
        .collect();
    assert_eq!(
        publish(&gateway, "kept", Value::Array(events))
            .await
            .status(),
        200
    );
    gateway::http::hub::retention_pass(&gateway.state).await;
    let mut earliest = subscribe(&gateway, "/v1/topics/kept?from=earliest").await;
    let kept = take(&mut earliest, 5).await;
    let seqs: Vec<&str> = kept
        .iter()
        .map(|e| e.id.split('.').next().unwrap())
        .collect();
    assert_eq!(
        seqs,
        ["16", "17", "18", "19", "20"],
        "the oldest went first"
    );
    // Publishing continues the sequence after a trim.
    publish(&gateway, "kept", json!({ "event": "n", "data": 20 })).await;
    assert!(earliest.next().await.unwrap().id.starts_with("21."));
}

#[tokio::test]
async fn bodies_that_are_not_objects_are_refused() {
    let gateway = Gateway::start("").await;
    let post = |path: &str, body: &'static str| {
        let url = format!("{}{path}", gateway.url);
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    for body in [
        "5",
        "\"x\"",
        "null",
        "[5]",
        "{}",
        "[{\"event\": \"e\"}]",
        "[{\"event\": 3, \"data\": 1}]",
    ] {
        let refused = post("/v1/topics/t/events", body).await;
        assert_eq!(refused.status(), 400, "publish {body}");
    }
    let empty = http()
        .post(format!("{}/v1/topics/t/events", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400, "an empty publish");
    let task: Value = post("/v1/tasks", "{}").await.json().await.unwrap();
    let id = task["taskId"].as_str().unwrap().to_owned();
    for body in ["\"x\"", "5", "[1]"] {
        let refused = post(&format!("/v1/tasks/{id}/complete"), body).await;
        assert_eq!(refused.status(), 400, "complete {body}");
    }
    let done = post(&format!("/v1/tasks/{id}/complete"), "{\"result\": 1}").await;
    assert_eq!(done.status(), 200);
}

#[tokio::test]
async fn a_record_over_the_byte_limit_is_refused_whole() {
    // Right after the harness's own `[store]` table, so it lands in it.
    let gateway = Gateway::start("max_record_bytes = 1000\n").await;
    let small = json!({ "event": "note", "data": "x".repeat(500) });
    let large = json!({ "event": "note", "data": "x".repeat(2000) });

    let refused = publish(&gateway, "big", json!([small.clone(), large])).await;
    assert_eq!(refused.status(), 413);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "record_too_large");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]")
    );
    // Nothing of a refused publish was written; a small one goes through.
    let published = publish(&gateway, "big", small).await;
    assert_eq!(published.status(), 200);
    let body: Value = published.json().await.unwrap();
    assert_eq!(body["first"], body["id"]);

    let task: Value = http()
        .post(format!("{}/v1/tasks", gateway.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["taskId"].as_str().unwrap();
    let progress = http()
        .post(format!("{}/v1/tasks/{id}/progress", gateway.url))
        .json(&json!({ "step": 1, "message": "y".repeat(2000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(progress.status(), 413);
}
