#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
//! Samples answers at the provider's default settings (no temperature, top_p or seed in
//! the request: what a user meets) and counts how many name Paris in their first sentence
//! and how many loop. The numbers in `docs/benchmarks-local.md` come from it.
//!
//! ```text
//! scripts/fetch-model
//! cargo run -p unbroken-local --example first-answers -- [options] [prompt]
//!   --samples N       answers per prompt (20)
//!   --max-tokens N    per answer (128)
//!   --old             the defaults before 2026-12-06: temperature 0.2, no penalty,
//!                     no loop stop
//!   --everyday        the ten everyday prompts of tests/answers.rs instead of the prompt
//!   --prefix TEXT     continue every answer from TEXT (explores one first token)
//!   --set KEY=VALUE   one LocalOptions field: temperature, top_p, min_p, repeat_penalty,
//!                     repeat_last_n, frequency_penalty, presence_penalty, stop_loops
//! ```
//!
//! Two answers run at a time (one per core on the development machine).

use futures_util::StreamExt;
use local::{LocalOptions, LocalProvider, default_model_path};
use providers::{ChatRequest, Delta, Message, Provider};
use serde_json::{Map, Value};

/// The fixed set of everyday prompts, one per line (written for this project).
const EVERYDAY: &str = include_str!("../tests/fixtures/everyday-prompts.txt");

struct Answer {
    text: String,
    tokens: u64,
    finish: String,
}

async fn answer(provider: &LocalProvider, prompt: &str, prefix: Option<&str>, max: u32) -> Answer {
    let request = ChatRequest {
        model: local::MODEL_ID.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: Value::String(prompt.into()),
            extra: Map::new(),
        }],
        temperature: None,
        top_p: None,
        max_tokens: Some(max),
        seed: None,
        assistant_prefix: prefix.map(str::to_string),
        extra: Map::new(),
    };
    let mut stream = provider.stream(request).await.unwrap();
    let mut answer = Answer {
        text: prefix.unwrap_or_default().to_string(),
        tokens: 0,
        finish: String::new(),
    };
    while let Some(delta) = stream.next().await {
        match delta.unwrap() {
            Delta::Text(text) => answer.text.push_str(&text),
            Delta::Usage {
                completion_tokens, ..
            } => answer.tokens = completion_tokens,
            Delta::Finish { reason } => answer.finish = reason,
            _ => {}
        }
    }
    answer
}

fn first_sentence(text: &str) -> &str {
    let text = text.trim_start();
    text.split(['.', '!', '?', '\n']).next().unwrap_or_default()
}

fn set(options: &mut LocalOptions, pair: &str) {
    let (key, value) = pair.split_once('=').expect("--set KEY=VALUE");
    let float = || value.parse::<f32>().expect("a number");
    match key {
        "temperature" => options.temperature = float(),
        "top_p" => options.top_p = float(),
        "min_p" => options.min_p = float(),
        "repeat_penalty" => options.repeat_penalty = float(),
        "repeat_last_n" => options.repeat_last_n = value.parse().expect("a count"),
        "frequency_penalty" => options.frequency_penalty = float(),
        "presence_penalty" => options.presence_penalty = float(),
        "stop_loops" => options.stop_loops = value.parse().expect("true or false"),
        _ => panic!("unknown option {key}"),
    }
}

#[tokio::main]
async fn main() {
    let mut options = LocalOptions::default();
    let mut samples = 20;
    let mut max_tokens = 128;
    let mut prefix = None;
    let mut prompts = vec!["What is the capital of France?".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--samples" => samples = args.next().unwrap().parse().unwrap(),
            "--max-tokens" => max_tokens = args.next().unwrap().parse().unwrap(),
            "--old" => {
                options = LocalOptions {
                    temperature: 0.2,
                    repeat_penalty: 1.0,
                    repeat_last_n: 0,
                    min_p: 0.0,
                    stop_loops: false,
                    ..options
                }
            }
            "--everyday" => prompts = EVERYDAY.lines().map(|p| p.to_string()).collect(),
            "--prefix" => prefix = args.next(),
            "--set" => set(&mut options, &args.next().unwrap()),
            prompt => prompts = vec![prompt.to_string()],
        }
    }
    println!("{options:?}, {samples} samples, max_tokens {max_tokens}");
    let provider = LocalProvider::load(&default_model_path(), options).unwrap();
    let tokenizer = provider.tokenizer();
    let (mut paris, mut looped, mut at_limit, mut total) = (0, 0, 0, 0);
    for prompt in &prompts {
        println!("## {prompt}");
        let runs = (0..samples).map(|_| answer(&provider, prompt, prefix.as_deref(), max_tokens));
        let mut answers = futures_util::stream::iter(runs).buffer_unordered(2);
        while let Some(a) = answers.next().await {
            let ids = tokenizer.encode(&a.text).unwrap();
            // With the loop stop on, an early `length` is the stop; with it off, the rule
            // applied to the text's tokens says where it would have stopped.
            let stopped = a.finish == "length" && a.tokens < u64::from(max_tokens);
            let loops = stopped || local::loops::loop_end(&ids).is_some();
            let names_paris = first_sentence(&a.text).contains("Paris");
            total += 1;
            paris += usize::from(names_paris);
            looped += usize::from(loops);
            at_limit += usize::from(a.finish == "length" && !loops);
            let flags = format!(
                "{}{}",
                if names_paris { "P" } else { "-" },
                if loops { "L" } else { "-" }
            );
            let shown: String = a.text.chars().take(110).collect();
            println!(
                "{flags} {:>6} {:>3} tok | {:?}",
                a.finish,
                a.tokens,
                shown.replace('\n', "⏎")
            );
        }
    }
    println!(
        "{total} answers: {paris} name Paris in the first sentence, {looped} loop, \
         {at_limit} reach max_tokens without looping"
    );
}
