//! What one principal may hold at once: answers generating, readers open, and how long a
//! reader may stay (then it ends resumably).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, chat_body, http};
use serde_json::{Value, json};

fn config(limits: &str) -> String {
    let hash = |key: &str| -> String {
        gateway::auth::sha256(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    format!(
        "[limits]\n{limits}\n[[auth.keys]]\nprincipal = \"alice\"\nsha256 = \"{}\"\n[[auth.keys]]\nprincipal = \"bob\"\nsha256 = \"{}\"\n[[models]]\nname = \"slow\"\ntargets = [{{ provider = \"simulator\", tokens = 100000, interval_ms = 5 }}]\n",
        hash("alice-key"),
        hash("bob-key")
    )
}

async fn chat(gateway: &Gateway, key: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&chat_body("slow", true))
        .send()
        .await
        .unwrap()
}

/// A whole answer of the model `quick`.
async fn quick(gateway: &Gateway, key: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(key)
        .json(&chat_body("quick", false))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_principal_may_generate_only_so_many_answers_at_once() {
    let gateway = Gateway::start(&config("max_streams_per_principal = 2")).await;
    let first = Events::new(chat(&gateway, "alice-key").await);
    let second = Events::new(chat(&gateway, "alice-key").await);

    let third = chat(&gateway, "alice-key").await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_streams");
    // Another principal is counted apart.
    let bobs = chat(&gateway, "bob-key").await;
    assert_eq!(bobs.status(), 200);

    // Once alice's answers end, she may ask again.
    for answer in [&first, &second] {
        let cancelled = http()
            .post(format!(
                "{}/v1/streams/{}/cancel",
                gateway.url,
                answer.stream_id()
            ))
            .bearer_auth("alice-key")
            .send()
            .await
            .unwrap();
        assert!(cancelled.status().is_success());
    }
    let bob = Events::new(bobs);
    let cancelled = http()
        .post(format!(
            "{}/v1/streams/{}/cancel",
            gateway.url,
            bob.stream_id()
        ))
        .bearer_auth("bob-key")
        .send()
        .await
        .unwrap();
    assert!(cancelled.status().is_success());
    gateway.settle().await;
    assert_eq!(chat(&gateway, "alice-key").await.status(), 200);
}

#[tokio::test]
async fn a_principal_may_have_only_so_many_readers_open() {
    let gateway = Gateway::start(&config("max_readers_per_principal = 1")).await;
    let created = http()
        .post(format!("{}/v1/topics/news", gateway.url))
        .bearer_auth("alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let subscribe = |key: &'static str| {
        let url = format!("{}/v1/topics/news", gateway.url);
        async move { http().get(url).bearer_auth(key).send().await.unwrap() }
    };
    let reading = subscribe("alice-key").await;
    assert_eq!(reading.status(), 200);

    let second = subscribe("alice-key").await;
    assert_eq!(second.status(), 429);
    let error: Value = second.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_readers");
    assert_eq!(subscribe("bob-key").await.status(), 200);
    // An answer's own stream counts as a reader too.
    assert_eq!(chat(&gateway, "alice-key").await.status(), 429);
}

#[tokio::test]
async fn an_old_reader_is_ended_resumably_and_misses_nothing() {
    let gateway = Gateway::start(&config("max_reader_age_s = 1")).await;
    let publish = |n: u64| {
        let url = format!("{}/v1/topics/ticks/events", gateway.url);
        async move {
            let published = http()
                .post(url)
                .bearer_auth("alice-key")
                .json(&json!({ "event": "tick", "data": n }))
                .send()
                .await
                .unwrap();
            assert_eq!(published.status(), 200);
        }
    };
    publish(0).await;
    let reader = http()
        .get(format!("{}/v1/topics/ticks?from=earliest", gateway.url))
        .bearer_auth("alice-key")
        .send()
        .await
        .unwrap();
    // The reader ends by itself once it is a second old: no error, no [DONE].
    let seen = Events::new(reader).rest().await;
    assert_eq!(seen.len(), 1);
    let last = seen.last().unwrap().id.clone();
    publish(1).await;
    let resumed = http()
        .get(format!("{}/v1/topics/ticks", gateway.url))
        .bearer_auth("alice-key")
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    let mut resumed = Events::new(resumed);
    let next = resumed.next().await.unwrap();
    assert_eq!(next.data, "1");
}

#[tokio::test]
async fn a_principal_may_ask_only_so_many_times_a_minute() {
    let gateway = Gateway::start(&config(
        "requests_per_minute = 2\n[[models]]\nname = \"quick\"\ntargets = [{ provider = \"simulator\", tokens = 2 }]",
    ))
    .await;
    assert_eq!(quick(&gateway, "alice-key").await.status(), 200);
    assert_eq!(quick(&gateway, "alice-key").await.status(), 200);
    let third = quick(&gateway, "alice-key").await;
    assert_eq!(third.status(), 429);
    // Two a minute: the next one in 30 s.
    assert_eq!(third.headers()["retry-after"], "30");
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limited");
    assert_eq!(quick(&gateway, "bob-key").await.status(), 200);
}

#[tokio::test]
async fn a_principal_may_spend_only_so_many_tokens_a_minute() {
    let gateway = Gateway::start(&config(
        "tokens_per_minute = 30\n[[models]]\nname = \"quick\"\ntargets = [{ provider = \"simulator\", tokens = 40 }]",
    ))
    .await;
    // The first answer is admitted with 30 tokens left and spends more than 40.
    let first = quick(&gateway, "alice-key").await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let spent = first["usage"]["total_tokens"].as_u64().unwrap();
    assert!(spent > 40, "{first}");
    gateway.settle().await;
    let refused = quick(&gateway, "alice-key").await;
    assert_eq!(refused.status(), 429);
    // In debt by spent - 30; at 30 a minute, one token back takes 2 s each.
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2 * (spent - 30)..=2 * (spent - 30) + 2).contains(&wait),
        "{wait}"
    );
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "tokens_rate_limited");
    assert_eq!(quick(&gateway, "bob-key").await.status(), 200);
}

#[tokio::test]
async fn a_body_of_too_many_json_values_is_refused_before_it_is_parsed() {
    let gateway = Gateway::start(&config("")).await;
    let messages = vec![json!({"role": "user", "content": "x"}); 30_000];
    let body = json!({"model": "slow", "messages": messages});
    let refused = http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth("alice-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "request_too_complex");
}
