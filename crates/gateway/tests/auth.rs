//! Who may do what: API keys with scopes, JSON Web Tokens, and the ownership rules (topics
//! belong to the system, the stream endpoints act on chat streams only, idempotency keys
//! cannot reach another kind of stream).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, http};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Keys: `alice-key` (default scopes), `reader-key` (subscribe only), `ops-key` (chat and
/// admin), `topic-key` (a principal called `topic`). Tokens are RS256, verified with the
/// test JWKS.
fn config() -> String {
    let hash = |key: &str| -> String {
        gateway::auth::sha256(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    format!(
        r#"
[auth.jwt]
jwks_file = "{jwks}"
issuer = "https://id.example"
audience = "unbroken"

[[auth.keys]]
principal = "alice"
sha256 = "{alice}"

[[auth.keys]]
principal = "reader"
sha256 = "{reader}"
scopes = ["subscribe"]

[[auth.keys]]
principal = "ops"
sha256 = "{ops}"
scopes = ["chat", "admin"]

[[auth.keys]]
principal = "topic"
sha256 = "{topic}"

[[models]]
name = "slow"
targets = [{{ provider = "simulator", tokens = 100000, interval_ms = 5 }}]

[[models]]
name = "sim"
targets = [{{ provider = "simulator", tokens = 5 }}]
"#,
        jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json"),
        alice = hash("alice-key"),
        reader = hash("reader-key"),
        ops = hash("ops-key"),
        topic = hash("topic-key"),
    )
}

fn token(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_der(include_bytes!("fixtures/jwt/rsa_private.der"));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn claims(sub: &str, scope: &str, exp_from_now: i64) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    json!({ "sub": sub, "scope": scope, "exp": now + exp_from_now,
            "iss": "https://id.example", "aud": "unbroken" })
}

async fn call(
    gateway: &Gateway,
    method: reqwest::Method,
    path: &str,
    credential: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = http()
        .request(method, format!("{}{path}", gateway.url))
        .bearer_auth(credential);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap()["error"].clone(),
    )
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": "hi" }] })
}

#[tokio::test]
async fn scopes_decide_what_a_key_may_do_and_name_what_is_missing() {
    let gateway = Gateway::start(&config()).await;
    use reqwest::Method;

    let (status, error) = error_of(
        call(
            &gateway,
            Method::POST,
            "/v1/chat/completions",
            "reader-key",
            Some(chat("sim")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(error["code"], "insufficient_scope");
    assert!(
        error["message"].as_str().unwrap().contains("`chat`"),
        "{error}"
    );

    let publish = json!({ "event": "note", "data": { "n": 1 } });
    let (status, error) = error_of(
        call(
            &gateway,
            Method::POST,
            "/v1/topics/news/events",
            "reader-key",
            Some(publish.clone()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        error["message"].as_str().unwrap().contains("`publish`"),
        "{error}"
    );
    // Alice may publish (the default scopes); the reader may then subscribe.
    let published = call(
        &gateway,
        Method::POST,
        "/v1/topics/news/events",
        "alice-key",
        Some(publish),
    )
    .await;
    assert_eq!(published.status(), 200);
    let subscribed = call(
        &gateway,
        Method::GET,
        "/v1/topics/news?from=earliest",
        "reader-key",
        None,
    )
    .await;
    assert_eq!(subscribed.status(), 200);

    // Everyone's usage is an admin's to see.
    let (status, _) = error_of(
        call(
            &gateway,
            Method::GET,
            "/v1/usage?principal=all",
            "alice-key",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    let everyone = call(
        &gateway,
        Method::GET,
        "/v1/usage?principal=all",
        "ops-key",
        None,
    )
    .await;
    assert_eq!(everyone.status(), 200);
}

#[tokio::test]
async fn an_admin_may_cancel_any_answer_and_nobody_else_may() {
    let gateway = Gateway::start(&config()).await;
    use reqwest::Method;
    let answer = Events::new(
        call(
            &gateway,
            Method::POST,
            "/v1/chat/completions",
            "alice-key",
            Some(chat("slow")),
        )
        .await,
    );
    let id = answer.stream_id();
    let path = format!("/v1/streams/{id}/cancel");

    let (status, _) = error_of(call(&gateway, Method::POST, &path, "topic-key", None).await).await;
    assert_eq!(status, 404, "another principal does not see it");
    let cancelled = call(&gateway, Method::POST, &path, "ops-key", None).await;
    assert!(cancelled.status().is_success(), "{}", cancelled.status());
    let events = answer.rest().await;
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "cancelled");
}

#[tokio::test]
async fn topics_belong_to_the_system_and_stream_endpoints_act_on_answers_only() {
    let gateway = Gateway::start(&config()).await;
    use reqwest::Method;
    // An unknown topic is not created by reading it.
    let (status, error) = error_of(
        call(
            &gateway,
            Method::GET,
            "/v1/topics/prices",
            "alice-key",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("topic_not_found"))
    );

    // A principal called `topic` whose idempotency key is the topic's name gets its own
    // chat answer, not the topic.
    let hijack = http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth("topic-key")
        .header("idempotency-key", "prices")
        .json(&json!({ "model": "sim", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(hijack.status(), 200);
    let (status, _) = error_of(
        call(
            &gateway,
            Method::GET,
            "/v1/topics/prices",
            "alice-key",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);

    // Created by a publish; its first publisher does not own it: nobody can end it
    // through the chat stream endpoints.
    let created = call(
        &gateway,
        Method::POST,
        "/v1/topics/prices",
        "alice-key",
        None,
    )
    .await;
    assert_eq!(created.status(), 201);
    let subscribed = call(
        &gateway,
        Method::GET,
        "/v1/topics/prices",
        "alice-key",
        None,
    )
    .await;
    let topic_id = Events::new(subscribed).stream_id();
    for credential in ["alice-key", "ops-key"] {
        let (status, _) = error_of(
            call(
                &gateway,
                Method::POST,
                &format!("/v1/streams/{topic_id}/cancel"),
                credential,
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 404, "{credential} cannot cancel a topic");
        let (status, _) = error_of(
            call(
                &gateway,
                Method::GET,
                &format!("/v1/streams/{topic_id}/status"),
                credential,
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 404);
    }
    let published = call(
        &gateway,
        Method::POST,
        "/v1/topics/prices/events",
        "topic-key",
        Some(json!({ "event": "tick", "data": 1 })),
    )
    .await;
    assert_eq!(published.status(), 200, "any publisher may publish");
}

#[tokio::test]
async fn tokens_name_their_principal_and_scopes_and_bad_ones_say_why() {
    let gateway = Gateway::start(&config()).await;
    use reqwest::Method;
    let good = token(&claims("carol", "chat", 3600));
    let answered = call(
        &gateway,
        Method::POST,
        "/v1/chat/completions",
        &good,
        Some(chat("sim")),
    )
    .await;
    assert_eq!(answered.status(), 200);
    let id = Events::new(answered).stream_id();
    // Carol's stream is carol's: another token's subject does not see it.
    let dave = token(&claims("dave", "chat", 3600));
    let (status, _) = error_of(
        call(
            &gateway,
            Method::GET,
            &format!("/v1/streams/{id}/status"),
            &dave,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let mine = call(
        &gateway,
        Method::GET,
        &format!("/v1/streams/{id}/status"),
        &good,
        None,
    )
    .await;
    assert_eq!(mine.status(), 200);

    let subscriber = token(&claims("carol", "subscribe", 3600));
    let (status, error) = error_of(
        call(
            &gateway,
            Method::POST,
            "/v1/chat/completions",
            &subscriber,
            Some(chat("sim")),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("insufficient_scope"))
    );

    let expired = token(&claims("carol", "chat", -3600));
    let mut wrong_audience = claims("carol", "chat", 3600);
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = claims("carol", "chat", 3600);
    wrong_issuer["iss"] = json!("https://evil.example");
    // Carol's signature on dave's claims.
    let forged = {
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = dave.split('.').nth(1).unwrap();
        parts.join(".")
    };
    for (credential, says) in [
        (expired, "expired"),
        (token(&wrong_audience), "audience"),
        (token(&wrong_issuer), "issuer"),
        (forged, "signature"),
    ] {
        let (status, error) =
            error_of(call(&gateway, Method::GET, "/v1/models", &credential, None).await).await;
        assert_eq!(status, 401);
        assert_eq!(error["code"], "invalid_token");
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{says}: {error}"
        );
    }
}

#[tokio::test]
async fn a_keyless_gateway_answers_only_to_its_own_host_names() {
    let gateway = Gateway::start(
        "[server]\nallowed_hosts = [\"gw.lan\"]\n[[models]]\nname = \"sim\"\ntargets = [{ provider = \"simulator\", tokens = 3 }]\n",
    )
    .await;
    let port = gateway.url.rsplit(':').next().unwrap().to_owned();
    let with_host = |host: String| {
        let url = format!("{}/v1/models", gateway.url);
        async move { http().get(url).header("host", host).send().await.unwrap() }
    };
    // A page that rebound its own name to 127.0.0.1 still sends that name.
    let rebound = with_host(format!("attacker.example:{port}")).await;
    assert_eq!(rebound.status(), 421);
    let (_, error) = error_of(rebound).await;
    assert_eq!(error["code"], "invalid_host");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "gw.lan".to_owned(),
    ] {
        assert_eq!(with_host(host.clone()).await.status(), 200, "{host}");
    }
}

#[tokio::test]
async fn with_auth_on_the_host_is_not_checked() {
    let gateway = Gateway::start(&config()).await;
    let response = http()
        .get(format!("{}/v1/models", gateway.url))
        .header("host", "gateway.example.com")
        .bearer_auth("alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
