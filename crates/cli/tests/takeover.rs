//! Every started answer finishes: `kill -9` of `unbroken serve` mid-answer, then a restart
//! on the same SQLite file. The restarted node knows the streams it wrote before (its
//! node id is kept beside the database) and takes them over at once: an answer that can
//! be continued finishes exactly as an uninterrupted run would; one that cannot ends
//! `failed` / `interrupted`, never with `[DONE]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Answer, Server, Simulator, events, http};
use futures_util::StreamExt;
use serde_json::json;

/// Every wait in these tests is bounded by this (a hang fails, never blocks CI).
const WITHIN: Duration = Duration::from_secs(120);

fn sqlite(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("u.db").display())
}

fn config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("unbroken.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A config whose model `sim` is served by `simulator` as an `openai` target with `extra`
/// keys, after the `[store]` lines `store`.
fn openai_model(dir: &Path, simulator: &Simulator, store: &str, extra: &str) -> PathBuf {
    config(
        dir,
        &format!(
            "[store]\n{store}\n\n[[models]]\nname = \"sim\"\ntargets = [{{ provider = \"openai\", base_url = \"{}\"{extra} }}]\n",
            simulator.url
        ),
    )
}

async fn post(server: &Server, body: &serde_json::Value, key: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

fn stream_id(response: &reqwest::Response) -> String {
    response.headers()["unbroken-stream-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Stream `id` at `base` from the event after `last_id`, read to its end.
async fn resume(base: &str, id: &str, last_id: &str) -> Answer {
    let rest = http()
        .get(format!("{base}/v1/streams/{id}"))
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap();
    Answer::default()
        .read_to_end(&mut events(rest), WITHIN)
        .await
}

/// Start an answer, read `cut` of its events, `kill -9` the server, restart it on the
/// same store, and read the stream again from the start. Returns the stream id, what the
/// first reader saw (ids and data), the whole answer after the restart, and the server.
async fn cut_and_resume(
    config: Option<&Path>,
    store: &str,
    body: &serde_json::Value,
    cut: usize,
) -> (String, Vec<sse::Event>, Answer, Server) {
    let server = Server::start(config, store);
    let response = post(&server, body, None).await;
    let id = stream_id(&response);
    let mut live = events(response);
    let mut seen = Vec::new();
    while seen.len() < cut {
        let event = live.next().await.expect("the answer goes on");
        assert_ne!(event.data, "[DONE]", "the answer ended before the cut");
        seen.push(event);
    }
    server.kill_9();
    drop(live);

    let server = Server::start(config, store);
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", server.url))
        .send()
        .await
        .unwrap();
    let answer = Answer::default()
        .read_to_end(&mut events(resumed), WITHIN)
        .await;
    (id, seen, answer, server)
}

/// The local model at temperature 0: cut at three points, each restart finishes the
/// answer byte for byte as the uninterrupted run did, with the same finish reason; a
/// reader attached before the kill resumes from its `Last-Event-ID` with exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_answer_cut_by_kill_9_finishes_as_if_never_cut() {
    let body = json!({
        "model": "smollm2",
        "stream": true,
        "temperature": 0,
        "max_tokens": 200,
        "messages": [{ "role": "user", "content": "Name three colours of the rainbow and say one thing about each." }],
    });
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(None, &sqlite(dir.path()));
        let response = post(&server, &body, None).await;
        Answer::default()
            .read_to_end(&mut events(response), WITHIN)
            .await
    };
    assert!(reference.done && reference.error.is_none(), "{reference:?}");
    assert_eq!(reference.finish.as_deref(), Some("stop"), "{reference:?}");
    assert!(
        reference.text.len() > 100,
        "a long enough answer to cut: {reference:?}"
    );

    for cut in [2, 9, 25] {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path());
        let (id, seen, answer, server) = cut_and_resume(None, &store, &body, cut).await;
        assert_eq!(answer.text, reference.text, "cut after {cut} events");
        assert_eq!(answer.finish, reference.finish, "cut after {cut} events");
        assert!(answer.done && answer.error.is_none(), "{answer:?}");

        // The first reader comes back with the last id it saw and gets exactly the rest.
        let mut before = Answer::default();
        for event in &seen {
            before.add(event);
        }
        let rest = resume(&server.url, &id, &before.last_id).await;
        assert_eq!(before.text + &rest.text, reference.text, "cut after {cut}");
        assert!(rest.done);
    }
}

/// An `openai` target that can continue (`unbroken simulate`, which continues a prefix
/// of its own answer exactly): the answer finishes whole after a restart, and an
/// idempotent retry with the same key attaches to the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_continues_finishes_the_answer_after_kill_9() {
    let simulator = Simulator::start(&["--tokens", "300", "--interval-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let config = openai_model(
        dir.path(),
        &simulator,
        "",
        ", continuation = \"assistant_message\"",
    );
    let store = sqlite(dir.path());
    let body = json!({
        "model": "sim",
        "stream": true,
        "messages": [{ "role": "user", "content": "Tell me a story." }],
    });
    // The uninterrupted answer, straight from the simulator.
    let direct = http()
        .post(format!("{}/chat/completions", simulator.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let direct = Answer::default()
        .read_to_end(&mut events(direct), WITHIN)
        .await;

    let server = Server::start(Some(&config), &store);
    let response = post(&server, &body, Some("story-1")).await;
    let id = stream_id(&response);
    let mut live = events(response);
    for _ in 0..40 {
        live.next().await.expect("the answer goes on");
    }
    server.kill_9();
    drop(live);

    let server = Server::start(Some(&config), &store);
    // A client retrying its POST with the same key attaches to the same answer.
    let retried = post(&server, &body, Some("story-1")).await;
    assert_eq!(stream_id(&retried), id, "no second upstream request");
    let answer = Answer::default()
        .read_to_end(&mut events(retried), WITHIN)
        .await;
    assert_eq!(answer.text, direct.text);
    assert_eq!(answer.finish, direct.finish);
    assert!(answer.done && answer.error.is_none(), "{answer:?}");
}

/// A target that cannot continue: after the restart the stream ends `failed` with an
/// `interrupted` error saying where it was cut — never `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_continue_ends_interrupted() {
    let simulator = Simulator::start(&["--tokens", "100000", "--interval-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let config = openai_model(dir.path(), &simulator, "lease_ttl_ms = 1000", "");
    let body = json!({
        "model": "sim",
        "stream": true,
        "messages": [{ "role": "user", "content": "Tell me a long story." }],
    });
    let (id, seen, answer, server) =
        cut_and_resume(Some(&config), &sqlite(dir.path()), &body, 25).await;
    assert_eq!(answer.error.as_deref(), Some("interrupted"), "{answer:?}");
    assert!(!answer.done && answer.finish.is_none(), "{answer:?}");
    let mut before = Answer::default();
    for event in &seen {
        before.add(event);
    }
    assert!(
        answer.text.starts_with(&before.text),
        "what was seen is kept"
    );

    let status: serde_json::Value = http()
        .get(format!("{}/v1/streams/{id}/status", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "failed", "{status}");
}

/// A session whose answer was being relayed when the process died: after the restart
/// the answer is relayed to its end, and the session takes the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answer_is_relayed_to_its_end_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "[[models]]\nname = \"sim\"\ntargets = [{ provider = \"simulator\", tokens = 300, interval_ms = 10 }]\n",
    );
    let store = sqlite(dir.path());
    let server = Server::start(Some(&config), &store);
    let created = http()
        .post(format!("{}/v1/sessions", server.url))
        .json(&json!({ "sessionId": "s1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let session = format!("{}/v1/sessions/s1", server.url);
    let mut channel = session_channel(&session).await;
    assert_eq!(message(&session, "Tell me a story.").await, 202);
    let mut tokens = 0;
    while tokens < 30 {
        let event = channel.next().await.expect("the channel goes on");
        tokens += usize::from(event.event == "token");
    }
    server.kill_9();
    drop(channel);

    let server = Server::start(Some(&config), &store);
    let session = format!("{}/v1/sessions/s1", server.url);
    let mut channel = session_channel(&session).await;
    let complete = tokio::time::timeout(WITHIN, async {
        loop {
            let event = channel.next().await.expect("the channel goes on");
            if event.event == "complete" || event.event == "error" {
                return event;
            }
        }
    })
    .await
    .expect("the answer completes");
    assert_eq!(complete.event, "complete", "{}", complete.data);
    let complete: serde_json::Value = serde_json::from_str(&complete.data).unwrap();
    assert_eq!(complete["tokenCount"], 300, "{complete}");
    assert_eq!(complete["finishReason"], "stop", "{complete}");

    assert_eq!(
        message(&session, "And another.").await,
        202,
        "the session is free again"
    );
}

/// The SSE channel of `session` (its URL).
async fn session_channel(session: &str) -> futures_util::stream::BoxStream<'static, sse::Event> {
    events(
        http()
            .get(format!("{session}/events"))
            .send()
            .await
            .unwrap(),
    )
}

/// Send `content` to `session`; the status.
async fn message(session: &str, content: &str) -> u16 {
    let sent = http()
        .post(format!("{session}/messages"))
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap();
    sent.status().as_u16()
}

/// A TCP proxy on 127.0.0.1 spreading connections over `backends` in turn, skipping any
/// that refuses (a dead node), as a load balancer would. Serves while `tasks` lives.
async fn proxy(backends: Vec<String>, tasks: &tokio_util::task::TaskTracker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let inner = tasks.clone();
    tasks.spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let backends = backends.clone();
            inner.spawn(async move {
                for i in 0..backends.len() {
                    let addr = backends[(start + i) % backends.len()].trim_start_matches("http://");
                    if let Ok(mut server) = tokio::net::TcpStream::connect(addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Three nodes on one Redis behind a proxy; the local model at temperature 0. `kill -9`
/// of the node writing an answer: its reader reconnects through the proxy with its
/// `Last-Event-ID`, another node takes the answer over once the dead node's lease
/// expired, and the whole text is byte-identical to an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_finishes_an_answer_whose_node_died() {
    let redis = streamlog::redis::LocalServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[store]\nlease_ttl_ms = 1000\n");
    let nodes: Vec<Server> = (0..3)
        .map(|_| Server::start(Some(&config), &redis.url))
        .collect();
    let tasks = tokio_util::task::TaskTracker::new();
    let url = proxy(nodes.iter().map(|n| n.url.clone()).collect(), &tasks).await;
    let body = json!({
        "model": "smollm2",
        "stream": true,
        "temperature": 0,
        "max_tokens": 200,
        "messages": [{ "role": "user", "content": "Name three colours of the rainbow and say one thing about each." }],
    });
    let ask = || {
        http()
            .post(format!("{url}/v1/chat/completions"))
            .header("connection", "close")
            .json(&body)
            .send()
    };
    let reference = Answer::default()
        .read_to_end(&mut events(ask().await.unwrap()), WITHIN)
        .await;
    assert_eq!(reference.finish.as_deref(), Some("stop"), "{reference:?}");

    let response = ask().await.unwrap();
    let id = stream_id(&response);
    let mut live = events(response);
    let mut before = Answer::default();
    for _ in 0..10 {
        before.add(&live.next().await.expect("the answer goes on"));
    }
    // The node writing it is the one with a generation running.
    let mut writer = None;
    for (i, node) in nodes.iter().enumerate() {
        let metrics = http()
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|line| line == "unbroken_active_streams 1")
        {
            writer = Some(i);
        }
    }
    let mut nodes = nodes;
    nodes
        .remove(writer.expect("one node writes the answer"))
        .kill_9();
    drop(live);

    let rest = resume(&url, &id, &before.last_id).await;
    assert!(rest.done && rest.error.is_none(), "{rest:?}");
    assert_eq!(before.text + &rest.text, reference.text);
    assert_eq!(rest.finish, reference.finish);
}
