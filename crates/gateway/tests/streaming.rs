//! The main job end to end over real TCP: streaming, resume, idempotency, cancel,
//! non-streaming answers, reader grace and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, Upstream, chat_body, http, ids, text_of};
use providers::simulator::SimulatorConfig;

const SIM: &str = r#"
[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 40, interval_ms = 1 }]
"#;

#[tokio::test]
async fn a_streamed_answer_is_chunks_with_ids_then_done() {
    let gateway = Gateway::start(SIM).await;
    let response = gateway.chat(&chat_body("sim", true)).await;
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(
        response.headers()["cache-control"],
        "no-cache, no-transform"
    );
    let events = Events::new(response);
    let id = events.stream_id();
    let events = events.rest().await;
    // The record naming the upstream request that serves (1) is not rendered, nor the
    // usage (42) unless asked for, so every chunk has a choice: code that reads
    // `choices[0]` of each chunk works.
    assert_eq!(
        ids(&events),
        (2..=41).chain([43, 44]).collect::<Vec<_>>(),
        "40 tokens, finish, [DONE]"
    );
    for event in &events[..41] {
        let chunk: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert!(chunk["choices"][0].is_object(), "{}", event.data);
    }
    assert!(
        events.iter().all(|e| e.event == "message"),
        "no named events"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let first: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(first["id"], format!("chatcmpl-{id}"));
    assert_eq!(first["object"], "chat.completion.chunk");
    let finish: serde_json::Value = serde_json::from_str(&events[40].data).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(text_of(&events).split_whitespace().count(), 40);
}

#[tokio::test]
async fn the_usage_chunk_follows_the_finish_when_asked_for_and_on_resume() {
    let gateway = Gateway::start(SIM).await;
    let mut body = chat_body("sim", true);
    body["stream_options"] = serde_json::json!({ "include_usage": true });
    let events = Events::new(gateway.chat(&body).await);
    let id = events.stream_id();
    let events = events.rest().await;
    let tail: Vec<serde_json::Value> = events[40..42]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(tail[0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(tail[1]["choices"], serde_json::json!([]));
    assert_eq!(tail[1]["usage"]["completion_tokens"], 40);
    assert_eq!(events[42].data, "[DONE]");
    // The usage chunk has no id of its own: the finish's stays the last, so resuming
    // from it repeats nothing.
    assert_eq!(ids(&events)[40..], [43, 43, 44]);
    // A resume from the last token gets the finish and the usage again (the stored
    // request asked for it), then [DONE].
    let resumed = Events::new(
        http()
            .get(format!("{}/v1/streams/{id}", gateway.url))
            .header("last-event-id", "41")
            .send()
            .await
            .unwrap(),
    )
    .rest()
    .await;
    let data: Vec<&str> = resumed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, [events[40].data.as_str(), &events[41].data, "[DONE]"]);
    // A stream_options that is not an object is refused, naming it.
    let mut bad = chat_body("sim", true);
    bad["stream_options"] = serde_json::json!({ "include_usage": "yes" });
    let refused = gateway.chat(&bad).await;
    assert_eq!(refused.status(), 400);
    let error: serde_json::Value = refused.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream_options.include_usage")
    );
}

#[tokio::test]
async fn resume_after_a_cut_gives_exactly_the_rest() {
    resume_gives_exactly_the_rest(Gateway::start(SIM).await).await;
}

#[tokio::test]
async fn resume_after_a_cut_gives_exactly_the_rest_on_sqlite() {
    // The default store: creation overlapped with the upstream request, group-committed
    // appends, readers fed only committed records — the answer is still whole, once.
    let dir = tempfile::tempdir().unwrap();
    resume_gives_exactly_the_rest(Gateway::start_sqlite(dir.path(), SIM).await).await;
}

async fn resume_gives_exactly_the_rest(gateway: Gateway) {
    let whole = Events::new(gateway.chat(&chat_body("sim", true)).await)
        .rest()
        .await;

    let mut cut = Events::new(gateway.chat(&chat_body("sim", true)).await);
    let id = cut.stream_id();
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(cut.next().await.unwrap());
    }
    drop(cut); // the connection drops mid-answer
    let last = seen.last().unwrap().id.clone();
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    seen.extend(Events::new(resumed).rest().await);
    assert_eq!(ids(&seen), ids(&whole), "no id missing, none twice");
    assert_eq!(text_of(&seen), text_of(&whole), "the same answer");

    // After the end: the finish chunk's id gives just [DONE]; [DONE]'s id gives 204.
    let after_finish = http()
        .get(format!("{}/v1/streams/{id}?last_event_id=43", gateway.url))
        .send()
        .await
        .unwrap();
    let rest = Events::new(after_finish).rest().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(
        (rest[0].id.as_str(), rest[0].data.as_str()),
        ("44", "[DONE]")
    );
    let done = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .header("last-event-id", "44")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 204);
}

#[tokio::test]
async fn the_events_view_names_records() {
    let gateway = Gateway::start(SIM).await;
    let events = Events::new(gateway.chat(&chat_body("sim", true)).await);
    let id = events.stream_id();
    events.rest().await;
    let view = http()
        .get(format!(
            "{}/v1/streams/{id}?format=events&last_event_id=40",
            gateway.url
        ))
        .send()
        .await
        .unwrap();
    let events = Events::new(view).rest().await;
    let names: Vec<_> = events.iter().map(|e| e.event.to_string()).collect();
    assert_eq!(names, ["text", "usage", "finish"]);
}

#[tokio::test]
async fn non_streaming_answers_are_assembled_from_the_log() {
    let gateway = Gateway::start(SIM).await;
    let response = gateway.chat(&chat_body("sim", false)).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["unbroken-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], format!("chatcmpl-{id}"));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 40);
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 40);
}

#[tokio::test]
async fn an_idempotency_key_attaches_instead_of_asking_again() {
    let upstream = Upstream::start(SimulatorConfig {
        tokens: 30,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"up\"\ntargets = [{{ provider = \"openai\", base_url = \"{}\" }}]\n",
        upstream.url
    ))
    .await;
    let body = chat_body("up", true);
    let send = |key: &'static str, body: serde_json::Value| {
        let url = format!("{}/v1/chat/completions", gateway.url);
        async move {
            http()
                .post(url)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let mut first = Events::new(send("k-1", body.clone()).await);
    let id = first.stream_id();
    let early = first.next().await.unwrap();
    drop(first); // cut after one event
    let again = Events::new(send("k-1", body.clone()).await);
    assert_eq!(again.stream_id(), id, "the same stream");
    let replay = again.rest().await;
    assert_eq!(replay[0].data, early.data, "replayed from the start");
    assert_eq!(replay.last().unwrap().data, "[DONE]");
    assert_eq!(upstream.requests(), 1, "the upstream was asked once");

    let mut other = body.clone();
    other["messages"][0]["content"] = "something else".into();
    let conflict = send("k-1", other).await;
    assert_eq!(conflict.status(), 422);
    let error: serde_json::Value = conflict.json().await.unwrap();
    assert_eq!(error["error"]["code"], "idempotency_key_reused");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn a_client_gone_before_the_first_token_does_not_stop_the_answer() {
    let upstream = Upstream::start(SimulatorConfig {
        tokens: 5,
        ttft_ms: 300,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"up\"\ntargets = [{{ provider = \"openai\", base_url = \"{}\" }}]\n",
        upstream.url
    ))
    .await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let body = chat_body("up", true);
    // The client gives up long before the upstream's first token.
    let gave_up = http()
        .post(&url)
        .header("idempotency-key", "early")
        .timeout(std::time::Duration::from_millis(50))
        .json(&body)
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let again = http()
        .post(&url)
        .header("idempotency-key", "early")
        .json(&body)
        .send()
        .await
        .unwrap();
    // Without the hand-off the stream would stay open with no writer: bound the wait.
    let events = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Events::new(again).rest(),
    )
    .await
    .expect("the answer was abandoned with its first client");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 5);
    assert_eq!(upstream.requests(), 1, "the upstream was asked once");
}

#[tokio::test]
async fn cancel_stops_the_writer_and_the_reader_sees_why() {
    let gateway = Gateway::start(common::SLOW).await;
    let mut events = Events::new(gateway.chat(&chat_body("slow", true)).await);
    let id = events.stream_id();
    events.next().await.unwrap();
    let cancel = gateway.cancel(&id).await;
    assert_eq!(cancel.status(), 202);
    let rest = events.rest().await;
    let last: serde_json::Value = serde_json::from_str(&rest.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "cancelled");
    assert!(rest.iter().all(|e| e.data != "[DONE]"));
    gateway.settle().await;
    let status = gateway.status(&id).await;
    assert_eq!(status["state"], "cancelled");
    assert_eq!(gateway.permits("slow", 0), 64, "the slot came back");
}

#[tokio::test]
async fn an_unread_answer_is_stopped_after_the_reader_grace() {
    let gateway = Gateway::start(
        "[server]\nreader_grace_ms = 50\n[[models]]\nname = \"slow\"\ntargets = [{ provider = \"simulator\", tokens = 100000, interval_ms = 2 }]\n",
    )
    .await;
    let mut events = Events::new(gateway.chat(&chat_body("slow", true)).await);
    let id = events.stream_id();
    events.next().await.unwrap();
    drop(events); // the client went away and never came back
    gateway.settle().await; // returns only because the grace cancelled the writer
    let status = gateway.status(&id).await;
    assert_eq!(status["state"], "cancelled");
    assert!(status["seq"].as_u64().unwrap() < 100_000);
    assert_eq!(gateway.permits("slow", 0), 64);
}

#[tokio::test]
async fn a_disconnect_does_not_stop_the_writer() {
    let gateway = Gateway::start(SIM).await;
    let mut events = Events::new(gateway.chat(&chat_body("sim", true)).await);
    let id = events.stream_id();
    events.next().await.unwrap();
    drop(events);
    gateway.settle().await;
    let status = gateway.status(&id).await;
    assert_eq!(
        status["state"], "finished",
        "the answer was written to the end"
    );
    assert_eq!(status["seq"], 43);
}

#[tokio::test]
async fn shutdown_without_grace_interrupts_readers_and_leaves_streams_open() {
    let mut gateway = Gateway::start(
        "[server]\nshutdown_grace_ms = 0\n[[models]]\nname = \"slow\"\ntargets = [{ provider = \"simulator\", tokens = 100000, interval_ms = 2 }]\n",
    )
    .await;
    let mut events = Events::new(gateway.chat(&chat_body("slow", true)).await);
    let id: streamlog::StreamId = events.stream_id().parse().unwrap();
    events.next().await.unwrap();
    let state = gateway.state.clone();
    let ((), mut rest) = tokio::join!(gateway.shutdown(), events.rest());
    // No grace: the answer is stopped where it is, and its reader is told so.
    let ending = rest.pop().expect("an ending event");
    let error: serde_json::Value = serde_json::from_str(&ending.data).unwrap();
    assert_eq!(error["error"]["code"], "interrupted", "{}", ending.data);
    assert!(rest.iter().all(|e| e.data != "[DONE]"));
    let meta = state.log.status(id).await.unwrap();
    assert_eq!(
        meta.state,
        streamlog::StreamState::Open,
        "never reported finished"
    );
    if let Some(before) = rest.last() {
        assert_eq!(ending.id, before.id, "the ending repeats the last id");
    }
}

#[tokio::test]
async fn a_client_still_sending_its_request_does_not_hold_the_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gateway = Gateway::start(&format!(
        "[server]\nshutdown_grace_ms = 100\nrequest_read_timeout_ms = 600000\n{SIM}"
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gateway.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // A body announced, asked for (100 Continue: the request is in the gateway's hands)
    // and never sent.
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 25];
    tcp.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 100 Continue"), "{head:?}");
    // The shutdown ends once the grace (and a second for the last writes) is over, not
    // when the request's own ten-minute deadline would.
    tokio::time::timeout(std::time::Duration::from_secs(30), gateway.shutdown())
        .await
        .expect("the stalled client held the shutdown");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn shutdown_lets_an_answer_in_flight_finish_within_the_grace() {
    let mut gateway = Gateway::start(
        "[server]\nshutdown_grace_ms = 20000\n[[models]]\nname = \"short\"\ntargets = [{ provider = \"simulator\", tokens = 20, interval_ms = 20 }]\n",
    )
    .await;
    let url = gateway.url.clone();
    let mut events = Events::new(gateway.chat(&chat_body("short", true)).await);
    let first = events.next().await.unwrap();
    let (rest, ()) = tokio::join!(events.rest(), gateway.shutdown());
    let mut all = vec![first];
    all.extend(rest);
    assert_eq!(
        all.pop().unwrap().data,
        "[DONE]",
        "the reader stayed for the end of the answer"
    );
    assert_eq!(text_of(&all).split_whitespace().count(), 20);
    assert!(
        http()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body("short", true))
            .send()
            .await
            .is_err(),
        "nothing new is accepted"
    );
}

#[tokio::test]
async fn heartbeats_flow_while_tokens_are_slow() {
    let gateway = Gateway::start(
        "[server]\nheartbeat_interval_ms = 10\n[[models]]\nname = \"slow\"\ntargets = [{ provider = \"simulator\", tokens = 3, interval_ms = 300 }]\n",
    )
    .await;
    let response = gateway.chat(&chat_body("slow", true)).await;
    let body = response.text().await.unwrap();
    assert!(body.starts_with("retry: 1000\n"), "{body}");
    assert!(body.contains(": keep-alive\n"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_slow_first_token_gets_headers_and_heartbeats_first() {
    let upstream = Upstream::start(SimulatorConfig {
        tokens: 3,
        ttft_ms: 400,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[server]\nheartbeat_interval_ms = 50\n[[models]]\nname = \"up\"\ntargets = [{{ provider = \"openai\", base_url = \"{}\" }}]\n",
        upstream.url
    ))
    .await;
    let response = gateway.chat(&chat_body("up", true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let heartbeat = body.find(": keep-alive\n").expect("a heartbeat");
    let first_event = body.find("data: ").expect("events");
    assert!(heartbeat < first_event, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
}
