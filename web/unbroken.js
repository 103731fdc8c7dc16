// unbroken.js — the browser client of the unbroken gateway. An ES module, no build step:
//
//   import { streamChat, resumeChat, subscribe } from '/sdk/unbroken.js';
//
// # Layout
// - `SseParser` (in sse.js, re-exported here): the WHATWG "event stream interpretation" rules, fed bytes or text in any
//   chunking (CR / LF / CRLF line ends, also split across chunks; one leading BOM; comments;
//   a field without a colon; one leading space stripped; `id` containing NUL ignored;
//   `retry` digits only; an incomplete event at end of stream discarded).
// - `DEFAULT_POLICY`, `backoffDelay`, `parseRetryAfter`: when to reconnect — the same knobs
//   as the Rust client (`crates/client/src/policy.rs`): full jitter over
//   `min(maxDelay, base · factor^(n-1))`, the server's `retry:` replaces `base`,
//   `Retry-After` is a lower bound.
// - `subscribe`: a resumable SSE GET reader over `fetch` (so it can send `Authorization`),
//   reconnecting with `Last-Event-ID`; a 204 means "nothing more", stop.
// - `streamChat` / `resumeChat`: an OpenAI chat completion streamed through the gateway,
//   POSTed once with an `Idempotency-Key`, resumed through `GET /v1/streams/{id}` after a
//   network error, a dropped body, a stalled connection in a tab that becomes visible
//   again, or a page reload (the in-flight answer is kept in sessionStorage).

import { SseParser, isEventStreamContentType, lastEventIdHeader } from './sse.js';

export { SseParser, isEventStreamContentType, lastEventIdHeader };

/** Reconnection policy defaults (milliseconds). `maxRetries: null` retries forever. */
export const DEFAULT_POLICY = Object.freeze({
  baseDelayMs: 1000,
  factor: 2,
  maxDelayMs: 30000,
  jitter: 1.0,
  maxRetries: 10,
  retryableStatuses: Object.freeze([408, 429, 500, 502, 503, 504]),
  connectTimeoutMs: 10000,
  idleTimeoutMs: 45000,
  // A tab that becomes visible again reconnects when nothing arrived for this long.
  visibleStallMs: 5000,
});

/** The storage key prefix of everything this module keeps in sessionStorage. */
export const STORAGE_PREFIX = 'unbroken:';
const INFLIGHT_KEY = `${STORAGE_PREFIX}inflight`;

// ---------------------------------------------------------------------------------------
// Backoff

/** The policy with defaults filled in. */
export function resolvePolicy(policy) {
  return { ...DEFAULT_POLICY, ...(policy || {}) };
}

/**
 * The undrawn upper bound of the delay before retry `attempt` (1-based):
 * `min(maxDelayMs, base · factor^(attempt-1))`, saturating (never NaN or Infinity).
 */
export function backoffCeiling(attempt, policy, baseMs) {
  const p = resolvePolicy(policy);
  const max = Number.isFinite(p.maxDelayMs) && p.maxDelayMs >= 0 ? p.maxDelayMs : DEFAULT_POLICY.maxDelayMs;
  const base = Number.isFinite(baseMs) && baseMs >= 0 ? baseMs : p.baseDelayMs;
  const factor = Number.isFinite(p.factor) && p.factor >= 1 ? p.factor : 1;
  const exponent = Math.max(0, Math.min(Number.isFinite(attempt) ? attempt - 1 : 0, 1e6));
  const raw = base * factor ** exponent;
  return Number.isFinite(raw) && raw < max ? raw : max;
}

/**
 * The delay before retry `attempt` (1-based), given a uniform random `unit` in [0, 1) and
 * the server's Retry-After in ms (a lower bound), if any. Full jitter by default: uniform
 * over [ceiling · (1 - jitter), ceiling].
 */
export function backoffDelay(attempt, { policy, baseMs, unit = Math.random(), retryAfterMs = null } = {}) {
  const p = resolvePolicy(policy);
  const ceiling = backoffCeiling(attempt, p, baseMs ?? p.baseDelayMs);
  const jitter = Math.min(1, Math.max(0, Number.isFinite(p.jitter) ? p.jitter : 1));
  const u = Math.min(1, Math.max(0, Number.isFinite(unit) ? unit : 0));
  const drawn = Math.min(ceiling, ceiling * (1 - jitter * u));
  if (retryAfterMs != null && Number.isFinite(retryAfterMs) && retryAfterMs > drawn) return retryAfterMs;
  return drawn;
}

/** A Retry-After header (delay-seconds or an HTTP date) in ms, or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return null;
  const v = String(value).trim();
  if (/^[0-9]+$/.test(v)) return Number.parseInt(v, 10) * 1000;
  const date = Date.parse(v);
  if (Number.isNaN(date)) return null;
  return Math.max(0, date - now);
}

/** Whether retry number `attempt` (1-based) is allowed. */
export function retryAllowed(attempt, policy) {
  const p = resolvePolicy(policy);
  return p.maxRetries == null || attempt <= p.maxRetries;
}

// ---------------------------------------------------------------------------------------
// Errors

/** An error from the gateway or the connection; `retryable` says whether it is transient. */
export class UnbrokenError extends Error {
  constructor(message, { status = null, code = null, type = null, retryAfterMs = null, retryable = false, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'UnbrokenError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.retryAfterMs = retryAfterMs;
    this.retryable = retryable;
  }
}

async function errorFromResponse(response, policy) {
  let message = `HTTP ${response.status}`;
  let code = null;
  let type = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
      type = body.error.type || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new UnbrokenError(message, {
    status: response.status,
    code,
    type,
    retryAfterMs: parseRetryAfter(response.headers.get('retry-after')),
    retryable: policy.retryableStatuses.includes(response.status),
  });
}

function abortError(message = 'aborted') {
  const e = new Error(message);
  e.name = 'AbortError';
  return e;
}

// ---------------------------------------------------------------------------------------
// The resumable reader shared by subscribe() and streamChat()

function sleep(ms, signal, wake) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(abortError());
      return;
    }
    const done = () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', onAbort);
      wake.delete(done);
      resolve();
    };
    const onAbort = () => {
      clearTimeout(timer);
      wake.delete(done);
      reject(abortError());
    };
    const timer = setTimeout(done, ms);
    wake.add(done);
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
  });
}

const STOP = Symbol('stop');

/**
 * The reconnect loop. `request(lastEventId)` builds each attempt's `{url, method, headers,
 * body}`; `onResponse(response)` sees every accepted response; `onEvent(event)` returns STOP
 * to end the stream (e.g. on `[DONE]`); `onEof()` returns STOP when a body that simply ended
 * is complete. Resolves `{ exhausted }` (204), or STOP's reason; rejects on a permanent
 * error, on running out of retries, or with an AbortError when `signal` aborts.
 */
async function runResumable({ request, onResponse, onEvent, onEof, onState, policy: rawPolicy, signal, lastEventId = '' }) {
  const policy = resolvePolicy(rawPolicy);
  const emit = (s) => {
    try {
      if (onState) onState(s);
    } catch (e) {
      console.error(e);
    }
  };
  let last = lastEventId;
  let failures = 0;
  let serverRetry = null;
  const wake = new Set();
  let current = null; // { controller, lastByteAt }
  const cleanups = [];

  // Skip the wait when the network is back; reconnect a stalled stream when the tab shows.
  if (typeof window !== 'undefined' && window.addEventListener) {
    const onOnline = () => [...wake].forEach((f) => f());
    window.addEventListener('online', onOnline);
    cleanups.push(() => window.removeEventListener('online', onOnline));
  }
  if (typeof document !== 'undefined' && document.addEventListener) {
    const onVisible = () => {
      if (document.visibilityState !== 'visible') return;
      [...wake].forEach((f) => f());
      if (current && Date.now() - current.lastByteAt > policy.visibleStallMs) {
        current.controller.abort(new UnbrokenError('the connection stalled while the tab was hidden', { retryable: true }));
      }
    };
    document.addEventListener('visibilitychange', onVisible);
    cleanups.push(() => document.removeEventListener('visibilitychange', onVisible));
  }

  const lost = async (error) => {
    failures += 1;
    if (!retryAllowed(failures, policy)) {
      const e = new UnbrokenError(`gave up after ${failures - 1} retries: ${error.message}`, {
        status: error.status ?? null,
        code: error.code ?? 'retries_exhausted',
        type: error.type ?? null,
        retryAfterMs: error.retryAfterMs ?? null,
        cause: error,
      });
      throw e;
    }
    const delayMs = Math.round(
      backoffDelay(failures, { policy, baseMs: serverRetry ?? policy.baseDelayMs, retryAfterMs: error.retryAfterMs ?? null }),
    );
    emit({ state: 'reconnecting', attempt: failures, delayMs, error });
    await sleep(delayMs, signal, wake);
  };

  try {
    emit({ state: 'connecting' });
    for (;;) {
      if (signal && signal.aborted) throw abortError();
      const req = request(last);
      const controller = new AbortController();
      const onOuterAbort = () => controller.abort(abortError());
      if (signal) signal.addEventListener('abort', onOuterAbort, { once: true });
      current = { controller, lastByteAt: Date.now() };
      let timer = setTimeout(
        () => controller.abort(new UnbrokenError(`no response within ${policy.connectTimeoutMs} ms`, { retryable: true })),
        policy.connectTimeoutMs,
      );
      const reason = () => controller.signal.reason;
      try {
        let response;
        try {
          const headers = { Accept: 'text/event-stream', ...(req.headers || {}) };
          if (last !== '') headers['Last-Event-ID'] = lastEventIdHeader(last);
          response = await fetch(req.url, {
            method: req.method || 'GET',
            headers,
            body: req.body,
            cache: 'no-store',
            signal: controller.signal,
          });
        } catch (e) {
          if (signal && signal.aborted) throw abortError();
          const r = reason();
          await lost(r instanceof UnbrokenError ? r : new UnbrokenError(`network error: ${e.message}`, { retryable: true, cause: e }));
          continue;
        }
        clearTimeout(timer);
        if (response.status === 204) {
          return { exhausted: true };
        }
        if (response.status !== 200) {
          const error = await errorFromResponse(response, policy);
          if (!error.retryable) throw error;
          await lost(error);
          continue;
        }
        const contentType = response.headers.get('content-type');
        if (!isEventStreamContentType(contentType)) {
          try {
            await response.body?.cancel();
          } catch {
            // ignore
          }
          throw new UnbrokenError(`expected text/event-stream, got ${contentType || 'no content type'}`, {
            status: 200,
            code: 'bad_content_type',
          });
        }
        if (onResponse) onResponse(response);
        emit({ state: 'streaming' });

        let stop = null;
        const parser = new SseParser({
          lastEventId: last,
          onRetry: (ms) => {
            serverRetry = ms;
          },
          onEvent: (event) => {
            if (stop) return;
            last = parser.lastEventId;
            failures = 0;
            const r = onEvent(event);
            if (r && r[STOP]) stop = r;
          },
        });
        const reader = response.body.getReader();
        const arm = () => {
          clearTimeout(timer);
          if (policy.idleTimeoutMs != null) {
            timer = setTimeout(
              () => controller.abort(new UnbrokenError(`nothing received for ${policy.idleTimeoutMs} ms`, { retryable: true })),
              policy.idleTimeoutMs,
            );
          }
        };
        arm();
        let ended = false;
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) {
              ended = true;
              break;
            }
            current.lastByteAt = Date.now();
            arm();
            parser.feed(value);
            if (stop) break;
          }
        } catch (e) {
          if (signal && signal.aborted) throw abortError();
          last = parser.lastEventId;
          const r = reason();
          await lost(r instanceof UnbrokenError ? r : new UnbrokenError(`connection lost: ${e.message}`, { retryable: true, cause: e }));
          continue;
        }
        if (stop) {
          controller.abort(abortError('done'));
          return stop;
        }
        if (ended) {
          parser.end();
          last = parser.lastEventId;
          const r = onEof ? onEof() : null;
          if (r && r[STOP]) return r;
          await lost(new UnbrokenError('the server closed the stream early', { retryable: true }));
        }
      } finally {
        clearTimeout(timer);
        if (signal) signal.removeEventListener('abort', onOuterAbort);
        current = null;
      }
    }
  } finally {
    cleanups.forEach((f) => f());
  }
}

function stopWith(value) {
  return { [STOP]: true, value };
}

function authHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

/**
 * Read a resumable SSE stream with GET, reconnecting with `Last-Event-ID` per `policy`
 * until the server answers 204 (nothing more), `close()` is called or `signal` aborts.
 *
 * @returns {{ done: Promise<{lastEventId: string}>, close(): void, readonly lastEventId: string }}
 */
export function subscribe(url, { onEvent, onState, apiKey, policy, signal, lastEventId = '' } = {}) {
  const controller = new AbortController();
  if (signal) {
    if (signal.aborted) controller.abort();
    else signal.addEventListener('abort', () => controller.abort(), { once: true });
  }
  let last = lastEventId;
  const done = runResumable({
    request: () => ({ url, method: 'GET', headers: authHeaders(apiKey) }),
    onEvent: (event) => {
      last = event.lastEventId;
      if (onEvent) onEvent(event);
    },
    onState,
    policy,
    signal: controller.signal,
    lastEventId,
  }).then(
    () => {
      if (onState) onState({ state: 'done' });
      return { lastEventId: last };
    },
    (error) => {
      if (error && error.name === 'AbortError') {
        if (onState) onState({ state: 'cancelled' });
        return { lastEventId: last, cancelled: true };
      }
      if (onState) onState({ state: 'failed', error });
      throw error;
    },
  );
  return {
    done,
    close: () => controller.abort(),
    get lastEventId() {
      return last;
    },
  };
}

// ---------------------------------------------------------------------------------------
// Chat

function gatewayBase(url) {
  let base = (url || '').replace(/\/+$/, '');
  base = base.replace(/\/v1\/chat\/completions$/, '').replace(/\/v1$/, '');
  return base;
}

function defaultStorage() {
  try {
    return typeof sessionStorage !== 'undefined' ? sessionStorage : null;
  } catch {
    return null; // storage disabled
  }
}

function newKey() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function readRecord(storage, key) {
  if (!storage) return null;
  try {
    const raw = storage.getItem(key);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

function writeRecord(storage, key, record) {
  if (!storage) return;
  try {
    storage.setItem(key, JSON.stringify(record));
  } catch {
    // quota or disabled storage: the answer still streams, it just won't survive a reload
  }
}

function removeRecord(storage, key) {
  if (!storage) return;
  try {
    storage.removeItem(key);
  } catch {
    // ignore
  }
}

/**
 * Stream one chat answer. The POST carries an `Idempotency-Key`; after a connection loss the
 * answer is resumed from `GET /v1/streams/{id}` with `Last-Event-ID` (never asked again),
 * and the in-flight answer is kept in `storage` (sessionStorage) for `resumeChat` after a
 * page reload.
 *
 * @param {object} o
 * @param {string} [o.url] the gateway's base URL ('' = this origin; a trailing /v1 is fine)
 * @param {string} o.model
 * @param {Array<{role: string, content: string}>} o.messages
 * @param {string} [o.apiKey]
 * @param {(token: string, info: {text: string, seq: string}) => void} [o.onToken]
 * @param {(state: object) => void} [o.onState]
 * @param {AbortSignal} [o.signal] abort locally (the answer keeps generating on the server)
 * @param {object} [o.policy] see DEFAULT_POLICY
 * @param {Storage|null} [o.storage] defaults to sessionStorage
 * @param {string} [o.storageKey] defaults to 'unbroken:inflight'
 * @param {object} [o.extra] extra fields for the request body (temperature, max_tokens…)
 * @returns {{done: Promise<{text: string, finishReason: string|null, usage: object|null, streamId: string|null}>, cancel(): Promise<void>, readonly streamId: string|null}}
 */
export function streamChat({ url = '', model, messages, apiKey, onToken, onState, signal, policy, storage, storageKey = INFLIGHT_KEY, extra } = {}) {
  const record = {
    v: 1,
    url: url || '',
    model,
    messages,
    idempotencyKey: newKey(),
    streamId: null,
    lastEventId: '',
    text: '',
    startedAt: Date.now(),
  };
  return runChat(record, { apiKey, onToken, onState, signal, policy, storage, storageKey, extra });
}

/**
 * Pick up the in-flight answer kept by `streamChat` in this tab's sessionStorage (after a
 * page reload), or return null when there is none. The handle also carries what had already
 * arrived: `text`, `model`, `messages`, `streamId`. `onToken` sees only new tokens.
 */
export function resumeChat({ url, apiKey, onToken, onState, signal, policy, storage, storageKey = INFLIGHT_KEY } = {}) {
  const store = storage === undefined ? defaultStorage() : storage;
  const record = readRecord(store, storageKey);
  if (!record || record.v !== 1 || !record.idempotencyKey || !Array.isArray(record.messages)) return null;
  if (url !== undefined && url !== null) record.url = url;
  return runChat(record, { apiKey, onToken, onState, signal, policy, storage: store, storageKey, extra: record.extra });
}

/** The in-flight answer kept in storage, if any (without resuming it). */
export function pendingChat({ storage, storageKey = INFLIGHT_KEY } = {}) {
  return readRecord(storage === undefined ? defaultStorage() : storage, storageKey);
}

function runChat(record, { apiKey, onToken, onState, signal, policy, storage, storageKey, extra }) {
  const store = storage === undefined ? defaultStorage() : storage;
  const base = gatewayBase(record.url);
  if (extra) record.extra = extra;
  const controller = new AbortController();
  if (signal) {
    if (signal.aborted) controller.abort();
    else signal.addEventListener('abort', () => controller.abort(), { once: true });
  }
  let finishReason = record.finishReason ?? null;
  let usage = record.usage ?? null;
  let cancelRequested = false;
  let cancelPromise = null;
  let settled = false;
  const emit = (s) => {
    if (onState) {
      try {
        onState(s);
      } catch (e) {
        console.error(e);
      }
    }
  };
  const save = () => writeRecord(store, storageKey, record);
  save();

  const sendCancel = () => {
    if (!cancelPromise) {
      cancelPromise = fetch(`${base}/v1/streams/${encodeURIComponent(record.streamId)}/cancel`, {
        method: 'POST',
        headers: authHeaders(apiKey),
        signal: AbortSignal.timeout ? AbortSignal.timeout(10000) : undefined,
      })
        .then((r) => r.body?.cancel?.())
        .catch(() => {});
    }
    return cancelPromise;
  };

  const request = (last) => {
    if (record.streamId) {
      return { url: `${base}/v1/streams/${encodeURIComponent(record.streamId)}`, method: 'GET', headers: authHeaders(apiKey) };
    }
    // Not attached yet: (re)send the POST; the same key attaches to the stream it started.
    void last;
    return {
      url: `${base}/v1/chat/completions`,
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': record.idempotencyKey, ...authHeaders(apiKey) },
      // The usage chunk (after the finish, `choices: []`) comes only when asked for.
      body: JSON.stringify({
        ...(record.extra || {}),
        model: record.model,
        messages: record.messages,
        stream: true,
        stream_options: { ...(record.extra?.stream_options || {}), include_usage: true },
      }),
    };
  };

  const onResponse = (response) => {
    const id = response.headers.get('unbroken-stream-id');
    if (id && !record.streamId) {
      record.streamId = id;
      save();
    }
    if (cancelRequested && record.streamId) {
      sendCancel();
      controller.abort();
    }
  };

  const onEvent = (event) => {
    if (event.type !== 'message') return undefined;
    const data = event.data;
    if (data === '[DONE]') {
      record.lastEventId = event.lastEventId;
      return stopWith({ kind: 'done' });
    }
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      return undefined; // not ours to judge: skip
    }
    if (chunk && chunk.error) {
      record.lastEventId = event.lastEventId;
      return stopWith({ kind: 'error', error: chunk.error });
    }
    if (!record.streamId && typeof chunk.id === 'string' && chunk.id.startsWith('chatcmpl-')) {
      record.streamId = chunk.id.slice('chatcmpl-'.length);
    }
    let token = '';
    const choice = chunk.choices && chunk.choices[0];
    if (choice) {
      if (choice.delta && typeof choice.delta.content === 'string') token = choice.delta.content;
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
    record.text += token;
    record.finishReason = finishReason;
    record.usage = usage;
    record.lastEventId = event.lastEventId;
    save(); // one write: text and position stay consistent across a reload
    if (token && onToken) {
      try {
        onToken(token, { text: record.text, seq: event.lastEventId });
      } catch (e) {
        console.error(e);
      }
    }
    return undefined;
  };

  const result = () => ({ text: record.text, finishReason, usage, streamId: record.streamId });

  const done = runResumable({
    request,
    onResponse,
    onEvent,
    onEof: () => undefined, // a body without [DONE] or an error event was cut: resume
    onState: (s) => {
      if (s.state === 'connecting' && (record.streamId || record.lastEventId !== '')) emit({ state: 'connecting', resumed: true });
      else emit(s);
    },
    policy,
    signal: controller.signal,
    lastEventId: record.lastEventId,
  }).then(
    (outcome) => {
      settled = true;
      removeRecord(store, storageKey);
      const v = outcome && outcome.value;
      if (v && v.kind === 'error') {
        if (v.error.code === 'cancelled') {
          finishReason = 'cancelled';
          emit({ state: 'cancelled' });
          return result();
        }
        const error = new UnbrokenError(v.error.message || 'the answer failed', {
          code: v.error.code || null,
          type: v.error.type || null,
        });
        error.partialText = record.text;
        error.streamId = record.streamId;
        emit({ state: 'failed', error });
        throw error;
      }
      // [DONE], or 204: the server has nothing more for us (we already had the end).
      emit({ state: 'done' });
      return result();
    },
    (error) => {
      settled = true;
      if (error && error.name === 'AbortError') {
        if (cancelRequested) {
          removeRecord(store, storageKey);
          finishReason = 'cancelled';
          emit({ state: 'cancelled' });
          return result();
        }
        // A local abort: the record stays, so a later resumeChat can still pick it up.
        emit({ state: 'cancelled' });
        return { ...result(), finishReason: 'aborted' };
      }
      removeRecord(store, storageKey);
      if (error instanceof UnbrokenError) {
        error.partialText = record.text;
        error.streamId = record.streamId;
      }
      emit({ state: 'failed', error });
      throw error;
    },
  );

  return {
    done,
    /** Stop the answer on the server and stop reading. */
    cancel: async () => {
      if (settled) return;
      cancelRequested = true;
      if (record.streamId) {
        await sendCancel();
        controller.abort();
      }
      // else: onResponse cancels as soon as the stream id is known; give up waiting after
      // the connect timeout (the server stops an unread answer after its reader grace).
      else setTimeout(() => controller.abort(), resolvePolicy(policy).connectTimeoutMs);
      await done.catch(() => {});
    },
    get streamId() {
      return record.streamId;
    },
    text: record.text,
    model: record.model,
    messages: record.messages,
  };
}
