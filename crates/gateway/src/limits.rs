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

/// Requests per minute per principal: a token bucket of `per_minute` tokens, refilled
/// continuously, so a burst of up to a minute's worth is allowed and then one request
/// every `60 / per_minute` seconds.
#[derive(Debug, Default)]
pub struct Rates {
    buckets: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
}

impl Rates {
    /// Spend one request of `principal` at `now`, unless its bucket is empty (`per_minute`
    /// 0: no limit).
    ///
    /// # Errors
    /// 429 `rate_limited` with `Retry-After`: the seconds until a request is allowed.
    pub fn spend(
        &self,
        principal: &Principal,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), ApiError> {
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Full buckets say nothing: forget them, so the map holds only recent callers.
        if buckets.len() > 10_000 {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets
            .entry(Arc::from(principal.as_str()))
            .or_insert((capacity, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / per_second).ceil().max(1.0);
        metrics::counter!("unbroken_limited_total", "what" => "requests").increment(1);
        Err(ApiError::rate_limited(
            "rate_limited",
            format!("at most {per_minute} requests a minute per principal"),
            wait as u64,
        ))
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
        let rates = Rates::default();
        let alice = Principal::new("alice", Scopes::DEFAULT);
        let bob = Principal::new("bob", Scopes::DEFAULT);
        let start = Instant::now();
        for _ in 0..6 {
            rates.spend(&alice, 6, start).unwrap();
        }
        let refused = rates.spend(&alice, 6, start).unwrap_err();
        assert_eq!(
            (refused.code.as_ref(), refused.retry_after),
            ("rate_limited", Some(10))
        );
        assert!(rates.spend(&bob, 6, start).is_ok());
        // Six a minute: one more every ten seconds.
        let later = start + std::time::Duration::from_secs(10);
        assert!(rates.spend(&alice, 6, later).is_ok());
        assert!(rates.spend(&alice, 6, later).is_err());
        assert!(rates.spend(&alice, 0, later).is_ok());
    }
}
