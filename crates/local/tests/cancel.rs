#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cancellation with the real model (run `scripts/fetch-model` first; a missing file fails
//! the test). A test binary of its own: the decode counter it reads is per provider, and no
//! other test may decode on the same provider meanwhile.

use futures_util::StreamExt;
use local::{LocalOptions, LocalProvider, default_model_path};
use providers::{ChatRequest, Delta, Message, Provider};
use serde_json::{Map, Value};

fn request(user: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: local::MODEL_ID.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: Value::String(user.into()),
            extra: Map::new(),
        }],
        temperature: Some(0.0),
        top_p: None,
        max_tokens: Some(max_tokens),
        seed: None,
        assistant_prefix: None,
        extra: Map::new(),
    }
}

#[tokio::test]
async fn dropping_the_stream_stops_decoding_within_one_token() {
    let p =
        LocalProvider::load(&default_model_path(), LocalOptions::default()).unwrap_or_else(|e| {
            panic!("the model tests need the model file: run scripts/fetch-model first ({e})")
        });
    let mut active = p.active_generations();
    let mut stream = p
        .stream(request("Write a long story about a dragon.", 400))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(Delta::Text(_)))));
    }
    drop(stream);
    let at_drop = p.tokens_decoded();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        active.wait_for(|n| *n == 0),
    )
    .await
    .expect("the generation thread ends after the stream is dropped")
    .unwrap();
    let after = p.tokens_decoded();
    assert!(
        after < 100,
        "the answer was cut short, not finished: {after} tokens"
    );
    assert!(
        after - at_drop <= 1,
        "decoded {} tokens after the drop",
        after - at_drop
    );
}
