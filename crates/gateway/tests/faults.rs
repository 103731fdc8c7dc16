//! Upstream faults: retries before the first token, fallback to the next target,
//! continuation after a mid-answer cut, a real error after none is left, busy queues.
//! The fake upstream is the simulator over HTTP; it counts the requests it receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Events, Gateway, Upstream, chat_body, http, ids, text_of};
use providers::simulator::SimulatorConfig;

fn openai_target(upstream: &Upstream, extra: &str) -> String {
    format!(
        "{{ provider = \"openai\", base_url = \"{}\", retry_base_ms = 1{extra} }}",
        upstream.url
    )
}

#[tokio::test]
async fn a_429_then_200_is_retried_before_the_first_token() {
    let upstream = Upstream::start(SimulatorConfig {
        tokens: 5,
        error_status: Some(429),
        error_times: Some(1),
        retry_after_s: Some(0),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&upstream, "")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await)
        .rest()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(upstream.requests(), 2, "refused once, then served");
}

#[tokio::test]
async fn repeated_500s_fall_back_to_the_next_target() {
    let broken = Upstream::start(SimulatorConfig {
        error_status: Some(500),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}, {{ provider = \"simulator\", tokens = 4 }}]\n",
        openai_target(&broken, ", max_retries = 2")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await)
        .rest()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 4);
    assert_eq!(
        broken.requests(),
        3,
        "one try and two retries, then the fallback"
    );
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn an_upstream_refusal_is_passed_on_without_retry_or_fallback() {
    let refusing = Upstream::start(SimulatorConfig {
        error_status: Some(400),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}, {{ provider = \"simulator\", tokens = 4 }}]\n",
        openai_target(&refusing, ", max_retries = 2")
    ))
    .await;
    let response = gateway.chat(&chat_body("m", true)).await;
    assert_eq!(response.status(), 400, "the upstream's own status");
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(
        error["error"]["message"], "simulated error",
        "the upstream's explanation, which is about the request"
    );
    assert_eq!(
        refusing.requests(),
        1,
        "neither retried nor handed to the fallback"
    );
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn an_upstream_asking_for_a_long_wait_is_not_waited_for() {
    let limited = Upstream::start(SimulatorConfig {
        error_status: Some(429),
        retry_after_s: Some(3600),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&limited, ", max_retries = 3")
    ))
    .await;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        gateway.chat(&chat_body("m", true)),
    )
    .await
    .expect("an hour's Retry-After must not hold the request");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3600");
    assert_eq!(limited.requests(), 1, "no retry into the upstream's wait");
}

#[tokio::test]
async fn a_key_whose_attempt_failed_before_its_first_token_asks_again() {
    let flaky = Upstream::start(SimulatorConfig {
        tokens: 3,
        error_status: Some(503),
        error_times: Some(1),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&flaky, ", max_retries = 0")
    ))
    .await;
    let send = || {
        http()
            .post(format!("{}/v1/chat/completions", gateway.url))
            .header("idempotency-key", "try-again")
            .json(&chat_body("m", true))
            .send()
    };
    let failed = send().await.unwrap();
    assert_eq!(failed.status(), 502);
    let retried = send().await.unwrap();
    assert_eq!(
        retried.status(),
        200,
        "not the first attempt's failure replayed"
    );
    let events = Events::new(retried).rest().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(flaky.requests(), 2);
    // Once an answer started, the key attaches to it again.
    let attached = Events::new(send().await.unwrap()).rest().await;
    assert_eq!(text_of(&attached), text_of(&events));
    assert_eq!(flaky.requests(), 2);
}

#[tokio::test]
async fn a_first_token_too_late_is_a_504_and_frees_its_slot() {
    let slow = Upstream::start(SimulatorConfig {
        tokens: 3,
        ttft_ms: 10_000,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&slow, ", max_retries = 0, first_token_timeout_ms = 100")
    ))
    .await;
    let response = gateway.chat(&chat_body("m", true)).await;
    assert_eq!(response.status(), 504);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    gateway.settle().await;
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn an_upstream_that_never_starts_is_a_real_status() {
    let broken = Upstream::start(SimulatorConfig {
        error_status: Some(503),
        retry_after_s: Some(7),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&broken, ", max_retries = 0")
    ))
    .await;
    let response = gateway.chat(&chat_body("m", true)).await;
    assert_eq!(response.status(), 502, "not a 200 with an error inside");
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(!error["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn a_mid_answer_cut_with_no_continuation_ends_in_an_error_event() {
    let cut = Upstream::start(SimulatorConfig {
        tokens: 20,
        fail_after: Some(5),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&cut, "")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = events.stream_id();
    let events = events.rest().await;
    assert_eq!(text_of(&events).split_whitespace().count(), 5);
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "upstream_interrupted");
    assert!(
        events.iter().all(|e| e.data != "[DONE]"),
        "never a fake finish"
    );
    gateway.settle().await;
    let status = gateway.status(&id).await;
    assert_eq!(status["state"], "failed");
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn an_upstream_that_stalls_between_tokens_times_out_into_an_error_event() {
    // The second token would come a minute after the first; the limit is 100 ms.
    let stalled = Upstream::start(SimulatorConfig {
        tokens: 3,
        interval_ms: 60_000,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&stalled, ", between_token_timeout_ms = 100")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = events.stream_id();
    let events = events.rest().await;
    assert_eq!(text_of(&events).split_whitespace().count(), 1);
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    gateway.settle().await;
    assert_eq!(gateway.status(&id).await["state"], "failed");
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn a_failure_after_the_headers_went_out_is_an_error_event() {
    // No first token within a heartbeat period: the response is committed, so the
    // upstream's failure can only be told in the stream.
    let late = Upstream::start(SimulatorConfig {
        ttft_ms: 300,
        fail_after: Some(0),
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[server]\nheartbeat_interval_ms = 50\n[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&late, ", max_retries = 0")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = events.stream_id();
    let events = events.rest().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let error: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(error["error"]["code"], "upstream_interrupted");
    gateway.settle().await;
    assert_eq!(gateway.status(&id).await["state"], "failed");
    assert_eq!(gateway.permits("m", 0), 64);
}

#[tokio::test]
async fn the_between_token_limit_counts_from_the_last_token_not_the_first() {
    // 6 tokens 40 ms apart take 200 ms, twice the limit; no single gap comes near it.
    let steady = Upstream::start(SimulatorConfig {
        tokens: 6,
        interval_ms: 40,
        ..SimulatorConfig::default()
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}]\n",
        openai_target(&steady, ", between_token_timeout_ms = 100")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await)
        .rest()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 6);
}

#[tokio::test]
async fn a_mid_answer_cut_is_continued_on_a_prefill_target_as_one_answer() {
    let config = SimulatorConfig {
        tokens: 30,
        seed: 9,
        ..SimulatorConfig::default()
    };
    let cut = Upstream::start(SimulatorConfig {
        fail_after: Some(12),
        ..config.clone()
    })
    .await;
    let whole = Upstream::start(config).await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}, {}]\n",
        openai_target(&cut, ""),
        openai_target(&whole, ", supports_prefill = true")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await)
        .rest()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let ids = ids(&events);
    // One sequence, rising without a repeat (the records saying which upstream request
    // serves, and the usage, not asked for, are the ids skipped).
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "one sequence: {ids:?}");
    assert_eq!(ids[0], 2);
    // The reader sees one unbroken answer: the same text as an uncut upstream's.
    let uncut = Events::new(
        http()
            .post(format!("{}/chat/completions", whole.url))
            .json(&chat_body("m", true))
            .send()
            .await
            .unwrap(),
    )
    .rest()
    .await;
    assert_eq!(text_of(&events), text_of(&uncut));
    assert_eq!(cut.requests(), 1);
}

#[tokio::test]
async fn the_target_that_broke_continues_first_when_it_can_then_the_next() {
    let config = SimulatorConfig {
        tokens: 30,
        seed: 4,
        ..SimulatorConfig::default()
    };
    // Breaks every request after 5 tokens, and can continue a partial answer.
    let flaky = Upstream::start(SimulatorConfig {
        fail_after: Some(5),
        ..config.clone()
    })
    .await;
    let whole = Upstream::start(config).await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}, {}]\n",
        openai_target(
            &flaky,
            ", continuation = \"assistant_message\", name = \"flaky\""
        ),
        openai_target(
            &whole,
            ", continuation = \"assistant_message\", name = \"whole\""
        )
    ))
    .await;

    let events = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = events.stream_id();
    let events = events.rest().await;

    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 30);
    // The answer, the flaky target's one continuation of itself, then the other's.
    assert_eq!((flaky.requests(), whole.requests()), (2, 1));
    let status = gateway.status(&id).await;
    let requests: Vec<(&str, &str)> = status["upstream_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["target"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        requests,
        [("flaky", "cut"), ("flaky", "cut"), ("whole", "ok")],
        "{status}"
    );
    assert_eq!(status["usage"]["completion_tokens"], 30, "{status}");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_frees_its_slot() {
    let gateway = Gateway::start(
        "[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokens = 100000, interval_ms = 2, max_concurrency = 1, queue_timeout_ms = 20 }]\n",
    )
    .await;
    let mut holder = Events::new(gateway.chat(&chat_body("m", true)).await);
    let id = holder.stream_id();
    holder.next().await.unwrap();
    assert_eq!(gateway.permits("m", 0), 0);
    let refused = gateway.chat(&chat_body("m", true)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    gateway.cancel(&id).await;
    holder.rest().await;
    gateway.settle().await;
    assert_eq!(gateway.permits("m", 0), 1, "no path leaks the slot");
}

/// Each continuation mode sends the partial answer the way its upstream expects, and the
/// reader gets one answer; a target whose mode does not match its upstream's convention
/// is refused there (400), and the answer fails — never a fake finish.
#[tokio::test]
async fn each_continuation_mode_continues_on_an_upstream_of_its_convention() {
    use providers::Continuation;
    let config = SimulatorConfig {
        tokens: 30,
        seed: 4,
        ..SimulatorConfig::default()
    };
    for (mode, name) in [
        (Continuation::AssistantMessage, "assistant_message"),
        (Continuation::PrefixFlag, "prefix_flag"),
        (Continuation::ContinueFinalMessage, "continue_final_message"),
    ] {
        let cut = Upstream::start(SimulatorConfig {
            fail_after: Some(10),
            ..config.clone()
        })
        .await;
        let whole = Upstream::start(SimulatorConfig {
            continuation: mode,
            ..config.clone()
        })
        .await;
        let gateway = Gateway::start(&format!(
            "[[models]]\nname = \"m\"\ntargets = [{}, {}]\n",
            openai_target(&cut, ""),
            openai_target(&whole, &format!(", continuation = \"{name}\""))
        ))
        .await;
        let events = Events::new(gateway.chat(&chat_body("m", true)).await)
            .rest()
            .await;
        assert_eq!(events.last().unwrap().data, "[DONE]", "{name}");
        assert_eq!(text_of(&events).split_whitespace().count(), 30, "{name}");
        assert_eq!(whole.requests(), 1, "{name}");
    }

    // The target claims prefix_flag; its upstream (vLLM-like) wants continue_final_message.
    let cut = Upstream::start(SimulatorConfig {
        fail_after: Some(10),
        ..config.clone()
    })
    .await;
    let other = Upstream::start(SimulatorConfig {
        continuation: Continuation::ContinueFinalMessage,
        ..config
    })
    .await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"m\"\ntargets = [{}, {}]\n",
        openai_target(&cut, ""),
        openai_target(&other, ", continuation = \"prefix_flag\"")
    ))
    .await;
    let events = Events::new(gateway.chat(&chat_body("m", true)).await)
        .rest()
        .await;
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert!(last.get("error").is_some(), "{last}");
}

/// An upstream that fails every request opens its circuit breaker: after `breaker_failures`
/// failed starts it gets no more requests during the cool-down, and they go straight to
/// the fallback.
#[tokio::test]
async fn a_failing_upstream_opens_its_breaker_and_requests_go_to_the_fallback() {
    let failing = Upstream::start(SimulatorConfig {
        error_status: Some(500),
        ..SimulatorConfig::default()
    })
    .await;
    let healthy = Upstream::start(SimulatorConfig::default()).await;
    let gateway = Gateway::start(&format!(
        "[[models]]\nname = \"tripped\"\ntargets = [{}, {}]\n",
        openai_target(
            &failing,
            ", max_retries = 0, breaker_failures = 2, breaker_cooldown_ms = 600000"
        ),
        openai_target(&healthy, "")
    ))
    .await;
    for _ in 0..5 {
        let events = Events::new(gateway.chat(&chat_body("tripped", true)).await)
            .rest()
            .await;
        assert_eq!(
            events.last().unwrap().data,
            "[DONE]",
            "the fallback answers"
        );
    }
    assert_eq!(
        failing.requests(),
        2,
        "after two failures, no more requests"
    );
    assert_eq!(healthy.requests(), 5);
    assert!(gateway.state.models.get("tripped").unwrap().targets[0].is_open());
    let metrics = http()
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("unbroken_circuit_open{")
                && l.contains("model=\"tripped\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}
