//! Limits counted across the nodes that share one Redis: per-minute token buckets
//! ([`RedisLog::bucket`]) and holds with an expiry ([`RedisLog::hold`]), the shared
//! counterparts of the gateway's in-process `Rates` and `Holdings`.
//!
//! Each call runs one Lua script on one key (`<prefix>:limit:bucket:<key>`, a hash of the
//! balance `b` and the time `t` it was counted at; `<prefix>:limit:hold:<key>`, a sorted
//! set of holders scored by their expiry in ms), so it is atomic and its keys sit in one
//! hash slot. The scripts read the time from Redis (`TIME`), never from the node, so
//! nodes whose clocks disagree still agree on every balance and expiry. Every key expires
//! a little after it would say nothing any more (a bucket refilled to full, the last hold
//! gone), so idle principals and dead nodes leave nothing behind. A node that dies stops
//! refreshing its holds, and they lapse after their ttl.
//!
//! The scripts live here rather than in `scripts`: they are not rules of the stream log.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::values::{corrupt, number, value_at};
use super::{RedisLog, Shared};
use crate::clock::millis;
use crate::error::LogError;

/// How long a key outlives the moment it would say nothing any more.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// Lua: `now`, the Redis server's time in ms.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Lua: drop the holders of KEYS[1] expired by `now`.
macro_rules! drop_expired {
    () => {
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
"
    };
}

/// Lua: let KEYS[1] expire ARGV[1] ms after its latest holder (at most ~30 years).
macro_rules! expire_after_latest {
    () => {
        "local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if latest[2] then
  local ms = math.min(1e12, tonumber(latest[2]) - now + tonumber(ARGV[1]))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, ms)))
end
"
    };
}

/// KEYS: bucket. ARGV: margin_ms, per_minute, amount, need_one (`1` / `0`). As the
/// gateway's `Rates`: a new bucket is full; it refills at per_minute / 60 a second up to
/// per_minute. With need_one and a balance below one, nothing changes and the answer is
/// `wait` and the seconds until the balance is one again; otherwise amount is spent
/// (below zero if need be). The key expires when the bucket would be full again.
const BUCKET_LUA: &str = concat!(
    now_ms!(),
    r"local capacity = tonumber(ARGV[2])
local per_second = capacity / 60
local balance = capacity
local b = redis.call('HMGET', KEYS[1], 'b', 't')
if b[1] then
  local elapsed = math.max(0, now - tonumber(b[2])) / 1000
  balance = math.min(capacity, tonumber(b[1]) + elapsed * per_second)
end
if ARGV[4] == '1' and balance < 1 then
  return {'wait', math.max(1, math.ceil((1 - balance) / per_second))}
end
balance = balance - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'b', string.format('%.17g', balance), 't', string.format('%d', now))
local ms = math.min(1e12, math.ceil((capacity - balance) / per_second * 1000) + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, ms)))
return {'ok'}
"
);

/// KEYS: holds. ARGV: margin_ms, ttl_ms, max (0: none), holder. Drops the expired
/// holders, then adds (or renews) holder unless max others hold already: `ok` or `full`.
const HOLD_LUA: &str = concat!(
    now_ms!(),
    drop_expired!(),
    r"local max = tonumber(ARGV[3])
if max > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[4])
    and redis.call('ZCARD', KEYS[1]) >= max then
  return {'full'}
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[4])
",
    expire_after_latest!(),
    "return {'ok'}\n"
);

/// KEYS: holds. ARGV: margin_ms, ttl_ms, holders. Each holder still holding (not
/// released, not expired) holds until now + ttl; the others stay out.
const REFRESH_LUA: &str = concat!(
    now_ms!(),
    drop_expired!(),
    r"local expires = string.format('%d', now + tonumber(ARGV[2]))
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i])
end
",
    expire_after_latest!(),
    "return {'ok'}\n"
);

/// KEYS: holds. The holders not expired: `ok` and their number.
const COUNT_LUA: &str = concat!(
    now_ms!(),
    "return {'ok', redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')}\n"
);

static BUCKET: LazyLock<Script> = LazyLock::new(|| Script::new(BUCKET_LUA));
static HOLD: LazyLock<Script> = LazyLock::new(|| Script::new(HOLD_LUA));
static REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(REFRESH_LUA));
static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(COUNT_LUA));

impl Shared {
    fn bucket_key(&self, key: &str) -> String {
        format!("{}:limit:bucket:{key}", self.config.prefix)
    }

    fn hold_key(&self, key: &str) -> String {
        format!("{}:limit:hold:{key}", self.config.prefix)
    }
}

impl RedisLog {
    /// Spend `amount` from the token bucket `key`, shared by every node on this Redis:
    /// it holds `per_minute` at most, refills continuously at `per_minute / 60` a second,
    /// and starts full (as the gateway's in-process `Rates`). With `need_one`, a balance
    /// below one refuses, changing nothing, with the seconds until it is one again (at
    /// least 1); otherwise `amount` is spent, below zero if need be (a debt that later
    /// calls with `need_one` wait out). `per_minute` 0 is no limit, and `amount` 0
    /// without `need_one` spends nothing: both answer `Ok(Ok(()))` without asking Redis.
    ///
    /// # Errors
    /// Storage errors: Redis failed or did not answer in time.
    pub async fn bucket(
        &self,
        key: &str,
        per_minute: u64,
        amount: u64,
        need_one: bool,
    ) -> Result<Result<(), u64>, LogError> {
        if per_minute == 0 || (amount == 0 && !need_one) {
            return Ok(Ok(()));
        }
        let shared = &self.shared;
        let args = vec![
            millis(EXPIRY_MARGIN).to_string().into_bytes(),
            per_minute.to_string().into_bytes(),
            amount.to_string().into_bytes(),
            vec![if need_one { b'1' } else { b'0' }],
        ];
        let (status, values) = shared.run(&BUCKET, &[shared.bucket_key(key)], args).await?;
        match status.as_str() {
            "ok" => Ok(Ok(())),
            "wait" => Ok(Err(number(value_at(&values, 0)?)?.max(1))),
            other => Err(corrupt(&format!("unknown bucket answer {other:?}"))),
        }
    }

    /// Take a place among at most `max` holders of `key` (0: no limit, still recorded),
    /// shared by every node on this Redis, for `ttl`: holders whose time is up are
    /// dropped first. `true` if `holder` holds (a holder already holding keeps its place
    /// and its time is renewed), `false` if `max` others hold. Keep it with
    /// [`RedisLog::refresh_holds`] and give it back with [`RedisLog::release_hold`]; a
    /// node that dies stops refreshing, and its holds lapse after `ttl`.
    ///
    /// # Errors
    /// A `ttl` under a millisecond; storage errors.
    pub async fn hold(
        &self,
        key: &str,
        holder: &str,
        max: u64,
        ttl: Duration,
    ) -> Result<bool, LogError> {
        let shared = &self.shared;
        let args = vec![
            millis(EXPIRY_MARGIN).to_string().into_bytes(),
            ttl_ms(ttl)?.to_string().into_bytes(),
            max.to_string().into_bytes(),
            holder.as_bytes().to_vec(),
        ];
        let (status, _) = shared.run(&HOLD, &[shared.hold_key(key)], args).await?;
        match status.as_str() {
            "ok" => Ok(true),
            "full" => Ok(false),
            other => Err(corrupt(&format!("unknown hold answer {other:?}"))),
        }
    }

    /// Extend every `(key, holder)` of `holds` that still holds to `ttl` from now, in one
    /// round trip. One that was released or had lapsed is not taken again (its place may
    /// be another's by now): [`RedisLog::hold`] it afresh.
    ///
    /// # Errors
    /// A `ttl` under a millisecond; storage errors.
    pub async fn refresh_holds(
        &self,
        holds: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), LogError> {
        let ttl = ttl_ms(ttl)?;
        if holds.is_empty() {
            return Ok(());
        }
        let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (key, holder) in holds {
            by_key.entry(key).or_default().push(holder);
        }
        let shared = &self.shared;
        // Loading first (a no-op when loaded): a pipeline does not retry a missing script.
        let mut pipe = redis::pipe();
        pipe.load_script(&REFRESH).ignore();
        for (key, holders) in by_key {
            let mut invocation = REFRESH.prepare_invoke();
            invocation
                .key(shared.hold_key(key))
                .arg(millis(EXPIRY_MARGIN))
                .arg(ttl)
                .arg(holders);
            pipe.invoke_script(&invocation).ignore();
        }
        let mut conn = shared.conn().await?;
        let answered =
            tokio::time::timeout(shared.config.response_timeout, pipe.query_async(&mut conn)).await;
        shared.checked(answered)
    }

    /// Give back `holder`'s place among the holders of `key` (nothing if it holds none).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn release_hold(&self, key: &str, holder: &str) -> Result<(), LogError> {
        let shared = &self.shared;
        shared
            .command::<redis::Value>(redis::cmd("ZREM").arg(shared.hold_key(key)).arg(holder))
            .await?;
        Ok(())
    }

    /// How many hold `key` now (their time not up), across every node.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn holds(&self, key: &str) -> Result<u64, LogError> {
        let shared = &self.shared;
        let (_, values) = shared
            .run(&COUNT, &[shared.hold_key(key)], Vec::new())
            .await?;
        number(value_at(&values, 0)?)
    }
}

/// A hold's ttl in ms: at least one.
fn ttl_ms(ttl: Duration) -> Result<u64, LogError> {
    match millis(ttl) {
        0 => Err(LogError::InvalidArgument(
            "a hold needs a ttl of a millisecond or more",
        )),
        ms => Ok(ms),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::clock::SystemClock;
    use crate::redis::{LocalServer, RedisConfig};

    fn node(server: &LocalServer) -> RedisLog {
        RedisLog::open(RedisConfig::new(server.url.clone()), Arc::new(SystemClock)).unwrap()
    }

    /// The key's time to live in ms (-2: gone, -1: none).
    async fn pttl(log: &RedisLog, key: String) -> i64 {
        log.shared
            .command(redis::cmd("PTTL").arg(key))
            .await
            .unwrap()
    }

    /// Poll `holds(key)` until it is `want`, for at most five seconds.
    async fn until_holds(log: &RedisLog, key: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = log.holds(key).await.unwrap();
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "{key}: {now} holds, not {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// As the gateway's `Rates` test: six a minute go at once, the seventh waits ten
    /// seconds; other keys are counted apart.
    #[tokio::test]
    async fn a_minutes_worth_goes_at_once_then_the_wait_is_told() {
        let server = LocalServer::start().unwrap();
        let log = node(&server);
        for _ in 0..6 {
            assert_eq!(log.bucket("rpm:alice", 6, 1, true).await.unwrap(), Ok(()));
        }
        assert_eq!(log.bucket("rpm:alice", 6, 1, true).await.unwrap(), Err(10));
        assert_eq!(log.bucket("rpm:bob", 6, 1, true).await.unwrap(), Ok(()));
        // Empty, the bucket is gone once it would be full again (one a 10 s) plus the
        // margin; a refusal changed nothing.
        let ttl = pttl(&log, log.shared.bucket_key("rpm:alice")).await;
        assert!((50_000..=61_000).contains(&ttl), "{ttl}");
    }

    /// As the gateway's tokens test: a large charge is a debt that refuses new answers
    /// until it drains (501 tokens at 1,000 a minute: 31 s).
    #[tokio::test]
    async fn a_large_amount_is_a_debt_to_wait_out() {
        let server = LocalServer::start().unwrap();
        let log = node(&server);
        assert_eq!(
            log.bucket("tpm:alice", 1_000, 0, true).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            log.bucket("tpm:alice", 1_000, 1_500, false).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            log.bucket("tpm:alice", 1_000, 0, true).await.unwrap(),
            Err(31)
        );
        // A charge goes through whatever the balance.
        assert_eq!(
            log.bucket("tpm:alice", 1_000, 100, false).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            log.bucket("tpm:alice", 1_000, 0, true).await.unwrap(),
            Err(37)
        );
    }

    /// `per_minute` 0 is no limit, answered without Redis (this one is not running).
    #[tokio::test]
    async fn no_limit_asks_nothing_and_bad_ttls_are_refused() {
        let mut server = LocalServer::start().unwrap();
        let log = node(&server);
        server.kill();
        assert_eq!(log.bucket("rpm:alice", 0, 1, true).await.unwrap(), Ok(()));
        assert_eq!(
            log.bucket("tpm:alice", 0, 1_000_000, false).await.unwrap(),
            Ok(())
        );
        assert_eq!(log.bucket("tpm:alice", 60, 0, false).await.unwrap(), Ok(()));
        assert!(log.bucket("rpm:alice", 6, 1, true).await.is_err());
        for refused in [
            log.hold("k", "h", 1, Duration::ZERO).await.map(drop),
            log.refresh_holds(&[("k".into(), "h".into())], Duration::from_micros(10))
                .await,
        ] {
            assert!(matches!(refused, Err(LogError::InvalidArgument(_))));
        }
    }

    /// Two nodes on one Redis spend from the same bucket and count the same holds.
    #[tokio::test]
    async fn two_nodes_share_buckets_and_holds() {
        let server = LocalServer::start().unwrap();
        let (a, b) = (node(&server), node(&server));
        assert_eq!(a.bucket("rpm:alice", 4, 3, false).await.unwrap(), Ok(()));
        assert_eq!(b.bucket("rpm:alice", 4, 1, true).await.unwrap(), Ok(()));
        assert_eq!(a.bucket("rpm:alice", 4, 1, true).await.unwrap(), Err(15));

        let ttl = Duration::from_secs(60);
        assert!(a.hold("readers:alice", "a1", 2, ttl).await.unwrap());
        assert!(b.hold("readers:alice", "b1", 2, ttl).await.unwrap());
        assert!(!a.hold("readers:alice", "a2", 2, ttl).await.unwrap());
        assert_eq!(a.holds("readers:alice").await.unwrap(), 2);
        b.release_hold("readers:alice", "b1").await.unwrap();
        assert!(a.hold("readers:alice", "a2", 2, ttl).await.unwrap());
        assert_eq!(b.holds("readers:alice").await.unwrap(), 2);
    }

    /// Up to the cap, then a release frees a place; a holder asking again keeps its own;
    /// 0 is no limit but still counted; keys are counted apart.
    #[tokio::test]
    async fn holds_stop_at_the_cap_and_a_release_frees_a_place() {
        let server = LocalServer::start().unwrap();
        let log = node(&server);
        let ttl = Duration::from_secs(60);
        assert!(log.hold("streams:alice", "s1", 2, ttl).await.unwrap());
        assert!(log.hold("streams:alice", "s2", 2, ttl).await.unwrap());
        assert!(log.hold("streams:alice", "s2", 2, ttl).await.unwrap());
        assert!(!log.hold("streams:alice", "s3", 2, ttl).await.unwrap());
        assert!(log.hold("streams:bob", "s3", 2, ttl).await.unwrap());
        log.release_hold("streams:alice", "s1").await.unwrap();
        log.release_hold("streams:alice", "s1").await.unwrap();
        assert_eq!(log.holds("streams:alice").await.unwrap(), 1);
        assert!(log.hold("streams:alice", "s3", 2, ttl).await.unwrap());
        for i in 0..5 {
            let holder = format!("r{i}");
            assert!(log.hold("readers:bob", &holder, 0, ttl).await.unwrap());
        }
        assert_eq!(log.holds("readers:bob").await.unwrap(), 5);
        // The set goes a margin after its latest holder.
        let left = pttl(&log, log.shared.hold_key("streams:alice")).await;
        assert!((59_000..=61_000).contains(&left), "{left}");
    }

    /// A hold nobody refreshes lapses (its node died), freeing its place; refreshing
    /// does not bring it back.
    #[tokio::test]
    async fn an_unrefreshed_hold_lapses() {
        let server = LocalServer::start().unwrap();
        let (dead, alive) = (node(&server), node(&server));
        let ttl = Duration::from_millis(200);
        assert!(dead.hold("streams:alice", "d1", 1, ttl).await.unwrap());
        assert!(!alive.hold("streams:alice", "a1", 1, ttl).await.unwrap());
        until_holds(&alive, "streams:alice", 0).await;
        dead.refresh_holds(&[("streams:alice".into(), "d1".into())], ttl)
            .await
            .unwrap();
        assert_eq!(alive.holds("streams:alice").await.unwrap(), 0);
        assert!(alive.hold("streams:alice", "a1", 1, ttl).await.unwrap());
    }

    /// Refreshed more often than its ttl, a hold outlives it many times over; released,
    /// a refresh does not take it again.
    #[tokio::test]
    async fn a_refreshed_hold_stays() {
        let server = LocalServer::start().unwrap();
        let log = node(&server);
        let ttl = Duration::from_millis(300);
        assert!(log.hold("streams:alice", "s1", 1, ttl).await.unwrap());
        assert!(log.hold("readers:alice", "r1", 0, ttl).await.unwrap());
        let held = vec![
            ("streams:alice".to_owned(), "s1".to_owned()),
            ("readers:alice".to_owned(), "r1".to_owned()),
        ];
        let start = Instant::now();
        // The refresh period, as a node's: pacing, not synchronisation.
        let mut every = tokio::time::interval(Duration::from_millis(50));
        while start.elapsed() < ttl * 3 {
            every.tick().await;
            log.refresh_holds(&held, ttl).await.unwrap();
            assert_eq!(log.holds("streams:alice").await.unwrap(), 1);
            assert_eq!(log.holds("readers:alice").await.unwrap(), 1);
        }
        assert!(!log.hold("streams:alice", "s2", 1, ttl).await.unwrap());
        log.release_hold("streams:alice", "s1").await.unwrap();
        log.refresh_holds(&held, ttl).await.unwrap();
        assert_eq!(log.holds("streams:alice").await.unwrap(), 0);
        assert_eq!(log.holds("readers:alice").await.unwrap(), 1);
    }
}
