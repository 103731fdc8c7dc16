// The SSE decoder of unbroken.js against the web-platform-tests vectors in fixtures/:
// each input is fed whole, byte by byte, and split in two at every byte position.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { SseParser, isEventStreamContentType, lastEventIdHeader } from '../unbroken.js';

const vectors = JSON.parse(readFileSync(new URL('./fixtures/wpt_sse_vectors.json', import.meta.url), 'utf8'));

function run(vector, chunks) {
  const events = [];
  const parser = new SseParser({
    lastEventId: vector.initial_last_event_id ?? '',
    onEvent: (e) => events.push(e),
  });
  for (const chunk of chunks) parser.feed(chunk);
  parser.end();
  return { events, parser };
}

function check(vector, chunks, how) {
  const { events, parser } = run(vector, chunks);
  assert.deepEqual(events, vector.expected, `${vector.name} (${how}): events`);
  if ('expected_retry_ms' in vector) {
    assert.equal(parser.retry, vector.expected_retry_ms, `${vector.name} (${how}): retry`);
  }
  if ('expected_reconnect_last_event_id' in vector) {
    assert.equal(parser.lastEventId, vector.expected_reconnect_last_event_id ?? '', `${vector.name} (${how}): last event id`);
  }
}

test('the fixture holds the 40 vectors', () => {
  assert.equal(vectors.length, 40);
});

for (const vector of vectors) {
  const bytes = Uint8Array.from(Buffer.from(vector.input_hex, 'hex'));
  test(`wpt vector: ${vector.name}`, () => {
    if (vector.expect_connection_failure) {
      // The reader refuses the response before parsing anything.
      assert.equal(isEventStreamContentType(vector.content_type), false, 'content type must be refused');
      return;
    }
    assert.equal(isEventStreamContentType(vector.content_type), true, 'content type must be accepted');
    if (vector.chunking !== 'byte-by-byte') check(vector, [bytes], 'whole');
    check(vector, Array.from(bytes, (b) => Uint8Array.of(b)), 'byte by byte');
    for (let i = 0; i <= bytes.length; i += 1) {
      check(vector, [bytes.subarray(0, i), bytes.subarray(i)], `split at ${i}`);
    }
  });
}

test('a non-ASCII last event id is sent as its UTF-8 bytes', () => {
  assert.equal(lastEventIdHeader('42'), '42');
  assert.equal(lastEventIdHeader('\u2026'), '\xe2\x80\xa6');
});

test('decoded text can be fed too, split at every position', () => {
  const text = '\ufeffretry: 5\r\nid: 7\r\ndata: a\r\ndata:  b\r\rdata\n\n:c\nevent: x\ndata: y\n\ndata: z';
  const want = [
    { type: 'message', data: 'a\n b', lastEventId: '7' },
    { type: 'message', data: '', lastEventId: '7' },
    { type: 'x', data: 'y', lastEventId: '7' },
  ];
  for (let i = 0; i <= text.length; i += 1) {
    const events = [];
    const p = new SseParser({ onEvent: (e) => events.push(e) });
    p.feed(text.slice(0, i));
    p.feed(text.slice(i));
    p.end();
    assert.deepEqual(events, want, `split at ${i}`);
    assert.equal(p.retry, 5);
  }
});

test('an id-only block updates the last event id without an event', () => {
  const events = [];
  const p = new SseParser({ onEvent: (e) => events.push(e) });
  p.feed('id: 9\n\n');
  assert.deepEqual(events, []);
  assert.equal(p.lastEventId, '9');
});
