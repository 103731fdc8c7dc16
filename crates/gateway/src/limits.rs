//! What one principal holds at once: answers generating and SSE readers open, counted
//! per principal in this process ([`Holdings`]), each released by dropping its [`Hold`].
//!
//! `[limits] max_streams_per_principal` and `max_readers_per_principal` cap them (429
//! `too_many_streams` / `too_many_readers` with `Retry-After`). With several nodes each
//! counts its own: a principal may hold up to the cap on every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::auth::Principal;
use crate::error::ApiError;

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

/// The counts of every principal holding something.
#[derive(Debug, Default, Clone)]
pub struct Holdings {
    counts: Counts,
}

/// One unit held; released when dropped.
#[derive(Debug)]
pub struct Hold {
    counts: Counts,
    key: (Held, Arc<str>),
}

impl Holdings {
    /// Take one `what` for `principal`, unless it holds `max` already (0: no limit).
    ///
    /// # Errors
    /// 429 `too_many_streams` or `too_many_readers`, with `Retry-After: 1`.
    pub fn take(&self, what: Held, principal: &Principal, max: usize) -> Result<Hold, ApiError> {
        let key = (what, Arc::<str>::from(principal.as_str()));
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_default();
        if max > 0 && *count >= max {
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
            if *count == 0 {
                counts.remove(&key);
            }
            metrics::counter!("unbroken_limited_total", "what" => what.name()).increment(1);
            return Err(ApiError::rate_limited(code, message, 1));
        }
        *count += 1;
        drop(counts);
        Ok(Hold {
            counts: Arc::clone(&self.counts),
            key,
        })
    }

    /// How many `what` `principal` holds now.
    pub fn count(&self, what: Held, principal: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&(what, principal.into())).copied().unwrap_or(0)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A per-minute allowance per principal: a token bucket of `per_minute`, refilled
/// continuously, so a burst of up to a minute's worth is allowed and then the rest evenly.
/// One instance counts requests (each costs 1, spent before it is served), another tokens
/// (spent after an answer, when the upstream has counted them: the balance may go below
/// zero, and new answers wait until it is positive again).
#[derive(Debug)]
pub struct Rates {
    what: &'static str,
    buckets: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
}

impl Rates {
    /// Buckets of requests.
    pub fn requests() -> Self {
        Self::new("requests")
    }

    /// Buckets of tokens.
    pub fn tokens() -> Self {
        Self::new("tokens")
    }

    fn new(what: &'static str) -> Self {
        Self {
            what,
            buckets: Mutex::new(HashMap::new()),
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

    /// Whether `principal` may start something at `now`: its balance is at least one
    /// (`per_minute` 0: no limit). With `spend`, one is spent.
    ///
    /// # Errors
    /// 429 (`rate_limited` for requests, `tokens_rate_limited` for tokens) with
    /// `Retry-After`: the seconds until the balance is one again.
    pub fn admit(
        &self,
        principal: &Principal,
        per_minute: u64,
        spend: bool,
        now: Instant,
    ) -> Result<(), ApiError> {
        if per_minute == 0 {
            return Ok(());
        }
        let per_second = per_minute as f64 / 60.0;
        let wait = self.with(principal.as_str(), per_minute, now, |balance| {
            if *balance >= 1.0 {
                if spend {
                    *balance -= 1.0;
                }
                return None;
            }
            Some(((1.0 - *balance) / per_second).ceil().max(1.0) as u64)
        });
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

    /// Spend `amount` of `principal`'s balance at `now`, below zero if need be.
    pub fn charge(&self, principal: &str, per_minute: u64, amount: u64, now: Instant) {
        if per_minute == 0 || amount == 0 {
            return;
        }
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
        let first = holdings.take(Held::Streams, &alice, 2).unwrap();
        let _second = holdings.take(Held::Streams, &alice, 2).unwrap();
        let refused = holdings.take(Held::Streams, &alice, 2).unwrap_err();
        assert_eq!(refused.code, "too_many_streams");
        assert_eq!(refused.status.as_u16(), 429);
        // Others and other kinds are counted apart; 0 is no limit.
        assert!(holdings.take(Held::Streams, &bob, 2).is_ok());
        assert!(holdings.take(Held::Readers, &alice, 2).is_ok());
        let _unlimited: Vec<Hold> = (0..10)
            .map(|_| holdings.take(Held::Readers, &bob, 0).unwrap())
            .collect();
        drop(first);
        assert_eq!(holdings.count(Held::Streams, "alice"), 1);
        assert!(holdings.take(Held::Streams, &alice, 2).is_ok());
    }

    #[test]
    fn a_minutes_worth_goes_at_once_then_one_every_few_seconds() {
        let rates = Rates::requests();
        let alice = Principal::new("alice", Scopes::DEFAULT);
        let bob = Principal::new("bob", Scopes::DEFAULT);
        let start = Instant::now();
        for _ in 0..6 {
            rates.admit(&alice, 6, true, start).unwrap();
        }
        let refused = rates.admit(&alice, 6, true, start).unwrap_err();
        assert_eq!(
            (refused.code.as_ref(), refused.retry_after),
            ("rate_limited", Some(10))
        );
        assert!(rates.admit(&bob, 6, true, start).is_ok());
        // Six a minute: one more every ten seconds.
        let later = start + std::time::Duration::from_secs(10);
        assert!(rates.admit(&alice, 6, true, later).is_ok());
        assert!(rates.admit(&alice, 6, true, later).is_err());
        assert!(rates.admit(&alice, 0, true, later).is_ok());
    }

    #[test]
    fn tokens_are_charged_after_the_answer_and_debt_waits_to_drain() {
        let tokens = Rates::tokens();
        let alice = Principal::new("alice", Scopes::DEFAULT);
        let start = Instant::now();
        // Admitting spends nothing; the answer's 1,500 tokens put alice 500 in debt.
        tokens.admit(&alice, 1_000, false, start).unwrap();
        tokens.charge("alice", 1_000, 1_500, start);
        let refused = tokens.admit(&alice, 1_000, false, start).unwrap_err();
        // 501 tokens at 1,000 a minute: 31 s.
        assert_eq!(
            (refused.code.as_ref(), refused.retry_after),
            ("tokens_rate_limited", Some(31))
        );
        let later = start + std::time::Duration::from_secs(31);
        assert!(tokens.admit(&alice, 1_000, false, later).is_ok());
    }
}
