//! What the model tests share: one provider per test binary, and a one-message request.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use local::{LocalOptions, LocalProvider, default_model_path};
use providers::{ChatRequest, Message};
use serde_json::{Map, Value};

/// The model at its default options, loaded once per test binary. A missing file fails
/// the test (it never skips it).
pub fn provider() -> &'static LocalProvider {
    static PROVIDER: OnceLock<LocalProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let path = default_model_path();
        match LocalProvider::load(&path, LocalOptions::default()) {
            Ok(provider) => provider,
            Err(e) => {
                panic!("the model tests need the model file: run scripts/fetch-model first ({e})")
            }
        }
    })
}

/// One user message; `temperature` `None` leaves the provider's default.
pub fn request(user: &str, max_tokens: u32, temperature: Option<f64>) -> ChatRequest {
    ChatRequest {
        model: local::MODEL_ID.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: Value::String(user.into()),
            extra: Map::new(),
        }],
        temperature,
        top_p: None,
        max_tokens: Some(max_tokens),
        seed: None,
        assistant_prefix: None,
        extra: Map::new(),
    }
}
