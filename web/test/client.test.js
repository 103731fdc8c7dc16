// streamChat / resumeChat / subscribe of unbroken.js against a scripted local HTTP server
// (node:http on 127.0.0.1, port 0): resume after a cut, 204, permanent errors, Retry-After.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { streamChat, resumeChat, subscribe } from '../unbroken.js';

const FAST = { baseDelayMs: 5, maxDelayMs: 20, connectTimeoutMs: 2000, idleTimeoutMs: 2000 };

function chunk(id, content, finish = null) {
  const delta = content == null ? {} : { content };
  return `id: ${id}\ndata: ${JSON.stringify({ id: 'chatcmpl-s1', object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
}

const WORDS = ['Hel', 'lo', ' wör', 'ld', ' 🙂', ' again'];
// seq 1..6 words, 7 finish, 8 [DONE]
function eventsAfter(n) {
  let out = '';
  for (let i = n + 1; i <= WORDS.length; i += 1) out += chunk(i, WORDS[i - 1]);
  if (n < 7) out += chunk(7, null, 'stop');
  if (n < 8) out += 'id: 8\ndata: [DONE]\n\n';
  return out;
}

async function server(handler) {
  const log = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      log.push({ method: req.method, url: req.url, headers: req.headers, body });
      handler(req, res, log);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return { url, log, close: () => new Promise((r) => srv.close(r)) };
}

function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k), map: m };
}

const SSE = { 'content-type': 'text/event-stream; charset=utf-8', 'unbroken-stream-id': 's1' };

test('a body cut mid-answer resumes with Last-Event-ID, never re-POSTs', async () => {
  const s = await server((req, res, log) => {
    if (req.method === 'POST') {
      res.writeHead(200, SSE);
      // Cut inside a multi-byte character of event 4 after events 1-3.
      const all = Buffer.from(`retry: 10\n\n${eventsAfter(0)}`);
      const cut = Buffer.from(`retry: 10\n\n${chunk(1, WORDS[0])}${chunk(2, WORDS[1])}${chunk(3, WORDS[2])}`).length + 10;
      // Cut once the partial bytes have been handed to the socket.
      res.write(all.subarray(0, cut), () => res.socket.destroy());
      return;
    }
    const last = Number(req.headers['last-event-id']);
    res.writeHead(200, SSE);
    res.end(eventsAfter(last));
    void log;
  });
  const states = [];
  const tokens = [];
  const storage = memoryStorage();
  const h = streamChat({ url: `${s.url}/v1`, model: 'm', messages: [{ role: 'user', content: 'hi' }], onToken: (t) => tokens.push(t), onState: (x) => states.push(x.state), policy: FAST, storage });
  const r = await h.done;
  assert.equal(r.text, WORDS.join(''));
  assert.equal(tokens.join(''), WORDS.join(''));
  assert.equal(r.finishReason, 'stop');
  assert.equal(r.streamId, 's1');
  assert.equal(s.log.filter((x) => x.method === 'POST').length, 1);
  const post = s.log[0];
  assert.match(post.headers['idempotency-key'], /^[0-9a-f-]{36}$/);
  assert.deepEqual(JSON.parse(post.body), { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
  assert.equal(s.log[1].url, '/v1/streams/s1');
  assert.equal(s.log[1].headers['last-event-id'], '3');
  assert.deepEqual(states, ['connecting', 'streaming', 'reconnecting', 'streaming', 'done']);
  assert.equal(storage.map.size, 0, 'the finished answer leaves nothing in storage');
  await s.close();
});

test('resumeChat picks up a stored answer after a "reload"; 204 ends it', async () => {
  const s = await server((req, res) => {
    if (req.method === 'POST') {
      res.writeHead(200, SSE);
      res.write(chunk(1, WORDS[0]) + chunk(2, WORDS[1]));
      return; // never ends: the "page" goes away
    }
    const last = Number(req.headers['last-event-id'] || 0);
    if (last === 8) {
      res.writeHead(204);
      res.end();
      return;
    }
    res.writeHead(200, SSE);
    res.end(eventsAfter(last));
  });
  const storage = memoryStorage();
  const page = new AbortController();
  const tokens = [];
  const first = streamChat({ url: s.url, model: 'm', messages: [{ role: 'user', content: 'hi' }], onToken: (t, info) => { tokens.push(t); if (info.seq === '2') page.abort(); }, signal: page.signal, policy: FAST, storage });
  const aborted = await first.done;
  assert.equal(aborted.finishReason, 'aborted');
  assert.equal(resumeChat({ storage: memoryStorage() }), null, 'nothing stored: null');
  const again = [];
  const h = resumeChat({ url: s.url, storage, onToken: (t) => again.push(t), policy: FAST });
  assert.equal(h.text, 'Hello');
  const r = await h.done;
  assert.equal(r.text, WORDS.join(''));
  assert.equal(again.join(''), WORDS.slice(2).join(''));
  assert.equal(s.log.filter((x) => x.method === 'POST').length, 1);
  assert.equal(s.log[1].headers['last-event-id'], '2');
  await s.close();
});

test('a retryable status is retried after Retry-After; the same Idempotency-Key is sent', async () => {
  let n = 0;
  const s = await server((req, res) => {
    n += 1;
    if (n === 1) {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '0' });
      res.end('{"error":{"message":"busy","type":"rate_limit_error","code":"busy"}}');
      return;
    }
    res.writeHead(200, SSE);
    res.end(eventsAfter(0));
  });
  const states = [];
  const r = await streamChat({ url: s.url, model: 'm', messages: [{ role: 'user', content: 'x' }], onState: (x) => states.push(x), policy: FAST, storage: null }).done;
  assert.equal(r.text, WORDS.join(''));
  assert.equal(s.log.length, 2);
  assert.equal(s.log[0].headers['idempotency-key'], s.log[1].headers['idempotency-key']);
  const rec = states.find((x) => x.state === 'reconnecting');
  assert.equal(rec.attempt, 1);
  assert.equal(rec.error.status, 429);
  await s.close();
});

test('a non-retryable status or a wrong content type fails at once', async () => {
  const s = await server((req, res) => {
    if (req.url.includes('bad-type') || req.headers['x-case'] === 'type') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<p>hi</p>');
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"message":"the model \\"nope\\" does not exist","type":"invalid_request_error","code":"model_not_found"}}');
  });
  await assert.rejects(
    streamChat({ url: s.url, model: 'nope', messages: [{ role: 'user', content: 'x' }], policy: FAST, storage: null }).done,
    (e) => e.status === 404 && e.code === 'model_not_found' && /does not exist/.test(e.message),
  );
  assert.equal(s.log.length, 1);
  const states = [];
  await assert.rejects(subscribe(`${s.url}/bad-type`, { policy: FAST, onState: (x) => states.push(x.state) }).done, (e) => e.code === 'bad_content_type');
  assert.equal(states.at(-1), 'failed');
  await s.close();
});

test('an error event ends the answer as failed, keeping the partial text', async () => {
  const s = await server((req, res) => {
    res.writeHead(200, SSE);
    res.end(`${chunk(1, 'par')}${chunk(2, 'tial')}id: 3\ndata: {"error":{"message":"upstream broke","type":"upstream_error","code":"upstream_failed"}}\n\n`);
  });
  await assert.rejects(
    streamChat({ url: s.url, model: 'm', messages: [{ role: 'user', content: 'x' }], policy: FAST, storage: null }).done,
    (e) => e.code === 'upstream_failed' && e.partialText === 'partial',
  );
  await s.close();
});

test('cancel() calls the cancel endpoint and stops', async () => {
  const s = await server((req, res) => {
    if (req.url.endsWith('/cancel')) {
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end('{"state":"cancelling"}');
      return;
    }
    res.writeHead(200, SSE);
    res.write(chunk(1, 'a'));
  });
  const states = [];
  let h;
  const first = new Promise((resolve) => {
    h = streamChat({ url: s.url, model: 'm', messages: [{ role: 'user', content: 'x' }], onToken: resolve, onState: (x) => states.push(x.state), policy: FAST, storage: null });
  });
  await first;
  await h.cancel();
  const r = await h.done;
  assert.equal(r.finishReason, 'cancelled');
  assert.equal(r.text, 'a');
  assert.ok(s.log.some((x) => x.method === 'POST' && x.url === '/v1/streams/s1/cancel'));
  assert.equal(states.at(-1), 'cancelled');
  s.close();
});

test('subscribe reconnects after a clean end and stops on 204', async () => {
  const s = await server((req, res) => {
    const last = req.headers['last-event-id'];
    if (!last) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('retry: 1\nid: 1\nevent: tick\ndata: one\n\n');
    } else if (last === '1') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('id: 2\nevent: tick\ndata: two\n\n');
    } else {
      res.writeHead(204);
      res.end();
    }
  });
  const events = [];
  const r = await subscribe(`${s.url}/topic`, { onEvent: (e) => events.push(`${e.type}:${e.data}:${e.lastEventId}`), policy: FAST, apiKey: 'k' }).done;
  assert.deepEqual(events, ['tick:one:1', 'tick:two:2']);
  assert.equal(r.lastEventId, '2');
  assert.equal(s.log[0].headers.authorization, 'Bearer k');
  assert.equal(s.log.length, 3);
  await s.close();
});
