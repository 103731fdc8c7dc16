// The reconnection delays of unbroken.js: the same rules as crates/client/src/policy.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_POLICY, backoffCeiling, backoffDelay, parseRetryAfter, retryAllowed } from '../unbroken.js';

test('defaults match the Rust client', () => {
  assert.equal(DEFAULT_POLICY.baseDelayMs, 1000);
  assert.equal(DEFAULT_POLICY.factor, 2);
  assert.equal(DEFAULT_POLICY.maxDelayMs, 30000);
  assert.equal(DEFAULT_POLICY.jitter, 1.0);
  assert.equal(DEFAULT_POLICY.maxRetries, 10);
  assert.deepEqual([...DEFAULT_POLICY.retryableStatuses], [408, 429, 500, 502, 503, 504]);
  assert.equal(DEFAULT_POLICY.connectTimeoutMs, 10000);
  assert.equal(DEFAULT_POLICY.idleTimeoutMs, 45000);
});

test('the ceiling grows by the factor, then caps at maxDelayMs', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7].map((n) => backoffCeiling(n, {}, 1000)),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000],
  );
  // The server's retry: replaces the base.
  assert.equal(backoffCeiling(3, {}, 250), 1000);
});

test('the delay is overflow-safe for any attempt and any knob', () => {
  for (const attempt of [0, 1, 64, 1024, 1e9, Number.MAX_SAFE_INTEGER, Infinity, NaN]) {
    for (const unit of [0, 0.5, 0.999999]) {
      const d = backoffDelay(attempt, { unit });
      assert.ok(Number.isFinite(d) && d >= 0 && d <= 30000, `attempt ${attempt}, unit ${unit}: ${d}`);
    }
  }
  const huge = { factor: 1e308, maxDelayMs: 5000, jitter: NaN };
  assert.equal(backoffDelay(50, { policy: huge, unit: 0 }), 5000);
  assert.equal(backoffDelay(3, { policy: { factor: Infinity }, unit: 0 }), 1000, 'a non-finite factor counts as 1 (as in Rust)');
  assert.equal(backoffDelay(3, { policy: { factor: 0.5 }, unit: 0 }), 1000, 'a factor below 1 counts as 1');
  assert.equal(backoffDelay(2000, { policy: { baseDelayMs: 1e308 }, unit: 0 }), 30000);
});

test('full jitter spans [0, ceiling]; no jitter gives the ceiling', () => {
  assert.equal(backoffDelay(3, { unit: 0 }), 4000);
  assert.equal(backoffDelay(3, { unit: 0.5 }), 2000);
  assert.ok(backoffDelay(3, { unit: 0.9999999 }) < 1);
  assert.equal(backoffDelay(3, { unit: 0.7, policy: { jitter: 0 } }), 4000);
  assert.equal(backoffDelay(3, { unit: 1, policy: { jitter: 0.25 } }), 3000, 'jitter 0.25: [0.75c, c]');
  for (let i = 0; i < 2000; i += 1) {
    const d = backoffDelay(4, {});
    assert.ok(d >= 0 && d <= 8000, `${d}`);
  }
});

test('Retry-After is a lower bound, also above maxDelayMs', () => {
  assert.equal(backoffDelay(1, { unit: 0.5, retryAfterMs: 7000 }), 7000);
  assert.equal(backoffDelay(5, { unit: 0, retryAfterMs: 100 }), 16000);
  assert.equal(backoffDelay(1, { unit: 0, retryAfterMs: 120000 }), 120000);
});

test('Retry-After parses seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('7'), 7000);
  assert.equal(parseRetryAfter(' 0 '), 0);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('soon'), null);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
  assert.equal(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now), 0);
});

test('maxRetries counts attempts; null retries forever', () => {
  assert.equal(retryAllowed(10, {}), true);
  assert.equal(retryAllowed(11, {}), false);
  assert.equal(retryAllowed(1e9, { maxRetries: null }), true);
  assert.equal(retryAllowed(1, { maxRetries: 0 }), false);
});
