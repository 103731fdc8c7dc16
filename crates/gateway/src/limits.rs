//! What one principal holds at once: answers generating and SSE readers open, counted
//! per principal in this process ([`Holdings`]), each released by dropping its [`Hold`].
//!
//! `[limits] max_streams_per_principal` and `max_readers_per_principal` cap them (429
//! `too_many_streams` / `too_many_readers` with `Retry-After`). With several nodes each
//! counts its own: a principal may hold up to the cap on every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

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
}
