//! A generation that panics (a bug in an adapter, say) frees its upstream slot, ends its
//! stream with an error its readers see, and leaves every other stream alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use gateway::router::{Limits, Model, Models, Target};
use gateway::{AppState, auth::Keys};
use providers::simulator::{SimulatorConfig, SimulatorProvider};
use providers::{ChatRequest, Delta, Provider, ProviderFuture};

/// Where a [`Panicking`] answer panics.
#[derive(Clone, Copy)]
enum When {
    /// Before the upstream "answers" (inside `Provider::stream`).
    BeforeTheAnswer,
    /// After this many text deltas.
    AfterTokens(usize),
}

/// An adapter that panics where told, and counts its calls.
struct Panicking {
    when: When,
    calls: AtomicUsize,
}

impl Provider for Panicking {
    fn kind(&self) -> &'static str {
        "panicking"
    }

    fn continuation(&self) -> providers::Continuation {
        providers::Continuation::None
    }

    fn stream(&self, _request: ChatRequest) -> ProviderFuture<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let when = self.when;
        Box::pin(async move {
            let tokens = match when {
                When::BeforeTheAnswer => panic!("a bug before the answer"),
                When::AfterTokens(tokens) => tokens,
            };
            // Each delta after a yield, so each is appended (and read) on its own.
            let deltas = futures_util::stream::unfold(0, move |i| async move {
                tokio::task::yield_now().await;
                assert!(i < tokens, "a bug in the middle of the answer");
                Some((Ok(Delta::Text(format!("t{i} "))), i + 1))
            });
            Ok(Box::pin(deltas) as providers::DeltaStream)
        })
    }
}

/// A gateway whose model `p` has one slot, on a [`Panicking`] adapter.
async fn gateway(when: When) -> (Gateway, Arc<Panicking>) {
    let config = parse("[store]\nkind = \"memory\"\n");
    let log = gateway::open_log(&config.store).unwrap();
    let provider = Arc::new(Panicking {
        when,
        calls: AtomicUsize::new(0),
    });
    let limits = Limits {
        max_concurrency: 1,
        queue_timeout: Duration::from_secs(10),
        first_token_timeout: Duration::from_secs(10),
        between_token_timeout: Duration::from_secs(10),
        max_retries: 0,
        retry_base: Duration::from_millis(1),
        retry_on: Vec::new(),
        breaker_failures: 0,
        breaker_cooldown: Duration::from_secs(30),
    };
    let mut models = Models::default();
    models.insert(Model::new(
        "p".into(),
        vec![Target::new(provider.clone(), "p".into(), limits.clone())],
    ));
    // A healthy model beside it: 200 tokens 1 ms apart.
    let simulator = SimulatorProvider::new(SimulatorConfig {
        tokens: 200,
        interval_ms: 1,
        ..SimulatorConfig::default()
    });
    models.insert(Model::new(
        "ok".into(),
        vec![Target::new(Arc::new(simulator), "ok".into(), limits)],
    ));
    let state = AppState::with_models(&config, log, models, Keys::default());
    (Gateway::start_with(&config, state).await, provider)
}

#[tokio::test]
async fn a_panic_mid_answer_ends_the_stream_with_an_error_and_frees_the_slot() {
    let (gateway, provider) = gateway(When::AfterTokens(3)).await;
    let mut healthy = Events::new(gateway.chat(&chat_body("ok", true)).await);
    healthy.next().await.unwrap();
    for round in 1..=2 {
        let events = Events::new(gateway.chat(&chat_body("p", true)).await);
        let id = events.stream_id();
        // Bounded: a stream whose writer vanished without ending it would never end.
        let events = tokio::time::timeout(Duration::from_secs(20), events.rest())
            .await
            .expect("the stream ends");
        assert_eq!(text_of(&events), "t0 t1 t2 ");
        let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
        assert_eq!(last["error"]["code"], "internal_error", "{last}");
        assert!(events.iter().all(|e| e.data != "[DONE]"), "never a finish");
        gateway.settle().await;
        assert_eq!(gateway.status(&id).await["state"], "failed");
        assert_eq!(
            gateway.permits("p", 0),
            1,
            "round {round}: the slot came back"
        );
        // A reader arriving later gets the same ending, not a stream that never ends.
        let url = format!("{}/v1/streams/{id}", gateway.url);
        let again = Events::new(http().get(url).send().await.unwrap())
            .rest()
            .await;
        assert_eq!(again.last().unwrap().data, events.last().unwrap().data);
    }
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    // The answer streaming beside the panics is whole.
    let rest = healthy.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    // Every token once, in order (the usage record, not asked for, is not rendered: the
    // finish follows the last token two ids on).
    let ids = ids(&rest);
    let (tokens, ending) = ids.split_at(ids.len() - 2);
    assert!(
        tokens.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless: {ids:?}"
    );
    assert_eq!(
        ending,
        [tokens[tokens.len() - 1] + 2, tokens[tokens.len() - 1] + 3]
    );
}

#[tokio::test]
async fn a_panic_before_the_answer_is_an_error_status_and_frees_the_slot() {
    let (gateway, provider) = gateway(When::BeforeTheAnswer).await;
    for stream in [true, false, true] {
        let response = gateway.chat(&chat_body("p", stream)).await;
        assert_eq!(response.status(), 500, "stream: {stream}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "internal_error", "{error}");
        assert!(!error["error"]["message"].as_str().unwrap().contains("bug"));
        gateway.settle().await;
        assert_eq!(gateway.permits("p", 0), 1, "the slot came back");
    }
    assert_eq!(provider.calls.load(Ordering::SeqCst), 3);
}
