//! Takeover inside one process: a node that starts over a log holding answers its
//! earlier incarnation was writing continues them at once, and an idempotent retry
//! attaches to the taken-over answer instead of asking the upstream again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Events, Gateway, http, parse, text_of};
use gateway::AppState;
use streamlog::{
    IdempotencyEntry, MemoryLog, NewStream, Record, StreamId, StreamKind, StreamLog, SystemClock,
};

const WITHIN: Duration = Duration::from_secs(30);

fn body() -> serde_json::Value {
    serde_json::json!({
        "model": "m",
        "stream": true,
        "messages": [{ "role": "user", "content": "Tell me something." }],
    })
}

/// A stream that `holder` was writing when it died, holding `records`, with
/// `Idempotency-Key: k1` of principal `anonymous` pointing at it.
async fn left_behind(log: &dyn StreamLog, holder: &str, records: Vec<Record>) -> StreamId {
    let id = StreamId::new();
    let request = Bytes::from(body().to_string());
    let new = NewStream {
        id,
        owner: "anonymous".into(),
        kind: StreamKind::Chat,
        request: request.clone(),
    };
    // A lease far from expiry: only knowing its holder is dead lets a node take it.
    let (_, lease) = log
        .create_leased(new, holder.into(), Duration::from_secs(3600))
        .await
        .unwrap();
    if !records.is_empty() {
        log.append(id, lease.token, records).await.unwrap();
    }
    let entry = IdempotencyEntry {
        stream: id,
        request_hash: gateway::auth::sha256(&request).to_vec(),
    };
    log.insert_idempotency_key(
        gateway::writers::namespace::chat("anonymous"),
        "k1".into(),
        entry,
    )
    .await
    .unwrap();
    id
}

async fn gateway(log: Arc<dyn StreamLog>) -> Gateway {
    let config = parse(
        "[server]\nnode_id = \"node-a\"\n\n[store]\nkind = \"memory\"\n\n[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokens = 50 }]\n",
    );
    let state = AppState::new(&config, log).unwrap();
    Gateway::start_with(&config, state).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_continues_what_it_was_writing_before_it_restarted() {
    let log: Arc<dyn StreamLog> = Arc::new(MemoryLog::new(Arc::new(SystemClock)));
    // The simulator's answer to this request starts with these words; the dead writer
    // had streamed the first three.
    let full = {
        let simulator =
            providers::simulator::SimulatorProvider::new(providers::simulator::SimulatorConfig {
                tokens: 50,
                ..Default::default()
            });
        let request = serde_json::from_value(body()).unwrap();
        let mut deltas = providers::Provider::stream(&simulator, request)
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(delta) = futures_util::StreamExt::next(&mut deltas).await {
            if let providers::Delta::Text(piece) = delta.unwrap() {
                text.push_str(&piece);
            }
        }
        text
    };
    let words: Vec<&str> = full.split_inclusive(' ').collect();
    let records = words[..3]
        .iter()
        .map(|w| Record::Text { text: (*w).into() })
        .collect();
    let cut = left_behind(&*log, "node-a/earlier", records).await;
    // Another node's stream with a live lease is not this node's to take.
    let foreign = left_behind(&*log, "node-b/alive", Vec::new()).await;

    let gateway = gateway(Arc::clone(&log)).await;
    // The same key again: the retry attaches to the answer being continued.
    let retried = http()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .header("idempotency-key", "k1")
        .json(&body())
        .send()
        .await
        .unwrap();
    let retried = Events::new(retried);
    assert_eq!(retried.stream_id(), cut.to_string());
    let events = tokio::time::timeout(WITHIN, retried.rest())
        .await
        .expect("the answer finishes");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events), full, "one answer, nothing repeated");
    let foreign = gateway.status(&foreign.to_string()).await;
    assert_eq!(foreign["state"], "open", "{foreign}");
    assert_eq!(foreign["seq"], 0, "{foreign}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_began_is_started_by_the_takeover() {
    let log: Arc<dyn StreamLog> = Arc::new(MemoryLog::new(Arc::new(SystemClock)));
    let id = left_behind(&*log, "node-a/earlier", Vec::new()).await;
    let gateway = gateway(Arc::clone(&log)).await;
    let resumed = http()
        .get(format!("{}/v1/streams/{id}", gateway.url))
        .send()
        .await
        .unwrap();
    let events = tokio::time::timeout(WITHIN, Events::new(resumed).rest())
        .await
        .expect("the answer finishes");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 50);
}
