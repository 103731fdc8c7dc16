//! Several nodes on one Redis, in one test process: each node has its own connection to
//! the log and its own node id, as separate processes would. A reader on any node follows
//! an answer written by another; an `Idempotency-Key` retry on another node attaches to
//! the running answer, and the upstream is asked once; a topic's subscribers on every
//! node get what any node publishes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Events, Gateway, Upstream, chat_body, http, parse, text_of};
use gateway::AppState;
use providers::simulator::SimulatorConfig;
use streamlog::redis::LocalServer;

const WITHIN: Duration = Duration::from_secs(30);

async fn node(redis: &LocalServer, id: &str, upstream: &Upstream) -> Gateway {
    let config = parse(&format!(
        "[server]\nnode_id = \"{id}\"\n\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"openai\", base_url = \"{}\", supports_prefill = true }}]\n",
        redis.url, upstream.url
    ));
    let log = gateway::open_log(&config.store).unwrap();
    Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await
}

/// A Redis, an upstream of `tokens` tokens `interval_ms` apart, and two nodes on both.
async fn two_nodes(tokens: u32, interval_ms: u64) -> (LocalServer, Upstream, Gateway, Gateway) {
    let redis = LocalServer::start().unwrap();
    let upstream = Upstream::start(SimulatorConfig {
        tokens,
        interval_ms,
        ..SimulatorConfig::default()
    })
    .await;
    let a = node(&redis, "node-a", &upstream).await;
    let b = node(&redis, "node-b", &upstream).await;
    (redis, upstream, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_answer() {
    let (_redis, upstream, a, b) = two_nodes(200, 2).await;

    let url = format!("{}/v1/chat/completions", a.url);
    let first = http()
        .post(url)
        .header("idempotency-key", "k1")
        .json(&chat_body("m", true))
        .send()
        .await
        .unwrap();
    let mut first = Events::new(first);
    let id = first.stream_id();
    first.next().await.expect("the answer begins on node a");

    // The same key on node b: the same stream, followed live across nodes.
    let url = format!("{}/v1/chat/completions", b.url);
    let retried = http()
        .post(url)
        .header("idempotency-key", "k1")
        .json(&chat_body("m", true))
        .send()
        .await
        .unwrap();
    let retried = Events::new(retried);
    assert_eq!(retried.stream_id(), id);
    let on_b = tokio::time::timeout(WITHIN, retried.rest())
        .await
        .expect("node b's reader ends");
    let on_a = tokio::time::timeout(WITHIN, first.rest())
        .await
        .expect("node a's reader ends");
    assert_eq!(on_b.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&on_b).split_whitespace().count(), 200);
    assert!(text_of(&on_b).ends_with(&text_of(&on_a)));
    assert_eq!(upstream.requests(), 1, "the upstream was asked once");

    // Status and a resume from the middle, on node b.
    let status = b.status(&id).await;
    assert_eq!(status["state"], "finished", "{status}");
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", b.url))
        .header("last-event-id", "100")
        .send()
        .await
        .unwrap();
    let rest = Events::new(resumed).rest().await;
    assert_eq!(rest.first().unwrap().id, "101");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_reaches_subscribers_on_every_node() {
    let redis = LocalServer::start().unwrap();
    let upstream = Upstream::start(SimulatorConfig::default()).await;
    let a = node(&redis, "node-a", &upstream).await;
    let b = node(&redis, "node-b", &upstream).await;
    // Created on one node, there on every node.
    let created = http()
        .post(format!("{}/v1/topics/news", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mut subscribers = Vec::new();
    for gateway in [&a, &b] {
        let response = http()
            .get(format!("{}/v1/topics/news", gateway.url))
            .send()
            .await
            .unwrap();
        subscribers.push(Events::new(response));
    }
    for (i, gateway) in [&a, &b, &a].into_iter().enumerate() {
        let published = http()
            .post(format!("{}/v1/topics/news/events", gateway.url))
            .json(&serde_json::json!({ "event": "story", "data": { "n": i } }))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200, "{:?}", published.text().await);
    }
    for subscriber in &mut subscribers {
        for n in 0..3 {
            let event = tokio::time::timeout(WITHIN, subscriber.next())
                .await
                .expect("the event arrives")
                .unwrap();
            assert_eq!(event.event, "story");
            let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(data["n"], n, "in order, from either node");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_goes_away_is_a_clear_503_and_comes_back_without_a_restart() {
    let mut redis = LocalServer::start().unwrap();
    let upstream = Upstream::start(SimulatorConfig {
        tokens: 100_000,
        interval_ms: 2,
        ..SimulatorConfig::default()
    })
    .await;
    let a = node(&redis, "node-a", &upstream).await;
    let ready = |gateway: &Gateway| {
        let url = format!("{}/ready", gateway.url);
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&a).await, 200);
    let mut answer = Events::new(a.chat(&chat_body("m", true)).await);
    answer.next().await.expect("the answer begins");

    redis.kill();
    // The answer in flight ends (its reader can resume later), never as finished;
    // nothing hangs.
    let rest = tokio::time::timeout(WITHIN, answer.rest())
        .await
        .expect("the reader ends");
    assert!(rest.iter().all(|e| e.data != "[DONE]"));
    let refused = a.chat(&chat_body("m", true)).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    assert_eq!(ready(&a).await, 503);

    // Back (empty, as a Redis without persistence): served again, no restart.
    redis.restart().unwrap();
    let served = tokio::time::timeout(WITHIN, async {
        loop {
            let response = a.chat(&chat_body("m", true)).await;
            if response.status() == 200 {
                return response;
            }
            // A client's retry, as Retry-After asks.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the gateway serves again");
    drop(served);
    assert_eq!(ready(&a).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_tasks_are_driven_across_nodes() {
    let (_redis, _upstream, a, b) = two_nodes(20, 0).await;
    let post = |url: String, body: serde_json::Value| async move {
        http().post(url).json(&body).send().await.unwrap()
    };

    // A session: created on node a, the channel on node b, the messages on node a and
    // then node b.
    let created = post(
        format!("{}/v1/sessions", a.url),
        serde_json::json!({ "sessionId": "s1" }),
    )
    .await;
    assert_eq!(created.status(), 201);
    let channel = http()
        .get(format!("{}/v1/sessions/s1/events", b.url))
        .send()
        .await
        .unwrap();
    let mut channel = Events::new(channel);
    for (n, gateway) in [&a, &b].into_iter().enumerate() {
        let sent = post(
            format!("{}/v1/sessions/s1/messages", gateway.url),
            serde_json::json!({ "content": format!("question {n}") }),
        )
        .await;
        assert_eq!(sent.status(), 202, "message {n}");
        let complete = tokio::time::timeout(WITHIN, async {
            loop {
                let event = channel.next().await.expect("the channel goes on");
                if event.event == "complete" {
                    return event;
                }
            }
        })
        .await
        .expect("the answer completes");
        let complete: serde_json::Value = serde_json::from_str(&complete.data).unwrap();
        assert_eq!(complete["tokenCount"], 20);
    }
    let history: serde_json::Value = http()
        .get(format!("{}/v1/sessions/s1", a.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        4,
        "{history}"
    );

    // A task: created on a, progress from b, watched on a, completed from b.
    let created: serde_json::Value = post(
        format!("{}/v1/tasks", a.url),
        serde_json::json!({ "total": 2 }),
    )
    .await
    .json()
    .await
    .unwrap();
    let task = created["taskId"].as_str().unwrap().to_owned();
    let watching = http()
        .get(format!("{}/v1/tasks/{task}/events", a.url))
        .send()
        .await
        .unwrap();
    let watching = Events::new(watching);
    let progress = post(
        format!("{}/v1/tasks/{task}/progress", b.url),
        serde_json::json!({ "step": 1 }),
    )
    .await;
    assert_eq!(progress.status(), 200);
    let done = post(
        format!("{}/v1/tasks/{task}/complete", b.url),
        serde_json::json!({ "result": "ok" }),
    )
    .await;
    assert_eq!(done.status(), 200);
    let events = tokio::time::timeout(WITHIN, watching.rest())
        .await
        .expect("the task's events end");
    let names: Vec<&str> = events.iter().map(|e| &*e.event).collect();
    assert_eq!(names, ["task_status", "progress", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_another_node_stops_the_writer() {
    let (_redis, _upstream, a, b) = two_nodes(100_000, 2).await;
    let mut answer = Events::new(a.chat(&chat_body("m", true)).await);
    let id = answer.stream_id();
    answer.next().await.expect("the answer begins on node a");
    let cancelled = b.cancel(&id).await;
    assert_eq!(cancelled.status(), 202);
    let rest = tokio::time::timeout(WITHIN, answer.rest())
        .await
        .expect("the answer stops");
    let last: serde_json::Value = serde_json::from_str(&rest.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "cancelled", "{last}");
    a.settle().await;
    assert_eq!(b.status(&id).await["state"], "cancelled");
    assert_eq!(a.permits("m", 0), 64, "the upstream slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_topic_whose_history_redis_lost_is_told() {
    let mut redis = LocalServer::start().unwrap();
    let upstream = Upstream::start(SimulatorConfig::default()).await;
    let a = node(&redis, "node-a", &upstream).await;
    let publish = |n: u64| {
        let url = format!("{}/v1/topics/news/events", a.url);
        async move {
            let body = serde_json::json!({ "event": "story", "data": { "n": n } });
            let sent = http().post(url).json(&body).send().await.unwrap();
            assert_eq!(sent.status(), 200);
        }
    };
    for n in 0..5 {
        publish(n).await;
    }
    let subscribed = http()
        .get(format!("{}/v1/topics/news?from=earliest", a.url))
        .send()
        .await
        .unwrap();
    let mut subscriber = Events::new(subscribed);
    let mut last = String::new();
    for _ in 0..3 {
        last = subscriber.next().await.unwrap().id;
    }
    drop(subscriber);

    // Redis restarts empty; the topic starts again, and grows past the old position.
    redis.restart().unwrap();
    let recovered = tokio::time::timeout(WITHIN, async {
        loop {
            let body = serde_json::json!({ "event": "story", "data": { "n": 100 } });
            let url = format!("{}/v1/topics/news/events", a.url);
            if http().post(url).json(&body).send().await.unwrap().status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "publishing works again");
    for n in 101..106 {
        publish(n).await;
    }
    let resumed = http()
        .get(format!("{}/v1/topics/news", a.url))
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    let mut resumed = Events::new(resumed);
    let reset = resumed.next().await.unwrap();
    assert_eq!(reset.event, "reset", "told, not skipped: {}", reset.data);
    let first = resumed.next().await.unwrap();
    let data: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["n"], 100, "the new history from its start");
}

/// A node on `redis` with `[limits]` of `limits` and a quick simulator model.
async fn limited_node(redis: &LocalServer, id: &str, limits: &str) -> Gateway {
    let config = parse(&format!(
        "[server]\nnode_id = \"{id}\"\n\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[limits]\n{limits}\n\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"simulator\", tokens = 2 }}]\n",
        redis.url
    ));
    let log = gateway::open_log(&config.store).unwrap();
    Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_counted_by_every_node_together() {
    let redis = LocalServer::start().unwrap();
    let limits = "requests_per_minute = 2\nmax_readers_per_principal = 1";
    let a = limited_node(&redis, "node-a", limits).await;
    let b = limited_node(&redis, "node-b", limits).await;

    // Two requests a minute, wherever they land.
    assert_eq!(a.chat(&chat_body("m", false)).await.status(), 200);
    assert_eq!(b.chat(&chat_body("m", false)).await.status(), 200);
    let third = a.chat(&chat_body("m", false)).await;
    assert_eq!(third.status(), 429);
    let error: serde_json::Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limited");

    // One reader at once: one open on node a refuses another on node b.
    let created = http()
        .post(format!("{}/v1/topics/t", a.url))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let subscribe = |gateway: &Gateway| {
        let url = format!("{}/v1/topics/t", gateway.url);
        async move { http().get(url).send().await.unwrap() }
    };
    let open = subscribe(&a).await;
    assert_eq!(open.status(), 200);
    let refused = subscribe(&b).await;
    assert_eq!(refused.status(), 429);
    // Closing it frees the place for every node (released in the background).
    drop(open);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let again = subscribe(&b).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
