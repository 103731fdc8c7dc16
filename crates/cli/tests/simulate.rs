//! `unbroken simulate` as a fault-test upstream: the real binary, refusing on command.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

mod common;

use std::process::{Command, Stdio};

fn simulator(args: &[&str]) -> common::Simulator {
    let mut all = vec!["--tokens", "3"];
    all.extend_from_slice(args);
    common::Simulator::start(&all)
}

#[tokio::test]
async fn refuses_the_first_requests_with_the_status_asked_for() {
    let simulator = simulator(&[
        "--error-status",
        "429",
        "--error-times",
        "1",
        "--retry-after",
        "2",
    ]);
    let http = common::http();
    let ask = || {
        http.post(format!("{}/chat/completions", simulator.url))
            .json(&serde_json::json!({
                "model": "sim",
                "stream": true,
                "messages": [{ "role": "user", "content": "hi" }],
            }))
            .send()
    };
    let refused = ask().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "2");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    let served = ask().await.unwrap();
    assert_eq!(served.status(), 200, "only the first request is refused");
    assert!(served.text().await.unwrap().contains("[DONE]"));
}

#[test]
fn a_probability_outside_zero_to_one_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--error-status",
            "500",
            "--error-probability",
            "1.5",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--error-probability"), "{stderr}");
}
