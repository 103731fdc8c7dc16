//! [`Policy`]: when and how often to reconnect.
//!
//! The delay before attempt `n` (1-based) is drawn uniformly from
//! `[0, min(max_delay, base · factor^(n-1))]` ("full jitter"), which spreads a crowd of
//! clients that lost the same server instead of having them return in one wave. A server's
//! `retry:` field replaces `base`; a `Retry-After` on a retryable status is honoured as a
//! lower bound. The computation saturates instead of overflowing for any attempt count.

use std::time::Duration;

/// Backoff and retry settings for an [`EventSource`](crate::EventSource).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Delay scale for the first retry (the server's `retry:` replaces it). Default 1 s.
    pub base_delay: Duration,
    /// Growth per attempt. Default 2.
    pub factor: f64,
    /// Upper bound on the drawn delay. Default 30 s.
    pub max_delay: Duration,
    /// Fraction of the delay that is random: 1.0 is full jitter (default), 0.0 none.
    pub jitter: f64,
    /// Consecutive failed attempts allowed before giving up; `None` retries forever.
    /// A connection that delivers an event resets the count. Default 10.
    pub max_retries: Option<u32>,
    /// HTTP statuses worth another attempt. Default 408, 429, 500, 502, 503, 504.
    pub retryable_statuses: Vec<u16>,
    /// Time allowed from starting an attempt to the response headers. Default 10 s.
    pub connect_timeout: Duration,
    /// Reconnect when no byte at all (heartbeats included) arrives for this long.
    /// Default 45 s: three missed heartbeats of a server that sends one every 15 s.
    pub idle_timeout: Option<Duration>,
    /// Largest event accepted, in bytes. Default 16 MiB.
    pub max_event_size: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: 1.0,
            max_retries: Some(10),
            retryable_statuses: vec![408, 429, 500, 502, 503, 504],
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(45)),
            max_event_size: 16 << 20,
        }
    }
}

impl Policy {
    /// The undrawn upper bound of the delay before retry `attempt` (1-based):
    /// `min(max_delay, base · factor^(attempt-1))`, saturating for any attempt.
    pub fn ceiling(&self, attempt: u32, base: Duration) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = base.as_secs_f64() * factor.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|delay| *delay < self.max_delay)
            .unwrap_or(self.max_delay)
    }

    /// The delay before retry `attempt`, given a uniform random `unit` in `[0, 1)` and
    /// the server's `Retry-After`, if any.
    pub fn delay(
        &self,
        attempt: u32,
        base: Duration,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        let ceiling = self.ceiling(attempt, base);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let unit = unit.clamp(0.0, 1.0);
        let drawn = Duration::try_from_secs_f64(ceiling.as_secs_f64() * (1.0 - jitter * unit))
            .map_or(ceiling, |drawn| drawn.min(ceiling));
        match retry_after {
            Some(wait) if wait > drawn => wait,
            _ => drawn,
        }
    }

    /// Whether `status` is worth another attempt.
    pub fn is_retryable_status(&self, status: u16) -> bool {
        self.retryable_statuses.contains(&status)
    }

    /// Whether the policy allows retry number `attempt` (1-based).
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_retries.is_none_or(|max| attempt <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let policy = Policy::default();
        let base = Duration::from_secs(1);
        assert_eq!(policy.ceiling(1, base), Duration::from_secs(1));
        assert_eq!(policy.ceiling(2, base), Duration::from_secs(2));
        assert_eq!(policy.ceiling(5, base), Duration::from_secs(16));
        assert_eq!(policy.ceiling(6, base), Duration::from_secs(30));
    }

    #[test]
    fn delay_is_overflow_safe_for_any_attempt() {
        let policy = Policy {
            factor: 1e300,
            max_delay: Duration::MAX,
            ..Policy::default()
        };
        for attempt in [0, 1, 2, 64, 1_000, u32::MAX] {
            let delay = policy.delay(attempt, Duration::MAX, 0.0, None);
            assert!(delay <= Duration::MAX);
        }
        let default = Policy::default();
        assert_eq!(
            default.delay(u32::MAX, Duration::from_secs(1), 0.0, None),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let policy = Policy::default();
        let base = Duration::from_secs(1);
        assert_eq!(policy.delay(3, base, 0.0, None), Duration::from_secs(4));
        assert!(policy.delay(3, base, 0.999_999, None) < Duration::from_millis(1));
        let no_jitter = Policy {
            jitter: 0.0,
            ..Policy::default()
        };
        assert_eq!(no_jitter.delay(3, base, 0.7, None), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let policy = Policy::default();
        let base = Duration::from_secs(1);
        let wait = Some(Duration::from_secs(7));
        assert_eq!(policy.delay(1, base, 0.5, wait), Duration::from_secs(7));
        let short = Some(Duration::from_millis(10));
        assert_eq!(policy.delay(1, base, 0.0, short), Duration::from_secs(1));
    }

    #[test]
    fn max_retries_counts_attempts() {
        let policy = Policy {
            max_retries: Some(2),
            ..Policy::default()
        };
        assert!(policy.allows(2));
        assert!(!policy.allows(3));
        let forever = Policy {
            max_retries: None,
            ..Policy::default()
        };
        assert!(forever.allows(u32::MAX));
    }
}
