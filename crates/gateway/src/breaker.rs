//! A circuit breaker per upstream target: an outage costs one probe per cool-down, not
//! every request's attempts.
//!
//! Closed, it counts consecutive failed starts (after a target's own retries); at
//! `failures` it opens for `cooldown`, and the router skips the target (to the next one,
//! or an error if none is left). When the cool-down is over, one request is let through
//! as a probe (half-open) while the others keep skipping it for another cool-down; a
//! success closes the breaker, a failure opens it again. A refusal of the request itself
//! (400, 413, 422) says nothing about the target and is not counted.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown_ms: u64,
    epoch: Instant,
    consecutive: AtomicU32,
    /// Milliseconds since `epoch` until which the target is skipped (0: closed).
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// Opens after `failures` consecutive failures (0: never) for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request may go to the target now. Past a cool-down, the first caller
    /// gets `true` (the probe) and pushes the next probe a cool-down away.
    pub fn admit(&self) -> bool {
        self.admit_at(self.now_ms())
    }

    fn admit_at(&self, now: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // Half-open: one probe; the others wait for its outcome (or the next cool-down).
        self.open_until_ms
            .compare_exchange(
                until,
                now.saturating_add(self.cooldown_ms).max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// A start succeeded: closed.
    pub fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Release);
    }

    /// A start failed; true if this opened the breaker.
    pub fn failure(&self) -> bool {
        self.failure_at(self.now_ms())
    }

    fn failure_at(&self, now: u64) -> bool {
        let count = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.open_until_ms.load(Ordering::Acquire) != 0;
        if self.failures == 0 || (count < self.failures && !probing) {
            return false;
        }
        self.open_until_ms.store(
            now.saturating_add(self.cooldown_ms).max(1),
            Ordering::Release,
        );
        true
    }

    /// Whether requests skip the target now.
    pub fn is_open(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once_per_cooldown() {
        let breaker = Breaker::new(3, Duration::from_millis(1000));
        assert!(!breaker.failure_at(0));
        breaker.success(); // a success in between starts the count again
        assert!(!breaker.failure_at(1));
        assert!(!breaker.failure_at(2));
        assert!(breaker.failure_at(3), "the third in a row opens it");
        assert!(!breaker.admit_at(500), "open: skipped");
        assert!(breaker.admit_at(1003), "cool-down over: one probe");
        assert!(!breaker.admit_at(1004), "while it runs, the others skip");
        assert!(breaker.failure_at(1100), "a failed probe opens it again");
        assert!(!breaker.admit_at(2000));
        assert!(breaker.admit_at(2100), "the next probe");
        breaker.success();
        assert!(breaker.admit_at(2101) && breaker.admit_at(2102), "closed");
    }

    #[test]
    fn zero_failures_never_opens() {
        let breaker = Breaker::new(0, Duration::from_secs(1));
        for t in 0..10 {
            assert!(!breaker.failure_at(t));
        }
        assert!(breaker.admit_at(10));
    }
}
