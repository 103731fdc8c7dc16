//! The router: a model name → its ordered upstream targets, and how one answer is started.
//!
//! Per target: a FIFO queue in front of `max_concurrency` slots (a fair semaphore; the
//! permit is RAII and travels with the generation, so no path can leak a slot), a queue
//! timeout (429 with `Retry-After` when every target's queue timed out), retries with
//! exponential backoff and full jitter before the first token of the failures the
//! target's `retry_same_target_on` names (`429` and `5xx` by default; honouring a
//! `Retry-After` of up to [`LONGEST_RETRY_WAIT`]: an upstream that asks for a longer wait
//! is not waited for), then the next target — at once for timeouts and refused
//! connections. An upstream that refuses the request itself (400, 413, 422) ends the
//! search: the client gets its status, unless the model's `fallback_on` names the
//! refusal's code. A model's `deadline_ms` bounds the whole search. "Peek before
//! commit": a start succeeds only once the first delta has arrived, so an early upstream
//! failure becomes a real HTTP status instead of a 200 with an error inside.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use providers::{ChatRequest, Delta, DeltaStream, Provider, ProviderError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Price, ProviderKind, RetryRule, TargetConfig};

/// The longest wait before a retry: the backoff's ceiling, and the longest upstream
/// `Retry-After` the router waits for. A request holds its slot and its client while it
/// waits, so an upstream asking for more (minutes, an hour) is treated as refusing now:
/// the next target is tried, or the client gets the status with the upstream's
/// `Retry-After`.
pub const LONGEST_RETRY_WAIT: Duration = Duration::from_secs(5);

/// Limits and timeouts of one target.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Slots.
    pub max_concurrency: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Request to first token.
    pub first_token_timeout: Duration,
    /// Token to token.
    pub between_token_timeout: Duration,
    /// Retries on the same target before the first token.
    pub max_retries: u32,
    /// Backoff base.
    pub retry_base: Duration,
    /// Which failures are retried on the same target (others go to the next at once).
    pub retry_on: Vec<RetryRule>,
    /// Consecutive failed starts that open the target's circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker skips the target before one probe.
    pub breaker_cooldown: Duration,
}

impl Limits {
    /// From a target's config.
    pub fn from_config(config: &TargetConfig) -> Self {
        let default_concurrency = match config.kind() {
            // A generation keeps the CPU busy: more at once only slows each one down.
            ProviderKind::Local => std::thread::available_parallelism().map_or(1, usize::from),
            _ => 64,
        };
        let limits = &config.limits;
        Self {
            max_concurrency: limits.max_concurrency.unwrap_or(default_concurrency),
            queue_timeout: Duration::from_millis(limits.queue_timeout_ms),
            first_token_timeout: Duration::from_millis(limits.first_token_timeout_ms),
            between_token_timeout: Duration::from_millis(limits.between_token_timeout_ms),
            max_retries: limits.max_retries,
            retry_base: Duration::from_millis(limits.retry_base_ms),
            retry_on: limits
                .retry_same_target_on
                .iter()
                .filter_map(|rule| RetryRule::parse(rule))
                .collect(),
            breaker_failures: limits.breaker_failures,
            breaker_cooldown: Duration::from_millis(limits.breaker_cooldown_ms),
        }
    }
}

/// One upstream target of a model.
pub struct Target {
    /// Its name (`Unbroken-Target`, usage, metrics).
    pub name: String,
    /// The adapter.
    pub provider: Arc<dyn Provider>,
    /// The model name sent upstream.
    pub upstream_model: String,
    /// Its limits.
    pub limits: Limits,
    /// What it charges, if the operator said.
    pub price: Option<Price>,
    permits: Arc<Semaphore>,
    waiting: AtomicI64,
    breaker: crate::breaker::Breaker,
}

impl Target {
    /// A target with its own slot pool, named `<provider kind>:<upstream model>`, without
    /// a price.
    pub fn new(provider: Arc<dyn Provider>, upstream_model: String, limits: Limits) -> Self {
        Self {
            name: format!("{}:{upstream_model}", provider.kind()),
            permits: Arc::new(Semaphore::new(limits.max_concurrency)),
            breaker: crate::breaker::Breaker::new(limits.breaker_failures, limits.breaker_cooldown),
            provider,
            upstream_model,
            limits,
            price: None,
            waiting: AtomicI64::new(0),
        }
    }

    /// The same target called `name`.
    #[must_use]
    pub fn named(mut self, name: String) -> Self {
        self.name = name;
        self
    }

    /// The same target charging `price`.
    #[must_use]
    pub fn priced(mut self, price: Option<Price>) -> Self {
        self.price = price;
        self
    }

    /// Whether its circuit breaker skips it now.
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Slots free right now (for tests and metrics).
    pub fn available_permits(&self) -> usize {
        self.permits.available_permits()
    }
}

/// A configured model.
pub struct Model {
    /// The client-facing name.
    pub name: String,
    /// Targets in order of preference.
    pub targets: Vec<Target>,
    /// The longest wait for a first token over every retry and fallback.
    pub deadline: Option<Duration>,
    /// Refusal codes that move a request to the next target.
    pub fallback_on: Vec<String>,
}

/// One upstream request that ended before its first token (a retry or fallback follows,
/// or the start fails).
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Which target.
    pub target: usize,
    /// How it ended: the HTTP status, or an error code (`upstream_timeout`, …).
    pub status: String,
}

/// An answer that has produced its first delta.
pub struct Started {
    /// The deltas, the first one included, with the between-token timeout applied.
    pub deltas: DeltaStream,
    /// The target's slot, held until the answer ends.
    pub permit: OwnedSemaphorePermit,
    /// Which target serves it.
    pub target: usize,
}

/// Why no target could start the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StartError {
    /// Every target's queue was full for its whole queue timeout.
    Busy {
        /// Suggested wait in seconds.
        retry_after: u64,
    },
    /// The last target's failure.
    Upstream(ProviderError),
}

impl Model {
    /// A model serving from `targets`, with no deadline and no refusal that falls back.
    pub fn new(name: String, targets: Vec<Target>) -> Self {
        Self {
            name,
            targets,
            deadline: None,
            fallback_on: Vec::new(),
        }
    }

    /// Start the answer on the first target (from `first`) that produces a first delta.
    /// With `prefill_only`, targets that cannot continue a partial answer are skipped.
    /// Every upstream request that failed on the way is added to `failed`.
    ///
    /// # Errors
    /// [`StartError`] when every target failed, or the model's deadline passed.
    pub async fn start(
        &self,
        request: &ChatRequest,
        first: usize,
        prefill_only: bool,
        failed: &mut Vec<Attempt>,
    ) -> Result<Started, StartError> {
        let deadline = self.deadline.map(|limit| Instant::now() + limit);
        let mut last: Option<StartError> = None;
        for (index, target) in self.targets.iter().enumerate().skip(first) {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                last = Some(StartError::Upstream(ProviderError::Timeout("deadline")));
                break;
            }
            if prefill_only && !target.provider.supports_prefill() {
                continue;
            }
            if !target.breaker.admit() {
                last.get_or_insert(StartError::Upstream(ProviderError::Connect(
                    "the upstream is failing; its circuit breaker is open".into(),
                )));
                continue;
            }
            let permit = match self.queue(target, deadline).await {
                Some(permit) => permit,
                None => {
                    let retry_after = target.limits.queue_timeout.as_secs().max(1);
                    last.get_or_insert(StartError::Busy { retry_after });
                    continue;
                }
            };
            let started = self
                .attempts(target, index, request, deadline, failed)
                .await;
            match &started {
                Ok(_) => target.breaker.success(),
                Err(error) if error.is_the_requests_fault() => {}
                Err(_) => {
                    if target.breaker.failure() {
                        tracing::warn!(model = %self.name, target = index, "circuit breaker open");
                    }
                }
            }
            metrics::gauge!("unbroken_circuit_open", "model" => self.name.clone(), "target" => target.name.clone())
                .set(if target.breaker.is_open() { 1.0 } else { 0.0 });
            match started {
                Ok(deltas) => {
                    return Ok(Started {
                        deltas,
                        permit,
                        target: index,
                    });
                }
                Err(error) if error.is_the_requests_fault() && !self.falls_back_on(&error) => {
                    // The request itself is wrong: no other target will like it better.
                    return Err(StartError::Upstream(error));
                }
                Err(error) => last = Some(StartError::Upstream(error)),
            }
        }
        Err(
            last.unwrap_or(StartError::Upstream(ProviderError::InvalidRequest(
                "no target of this model can continue a partial answer".into(),
            ))),
        )
    }

    /// Whether a refusal with this error's code moves the request to the next target.
    fn falls_back_on(&self, error: &ProviderError) -> bool {
        matches!(error, ProviderError::Rejected { .. })
            && self.fallback_on.iter().any(|code| code == error.code())
    }

    async fn queue(
        &self,
        target: &Target,
        deadline: Option<Instant>,
    ) -> Option<OwnedSemaphorePermit> {
        let gauge = metrics::gauge!(
            "unbroken_queue_depth",
            "model" => self.name.clone(),
            "target" => target.name.clone()
        );
        let depth = target.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        gauge.set(depth as f64);
        let permit = tokio::time::timeout(
            within(target.limits.queue_timeout, deadline),
            Arc::clone(&target.permits).acquire_owned(),
        )
        .await;
        let depth = target.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        gauge.set(depth as f64);
        permit.ok()?.ok()
    }

    /// Up to `1 + max_retries` attempts on one target; failures `retry_same_target_on`
    /// does not name go to the next target at once.
    async fn attempts(
        &self,
        target: &Target,
        index: usize,
        request: &ChatRequest,
        deadline: Option<Instant>,
        failed: &mut Vec<Attempt>,
    ) -> Result<DeltaStream, ProviderError> {
        let mut request = request.clone();
        request.model.clone_from(&target.upstream_model);
        let mut attempt = 0;
        loop {
            let began = Instant::now();
            let limit = within(target.limits.first_token_timeout, deadline);
            let result = tokio::time::timeout(
                limit,
                first_delta(target.provider.as_ref(), request.clone()),
            )
            .await
            .unwrap_or(Err(ProviderError::Timeout(
                if limit < target.limits.first_token_timeout {
                    "deadline"
                } else {
                    "first token"
                },
            )));
            let status = match &result {
                Ok(_) => "ok".to_owned(),
                Err(
                    ProviderError::Status { status, .. } | ProviderError::Rejected { status, .. },
                ) => status.to_string(),
                Err(error) => error.code().to_owned(),
            };
            metrics::counter!(
                "unbroken_upstream_requests_total",
                "model" => self.name.clone(),
                "target" => target.name.clone(),
                "provider" => target.provider.kind(),
                "status" => status.clone()
            )
            .increment(1);
            if result.is_err() {
                failed.push(Attempt {
                    target: index,
                    status,
                });
            }
            match result {
                Ok((first, rest)) => {
                    metrics::histogram!("unbroken_upstream_ttft_seconds", "model" => self.name.clone())
                        .record(began.elapsed().as_secs_f64());
                    return Ok(between_tokens(
                        first,
                        rest,
                        target.limits.between_token_timeout,
                    ));
                }
                Err(error)
                    if target
                        .limits
                        .retry_on
                        .iter()
                        .any(|rule| rule.matches(&error))
                        && attempt < target.limits.max_retries
                        && error
                            .retry_after()
                            .is_none_or(|wait| wait <= LONGEST_RETRY_WAIT) =>
                {
                    attempt += 1;
                    let delay = backoff(target.limits.retry_base, attempt, error.retry_after());
                    if deadline.is_some_and(|at| Instant::now() + delay >= at) {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt, ?delay, "retrying upstream");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// `limit`, or less if `deadline` comes sooner.
fn within(limit: Duration, deadline: Option<Instant>) -> Duration {
    deadline.map_or(limit, |at| {
        limit.min(at.saturating_duration_since(Instant::now()))
    })
}

/// Call the provider and wait for its first delta.
async fn first_delta(
    provider: &dyn Provider,
    request: ChatRequest,
) -> Result<(Delta, DeltaStream), ProviderError> {
    let mut deltas = provider.stream(request).await?;
    match deltas.next().await {
        Some(Ok(first)) => Ok((first, deltas)),
        Some(Err(error)) => Err(error),
        None => Err(ProviderError::Interrupted(
            "ended before the first token".into(),
        )),
    }
}

/// `first`, then the rest of `deltas`, failing when the next delta takes longer than
/// `limit`.
fn between_tokens(first: Delta, deltas: DeltaStream, limit: Duration) -> DeltaStream {
    Box::pin(BetweenTokens {
        first: Some(first),
        deltas: Some(deltas),
        limit,
        deadline: tokio::time::Instant::now() + limit,
        timer: Box::pin(tokio::time::sleep(limit)),
    })
}

/// The between-token timeout with one timer per stream: a delta moves the deadline (a
/// clock read), and the timer is re-armed only when it fires early — at most once per
/// `limit` — rather than a timer registered and removed for every token.
struct BetweenTokens {
    /// The delta that started the answer, until it is taken.
    first: Option<Delta>,
    /// `None` once ended.
    deltas: Option<DeltaStream>,
    limit: Duration,
    deadline: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for BetweenTokens {
    type Item = Result<Delta, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let Some(deltas) = self.deltas.as_mut() else {
            return Poll::Ready(None);
        };
        match deltas.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                self.deadline = tokio::time::Instant::now() + self.limit;
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.deltas = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.deadline;
            if tokio::time::Instant::now() >= deadline {
                self.deltas = None;
                return Poll::Ready(Some(Err(ProviderError::Timeout("between tokens"))));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Full-jitter exponential backoff (factor 2, capped at 5 s), at least `Retry-After`.
pub fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(LONGEST_RETRY_WAIT);
    let drawn = ceiling.mul_f64(rand::random::<f64>());
    retry_after.map_or(drawn, |wait| wait.max(drawn))
}

/// Every configured model by name, in configuration order.
#[derive(Default)]
pub struct Models {
    by_name: HashMap<String, Arc<Model>>,
    order: Vec<String>,
}

impl Models {
    /// Add a model (replacing one of the same name).
    pub fn insert(&mut self, model: Model) {
        if !self.by_name.contains_key(&model.name) {
            self.order.push(model.name.clone());
        }
        self.by_name.insert(model.name.clone(), Arc::new(model));
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    /// Names in configuration order.
    pub fn names(&self) -> &[String] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        for attempt in [0, 1, 5, 40, u32::MAX] {
            assert!(backoff(Duration::from_millis(200), attempt, None) <= Duration::from_secs(5));
        }
        let wait = Some(Duration::from_secs(7));
        assert_eq!(
            backoff(Duration::from_millis(1), 1, wait),
            Duration::from_secs(7)
        );
    }
}
