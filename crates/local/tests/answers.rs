#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Answers at the default settings, as a user meets them: `LocalOptions::default()` and
//! requests with no temperature, top_p or seed, so every run samples afresh. The
//! thresholds leave room for that (see "First answers at default settings" in
//! `docs/benchmarks-local.md` for the rates they were set from); a regression in the
//! sampler, the penalties or the loop stop fails them.
//!
//! They need the model file: run `scripts/fetch-model` first. A missing file fails these
//! tests, it never skips them. One model is loaded per test binary and shared.

mod common;

use common::provider;
use futures_util::StreamExt;
use local::loops::loop_end;
use providers::{ChatRequest, Delta, Provider, ProviderError};
use serde_json::{Value, json};

/// The README's example.
const QUESTION: &str = "What is the capital of France?";

/// Long enough for the loop rule (64 tokens) to catch a loop that starts early.
const MAX_TOKENS: u32 = 128;

/// The fixed set of everyday prompts, one per line (written for this project).
const EVERYDAY: &str = include_str!("fixtures/everyday-prompts.txt");

#[derive(Debug)]
struct Answer {
    text: String,
    completion_tokens: u64,
    finish: String,
    max_tokens: u32,
}

impl Answer {
    /// Whether the answer fell into a loop: the loop stop ends one early with `length`;
    /// the rule applied to the whole text catches one the stop would have missed.
    fn looped(&self) -> bool {
        let stopped =
            self.finish == "length" && self.completion_tokens < u64::from(self.max_tokens);
        let tokens = provider().tokenizer().encode(&self.text).unwrap();
        stopped || loop_end(&tokens).is_some()
    }

    /// Up to the first full stop, exclamation or question mark, or line break.
    fn first_sentence(&self) -> &str {
        let text = self.text.trim_start();
        text.split(['.', '!', '?', '\n']).next().unwrap_or_default()
    }
}

async fn answer(request: ChatRequest) -> Answer {
    let max_tokens = request.max_tokens.unwrap();
    let mut stream = provider().stream(request).await.unwrap();
    let mut answer = Answer {
        text: String::new(),
        completion_tokens: 0,
        finish: String::new(),
        max_tokens,
    };
    while let Some(delta) = stream.next().await {
        match delta.unwrap() {
            Delta::Text(text) => answer.text.push_str(&text),
            Delta::Usage {
                completion_tokens, ..
            } => answer.completion_tokens = completion_tokens,
            Delta::Finish { reason } => answer.finish = reason,
            other => panic!("unexpected delta {other:?}"),
        }
    }
    assert!(!answer.finish.is_empty(), "the stream must end with Finish");
    answer
}

#[tokio::test]
async fn the_readme_question_names_paris_first_in_19_of_20_answers() {
    let mut misses = Vec::new();
    for _ in 0..20 {
        let answer = answer(request(QUESTION, MAX_TOKENS)).await;
        assert!(!answer.looped(), "{answer:#?}");
        if !answer.first_sentence().contains("Paris") {
            misses.push(answer.text);
        }
    }
    assert!(
        misses.len() <= 1,
        "{} of 20 answers do not name Paris in their first sentence: {misses:#?}",
        misses.len()
    );
}

#[tokio::test]
async fn everyday_prompts_do_not_loop() {
    assert_eq!(EVERYDAY.lines().count(), 10, "the fixed set");
    for prompt in EVERYDAY.lines() {
        let answer = answer(request(prompt, MAX_TOKENS)).await;
        assert!(!answer.looped(), "{prompt:?} looped: {answer:#?}");
        assert!(!answer.text.trim().is_empty(), "{prompt:?}: {answer:#?}");
    }
}

#[test]
fn the_loop_rule_takes_degenerate_text_and_leaves_real_text_alone() {
    let tokenizer = provider().tokenizer();
    let loops = |text: &str| loop_end(&tokenizer.encode(text).unwrap()).is_some();
    // What the old defaults produced for the README question.
    let degenerate = format!(
        "L'Étoile, la Marseillaise, la femme{}",
        ", la femme".repeat(30)
    );
    assert!(loops(&degenerate));
    assert!(loops(&"Boil an egg:\n\n".repeat(20)));

    let columns = 12;
    let table = format!(
        "| {} |\n|{}\n{}",
        vec!["day"; columns].join(" | "),
        "---|".repeat(columns),
        format!("| {} |\n", vec!["0"; columns].join(" | ")).repeat(3),
    );
    let refrain = "Row, row, row your boat,\nGently down the stream.\n\
                   Merrily, merrily, merrily, merrily,\nLife is but a dream.\n"
        .repeat(2);
    let laughter = "ha ".repeat(40);
    let list = (1..=40)
        .map(|n| format!("{n}. Step {n}\n"))
        .collect::<String>();
    for text in [&table, &refrain, &laughter, &list] {
        assert!(!loops(text), "{text}");
    }
}

fn penalised(fields: Value) -> ChatRequest {
    let mut request = request("List the days of the week.", 64);
    request.temperature = Some(0.0);
    request.extra = fields.as_object().unwrap().clone();
    request
}

#[tokio::test]
async fn penalties_in_the_request_are_checked() {
    for (fields, needle) in [
        (
            json!({"frequency_penalty": "high"}),
            "frequency_penalty must be a number",
        ),
        (
            json!({"presence_penalty": 2.5}),
            "presence_penalty must be between -2 and 2",
        ),
        (
            json!({"frequency_penalty": -3}),
            "frequency_penalty must be between -2 and 2",
        ),
    ] {
        match provider().stream(penalised(fields)).await {
            Err(ProviderError::InvalidRequest(message)) => {
                assert!(message.contains(needle), "{message}");
            }
            Err(other) => panic!("expected InvalidRequest, got {other:?}"),
            Ok(_) => panic!("{needle}: accepted"),
        }
    }
    let fields = json!({"frequency_penalty": null, "presence_penalty": -2});
    assert!(provider().stream(penalised(fields)).await.is_ok());
}

#[tokio::test]
async fn a_frequency_penalty_in_the_request_reduces_repetition() {
    /// The share of the answer's tokens that repeat an earlier one.
    fn repeated(text: &str) -> f64 {
        let tokens = provider().tokenizer().encode(text).unwrap();
        let distinct: std::collections::HashSet<_> = tokens.iter().collect();
        1.0 - distinct.len() as f64 / tokens.len() as f64
    }
    let plain = answer(penalised(json!({}))).await;
    let penalised = answer(penalised(json!({"frequency_penalty": 1.5}))).await;
    assert!(
        repeated(&penalised.text) < repeated(&plain.text),
        "{plain:#?}\n{penalised:#?}"
    );
}

/// A request at temperature None.
fn request(user: &str, max_tokens: u32) -> ChatRequest {
    common::request(user, max_tokens, None)
}
