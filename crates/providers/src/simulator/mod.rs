//! [`SimulatorProvider`]: synthetic answers at a set pace with fault injection, for load
//! and fault tests only — never presented as a model.
//!
//! Answers are deterministic words (see the `answer` module): the same request always gets the
//! same tokens, and a continuation with a prefix of the answer yields exactly the rest.
//! Faults: a failing status for some or all requests ([`SimulatorConfig::error_status`]),
//! and a stream that breaks after N tokens ([`SimulatorConfig::fail_after`]). A shared
//! request counter lets tests assert how many upstream calls were made.
//!
//! - `answer`: the deterministic answer to a request.
//! - `server`: the same simulator as an OpenAI-compatible HTTP server
//!   ([`router`], [`serve`]), for `unbroken simulate` and as a fake upstream in tests.

mod answer;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::delta::Delta;
use crate::error::ProviderError;
use crate::request::ChatRequest;
use crate::{Provider, ProviderFuture};

use answer::Answer;
pub use server::{router, serve};

/// How the simulator answers. Every field has a default, so `{}` is a valid config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Tokens in a full answer.
    pub tokens: u32,
    /// Milliseconds before the first token.
    pub ttft_ms: u64,
    /// Milliseconds between tokens.
    pub interval_ms: u64,
    /// Mixed into every answer's seed: another seed gives other answers.
    pub seed: u64,
    /// Break every stream with [`ProviderError::Interrupted`] (over HTTP: cut the
    /// connection) after this many tokens.
    pub fail_after: Option<u32>,
    /// Refuse requests with this HTTP status.
    pub error_status: Option<u16>,
    /// The chance that a request is refused with `error_status` (1.0: always).
    pub error_probability: f64,
    /// Only the first N requests may be refused ("429, then 200").
    pub error_times: Option<u32>,
    /// The `Retry-After` sent with refusals, in seconds.
    pub retry_after_s: Option<u64>,
    /// Over HTTP: the convention a continued request must follow (a final assistant
    /// message, marked as the mode says); another one is refused with 400, as real
    /// servers refuse a prefill they do not support. Default `assistant_message`.
    pub continuation: crate::Continuation,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            tokens: 64,
            ttft_ms: 0,
            interval_ms: 0,
            seed: 0,
            fail_after: None,
            error_status: None,
            error_probability: 1.0,
            error_times: None,
            retry_after_s: None,
            continuation: crate::Continuation::AssistantMessage,
        }
    }
}

/// A [`Provider`] that makes answers up. Clones share the config and the request counter.
///
/// # Example
/// ```
/// use futures_util::StreamExt;
/// use providers::simulator::{SimulatorConfig, SimulatorProvider};
/// use providers::{ChatRequest, Delta, Provider};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let simulator = SimulatorProvider::new(SimulatorConfig { tokens: 3, ..Default::default() });
/// let request: ChatRequest = serde_json::from_str(
///     r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#,
/// ).unwrap();
/// let deltas: Vec<_> = simulator.stream(request).await.unwrap().collect().await;
/// assert_eq!(deltas.len(), 3 + 2); // three words, usage, finish
/// assert_eq!(deltas.last(), Some(&Ok(Delta::Finish { reason: "stop".into() })));
/// assert_eq!(simulator.requests(), 1);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct SimulatorProvider {
    config: Arc<SimulatorConfig>,
    requests: Arc<AtomicU64>,
}

impl SimulatorProvider {
    /// A simulator with `config` and a request counter at zero.
    pub fn new(config: SimulatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    /// How many requests were made so far (refused ones included), in-process and over
    /// HTTP together.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The full text the simulator answers to `request` when nothing fails: what a
    /// [`stream`](Provider::stream) of it would concatenate to. Does not count as a request.
    pub fn answer_text(&self, request: &ChatRequest) -> String {
        self.answer(request).pieces.concat()
    }

    fn answer(&self, request: &ChatRequest) -> Answer {
        Answer::plan(request, self.config.tokens, self.config.seed)
    }

    /// Count a request and decide whether it is refused; if not, plan its answer. Returns
    /// the request's number (from 0) with the answer.
    fn begin(&self, request: &ChatRequest) -> Result<(u64, Answer), ProviderError> {
        let number = self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(status) = self.config.error_status {
            let within_times = self
                .config
                .error_times
                .is_none_or(|times| number < u64::from(times));
            if within_times && self.roll(number) {
                return Err(if matches!(status, 400 | 413 | 422) {
                    // As the openai adapter reads an upstream refusing the request.
                    ProviderError::Rejected {
                        status,
                        message: "simulated error".into(),
                        code: None,
                    }
                } else {
                    ProviderError::Status {
                        status,
                        retry_after: self.config.retry_after_s.map(Duration::from_secs),
                    }
                });
            }
        }
        Ok((number, self.answer(request)))
    }

    /// Whether request `number` fails, with `error_probability`; reproducible per seed.
    fn roll(&self, number: u64) -> bool {
        let p = self.config.error_probability;
        if p >= 1.0 {
            return true;
        }
        let mut rng =
            StdRng::seed_from_u64(self.config.seed ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.random::<f64>() < p
    }

    /// The pause before token `index`, if any.
    fn delay(&self, index: usize) -> Option<Duration> {
        let ms = if index == 0 {
            self.config.ttft_ms
        } else {
            self.config.interval_ms
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

impl Provider for SimulatorProvider {
    fn kind(&self) -> &'static str {
        "simulator"
    }

    fn continuation(&self) -> crate::Continuation {
        crate::Continuation::AssistantMessage
    }

    fn stream(&self, request: ChatRequest) -> ProviderFuture<'_> {
        let result = self.begin(&request);
        let this = self.clone();
        Box::pin(async move {
            let (_, answer) = result?;
            let state = DeltaState {
                simulator: this,
                answer,
                next: 0,
                tail: Tail::Tokens,
            };
            Ok(
                Box::pin(futures_util::stream::unfold(state, DeltaState::step))
                    as crate::DeltaStream,
            )
        })
    }
}

/// Where a simulated delta stream is.
struct DeltaState {
    simulator: SimulatorProvider,
    answer: Answer,
    next: usize,
    tail: Tail,
}

enum Tail {
    Tokens,
    Finish,
    Ended,
}

impl DeltaState {
    async fn step(mut self) -> Option<(Result<Delta, ProviderError>, Self)> {
        match self.tail {
            Tail::Ended => None,
            Tail::Finish => {
                self.tail = Tail::Ended;
                let reason = self.answer.finish.to_owned();
                Some((Ok(Delta::Finish { reason }), self))
            }
            Tail::Tokens => {
                let Some(piece) = self.answer.pieces.get(self.next) else {
                    self.tail = Tail::Finish;
                    let usage = Delta::Usage {
                        prompt_tokens: self.answer.prompt_tokens,
                        completion_tokens: self.answer.pieces.len() as u64,
                        cached_tokens: 0,
                    };
                    return Some((Ok(usage), self));
                };
                if self
                    .simulator
                    .config
                    .fail_after
                    .is_some_and(|n| self.next >= n as usize)
                {
                    self.tail = Tail::Ended;
                    let error = ProviderError::Interrupted(format!(
                        "simulated failure after {} tokens",
                        self.next
                    ));
                    return Some((Err(error), self));
                }
                let text = piece.to_string();
                if let Some(delay) = self.simulator.delay(self.next) {
                    tokio::time::sleep(delay).await;
                }
                self.next += 1;
                Some((Ok(Delta::Text(text)), self))
            }
        }
    }
}
