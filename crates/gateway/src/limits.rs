//! What one principal holds at once (answers generating, SSE readers open: [`Holdings`],
//! each released by dropping its [`Hold`]) and spends per minute (requests, tokens:
//! [`Rates`]).
//!
//! `[limits] max_streams_per_principal` and `max_readers_per_principal` cap holdings (429
//! `too_many_streams` / `too_many_readers` with `Retry-After`); `requests_per_minute` and
//! `tokens_per_minute` cap rates. On SQLite or memory they are counted in this process.
//! On Redis the nodes count together, in Redis ([`streamlog::RedisLog::hold`],
//! [`streamlog::RedisLog::bucket`]): a hold there lasts [`HOLD_TTL`] unless refreshed, and
//! [`keep_holds`] refreshes this node's holds and releases the dropped ones, so the holds
//! of a node that died lapse within [`HOLD_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use streamlog::StreamLog;
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::error::ApiError;

/// How long a hold counted in Redis lasts without a refresh.
pub const HOLD_TTL: Duration = Duration::from_secs(30);

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    /// Answers generating.
    Streams,
    /// SSE responses open.
    Readers,
}

impl Held {
    fn name(self) -> &'static str {
        match self {
            Held::Streams => "streams",
            Held::Readers => "readers",
        }
    }
}

type Counts = Arc<Mutex<HashMap<(Held, Arc<str>), usize>>>;

/// Holds counted in Redis: this node's live ones (holder → key), refreshed by
/// [`keep_holds`], and the channel on which dropped ones are released.
struct SharedHolds {
    log: Arc<dyn StreamLog>,
    live: Mutex<HashMap<String, String>>,
    released: mpsc::UnboundedSender<(String, String)>,
    releases: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    next: AtomicU64,
    node: String,
}

/// The counts of every principal holding something.
#[derive(Clone, Default)]
pub struct Holdings {
    counts: Counts,
    shared: Option<Arc<SharedHolds>>,
}

impl std::fmt::Debug for Holdings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holdings")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// One unit held; released when dropped.
#[derive(Debug)]
pub struct Hold {
    what: Held,
    release: Release,
}

#[derive(Debug)]
enum Release {
    Local(Counts, (Held, Arc<str>)),
    Shared(SharedHoldsRef),
}

/// A hold in Redis: released through the keeper when dropped.
#[derive(Debug)]
struct SharedHoldsRef {
    holder: String,
    key: String,
    live: std::sync::Weak<SharedHolds>,
}

impl std::fmt::Debug for SharedHolds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHolds")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn refusal(what: Held, max: usize) -> ApiError {
    let (code, message) = match what {
        Held::Streams => (
            "too_many_streams",
            format!("at most {max} answers at once per principal; wait for one to end"),
        ),
        Held::Readers => (
            "too_many_readers",
            format!("at most {max} open streams per principal; close one first"),
        ),
    };
    metrics::counter!("unbroken_limited_total", "what" => what.name()).increment(1);
    ApiError::rate_limited(code, message, 1)
}

impl Holdings {
    /// Holdings counted in this process, or in `log`'s Redis when it is one (as `node`).
    pub fn new(log: &Arc<dyn StreamLog>, node: &str) -> Self {
        let shared = log.as_redis().map(|_| {
            let (released, releases) = mpsc::unbounded_channel();
            Arc::new(SharedHolds {
                log: Arc::clone(log),
                live: Mutex::new(HashMap::new()),
                released,
                releases: Mutex::new(Some(releases)),
                next: AtomicU64::new(0),
                node: node.to_owned(),
            })
        });
        Self {
            counts: Counts::default(),
            shared,
        }
    }

    /// Take one `what` for `principal`, unless it holds `max` already (0: no limit).
    ///
    /// # Errors
    /// 429 `too_many_streams` or `too_many_readers`, with `Retry-After: 1`; 503 when
    /// Redis cannot be reached.
    pub async fn take(
        &self,
        what: Held,
        principal: &Principal,
        max: usize,
    ) -> Result<Hold, ApiError> {
        if let Some(shared) = &self.shared
            && let Some(redis) = shared.log.as_redis()
        {
            let key = format!("{}:{}", what.name(), principal.as_str());
            let n = shared.next.fetch_add(1, Ordering::Relaxed);
            let holder = format!("{}#{n}", shared.node);
            if !redis.hold(&key, &holder, max as u64, HOLD_TTL).await? {
                return Err(refusal(what, max));
            }
            shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(holder.clone(), key.clone());
            metrics::gauge!("unbroken_held", "what" => what.name()).increment(1);
            return Ok(Hold {
                what,
                release: Release::Shared(SharedHoldsRef {
                    holder,
                    key,
                    live: Arc::downgrade(shared),
                }),
            });
        }
        self.take_local(what, principal, max)
    }

    fn take_local(&self, what: Held, principal: &Principal, max: usize) -> Result<Hold, ApiError> {
        let key = (what, Arc::<str>::from(principal.as_str()));
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_default();
        if max > 0 && *count >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return Err(refusal(what, max));
        }
        *count += 1;
        drop(counts);
        metrics::gauge!("unbroken_held", "what" => what.name()).increment(1);
        Ok(Hold {
            what,
            release: Release::Local(Arc::clone(&self.counts), key),
        })
    }

    /// How many `what` `principal` holds now in this process (holds counted in Redis:
    /// this node's).
    pub fn count(&self, what: Held, principal: &str) -> usize {
        if let Some(shared) = &self.shared {
            let key = format!("{}:{principal}", what.name());
            let live = shared.live.lock().unwrap_or_else(PoisonError::into_inner);
            return live.values().filter(|k| **k == key).count();
        }
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&(what, principal.into())).copied().unwrap_or(0)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        metrics::gauge!("unbroken_held", "what" => self.what.name()).decrement(1);
        match &self.release {
            Release::Local(counts, key) => {
                let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(count) = counts.get_mut(key) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        counts.remove(key);
                    }
                }
            }
            Release::Shared(hold) => {
                if let Some(shared) = hold.live.upgrade() {
                    shared
                        .live
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&hold.holder);
                    let _ = shared
                        .released
                        .send((hold.key.clone(), hold.holder.clone()));
                }
            }
        }
    }
}

/// For holds counted in Redis: release the dropped ones and refresh the live ones every
/// third of [`HOLD_TTL`], until `shutdown`. Nothing to do for holds of one process.
pub async fn keep_holds(holdings: Holdings, shutdown: crate::signal::Signal) {
    let Some(shared) = holdings.shared.clone() else {
        return;
    };
    let Some(mut releases) = shared
        .releases
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let Some(redis) = shared.log.as_redis() else {
        return;
    };
    let mut ticker = tokio::time::interval(HOLD_TTL / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.raised() => return,
            released = releases.recv() => {
                let Some((key, holder)) = released else { return };
                if let Err(error) = redis.release_hold(&key, &holder).await {
                    tracing::warn!(%error, "could not release a hold; it lapses by itself");
                }
            }
            _ = ticker.tick() => {
                let live: Vec<(String, String)> = shared
                    .live
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(holder, key)| (key.clone(), holder.clone()))
                    .collect();
                if !live.is_empty()
                    && let Err(error) = redis.refresh_holds(&live, HOLD_TTL).await
                {
                    tracing::warn!(%error, "could not refresh this node's holds");
                }
            }
        }
    }
}

/// A per-minute allowance per principal: a token bucket of `per_minute`, refilled
/// continuously, so a burst of up to a minute's worth is allowed and then the rest evenly.
/// One instance counts requests (each costs 1, spent before it is served), another tokens
/// (spent after an answer, when the upstream has counted them: the balance may go below
/// zero, and new answers wait until it is positive again). Counted in this process, or
/// in Redis by every node together when the log is Redis.
pub struct Rates {
    what: &'static str,
    buckets: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
    shared: Option<Arc<dyn StreamLog>>,
}

impl std::fmt::Debug for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rates")
            .field("what", &self.what)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl Rates {
    /// Buckets of requests, in `log`'s Redis when it is one.
    pub fn requests(log: Option<&Arc<dyn StreamLog>>) -> Self {
        Self::new("requests", log)
    }

    /// Buckets of tokens, in `log`'s Redis when it is one.
    pub fn tokens(log: Option<&Arc<dyn StreamLog>>) -> Self {
        Self::new("tokens", log)
    }

    fn new(what: &'static str, log: Option<&Arc<dyn StreamLog>>) -> Self {
        Self {
            what,
            buckets: Mutex::new(HashMap::new()),
            shared: log.filter(|log| log.as_redis().is_some()).map(Arc::clone),
        }
    }

    /// Refill `principal`'s bucket to `now`, then apply `f` to its balance.
    fn with<T>(
        &self,
        principal: &str,
        per_minute: u64,
        now: Instant,
        f: impl FnOnce(&mut f64) -> T,
    ) -> T {
        let capacity = per_minute as f64;
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Full buckets say nothing: forget them, so the map holds only recent callers.
        if buckets.len() > 10_000 {
            buckets.retain(|_, (balance, at)| {
                *balance + now.saturating_duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (balance, at) = buckets
            .entry(Arc::from(principal))
            .or_insert((capacity, now));
        *balance = (*balance + now.saturating_duration_since(*at).as_secs_f64() * per_second)
            .min(capacity);
        *at = now;
        f(balance)
    }

    fn key(&self, principal: &str) -> String {
        format!("{}:{principal}", self.what)
    }

    /// Whether `principal` may start something now: its balance is at least one
    /// (`per_minute` 0: no limit). With `spend`, one is spent.
    ///
    /// # Errors
    /// 429 (`rate_limited` for requests, `tokens_rate_limited` for tokens) with
    /// `Retry-After`: the seconds until the balance is one again; 503 when Redis cannot
    /// be reached.
    pub async fn admit(
        &self,
        principal: &Principal,
        per_minute: u64,
        spend: bool,
    ) -> Result<(), ApiError> {
        if per_minute == 0 {
            return Ok(());
        }
        let wait = match self.shared.as_ref().and_then(|log| log.as_redis()) {
            Some(redis) => redis
                .bucket(
                    &self.key(principal.as_str()),
                    per_minute,
                    u64::from(spend),
                    true,
                )
                .await?
                .err(),
            None => self.admit_at(principal.as_str(), per_minute, spend, Instant::now()),
        };
        let Some(wait) = wait else {
            return Ok(());
        };
        metrics::counter!("unbroken_limited_total", "what" => self.what).increment(1);
        let code = if self.what == "tokens" {
            "tokens_rate_limited"
        } else {
            "rate_limited"
        };
        Err(ApiError::rate_limited(
            code,
            format!("at most {per_minute} {} a minute per principal", self.what),
            wait,
        ))
    }

    /// In this process at `now`: `None` when admitted, else the seconds to wait.
    fn admit_at(&self, principal: &str, per_minute: u64, spend: bool, now: Instant) -> Option<u64> {
        let per_second = per_minute as f64 / 60.0;
        self.with(principal, per_minute, now, |balance| {
            if *balance >= 1.0 {
                if spend {
                    *balance -= 1.0;
                }
                return None;
            }
            Some(((1.0 - *balance) / per_second).ceil().max(1.0) as u64)
        })
    }

    /// Spend `amount` of `principal`'s balance, below zero if need be.
    pub async fn charge(&self, principal: &str, per_minute: u64, amount: u64) {
        if per_minute == 0 || amount == 0 {
            return;
        }
        if let Some(redis) = self.shared.as_ref().and_then(|log| log.as_redis()) {
            let charged = redis
                .bucket(&self.key(principal), per_minute, amount, false)
                .await;
            if let Err(error) = charged {
                tracing::warn!(%error, "could not charge a principal's tokens");
            }
            return;
        }
        self.charge_at(principal, per_minute, amount, Instant::now());
    }

    /// In this process at `now`.
    fn charge_at(&self, principal: &str, per_minute: u64, amount: u64, now: Instant) {
        self.with(principal, per_minute, now, |balance| {
            *balance -= amount as f64;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;

    #[test]
    fn a_principal_holds_up_to_the_cap_and_a_drop_frees_one() {
        let holdings = Holdings::default();
        let alice = Principal::new("alice", Scopes::DEFAULT);
        let bob = Principal::new("bob", Scopes::DEFAULT);
        let first = holdings.take_local(Held::Streams, &alice, 2).unwrap();
        let _second = holdings.take_local(Held::Streams, &alice, 2).unwrap();
        let refused = holdings.take_local(Held::Streams, &alice, 2).unwrap_err();
        assert_eq!(refused.code, "too_many_streams");
        assert_eq!(refused.status.as_u16(), 429);
        // Others and other kinds are counted apart; 0 is no limit.
        assert!(holdings.take_local(Held::Streams, &bob, 2).is_ok());
        assert!(holdings.take_local(Held::Readers, &alice, 2).is_ok());
        let _unlimited: Vec<Hold> = (0..10)
            .map(|_| holdings.take_local(Held::Readers, &bob, 0).unwrap())
            .collect();
        drop(first);
        assert_eq!(holdings.count(Held::Streams, "alice"), 1);
        assert!(holdings.take_local(Held::Streams, &alice, 2).is_ok());
    }

    #[test]
    fn a_minutes_worth_goes_at_once_then_one_every_few_seconds() {
        let rates = Rates::requests(None);
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(rates.admit_at("alice", 6, true, start), None);
        }
        assert_eq!(rates.admit_at("alice", 6, true, start), Some(10));
        assert_eq!(rates.admit_at("bob", 6, true, start), None);
        // Six a minute: one more every ten seconds.
        let later = start + Duration::from_secs(10);
        assert_eq!(rates.admit_at("alice", 6, true, later), None);
        assert!(rates.admit_at("alice", 6, true, later).is_some());
    }

    #[test]
    fn tokens_are_charged_after_the_answer_and_debt_waits_to_drain() {
        let tokens = Rates::tokens(None);
        let start = Instant::now();
        // Admitting spends nothing; the answer's 1,500 tokens put alice 500 in debt.
        assert_eq!(tokens.admit_at("alice", 1_000, false, start), None);
        tokens.charge_at("alice", 1_000, 1_500, start);
        // 501 tokens at 1,000 a minute: 31 s.
        assert_eq!(tokens.admit_at("alice", 1_000, false, start), Some(31));
        let later = start + Duration::from_secs(31);
        assert_eq!(tokens.admit_at("alice", 1_000, false, later), None);
    }

    #[tokio::test]
    async fn refusals_name_what_is_limited() {
        let rates = Rates::tokens(None);
        let alice = Principal::new("alice", Scopes::DEFAULT);
        rates.charge("alice", 60, 100).await;
        let refused = rates.admit(&alice, 60, false).await.unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code.as_ref()),
            (429, "tokens_rate_limited")
        );
        assert!(rates.admit(&alice, 0, false).await.is_ok());
    }
}
