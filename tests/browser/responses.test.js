// The official `openai` Node SDK's Responses API against the gateway, only `baseURL`
// changed: the Node side of tests/e2e/test_responses.py. No browser: the SDK is the client.
//
// `sim` answers 160 words 25 ms apart (SIM_CONFIG in harness.js), long enough to break a
// stream off mid-answer. The simulator never calls tools, so the function-calling round
// trip is covered by the Python tests only (`claude-tools` in tests/e2e/sim.toml).
//
// Run: scripts/browser-test   (or: node --test tests/browser/ with target/debug/unbroken built)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { gateway } from './harness.js';

const WORDS = 160; // `tokens` in SIM_CONFIG
const TERMINAL = ['response.completed', 'response.incomplete', 'response.failed'];

let gw;
let client;

before(async () => {
  gw = await gateway();
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30000 });
});

after(async () => {
  await gw?.stop();
});

const words = (text) => text.split(/\s+/).filter(Boolean).length;

/** The text of a raw stream's deltas (raw events carry no `output_text`). */
const deltaText = (events) =>
  events
    .filter((e) => e.type === 'response.output_text.delta')
    .map((e) => e.delta)
    .join('');

/** Every event of `stream`, checking that each number follows the one before `first`. */
async function collect(stream, first = 0) {
  const events = [];
  for await (const event of stream) {
    assert.equal(event.sequence_number, first + events.length, 'none lost, none repeated');
    events.push(event);
  }
  return events;
}

describe('openai Node SDK, Responses API', { timeout: 60000 }, () => {
  test('a background stream broken off resumes with starting_after', async () => {
    const first = await client.responses.create({ model: 'sim', input: 'Count.', stream: true, background: true });
    const before = [];
    let deltas = 0;
    for await (const event of first) {
      assert.equal(event.sequence_number, before.length);
      before.push(event);
      if (event.type === 'response.output_text.delta' && ++deltas === 3) break; // aborts the request
    }
    const created = before[0];
    assert.equal(created.type, 'response.created');
    assert.equal(created.response.background, true);
    const id = created.response.id;
    const last = before.at(-1).sequence_number;

    const rest = await collect(await client.responses.retrieve(id, { stream: true, starting_after: last }), last + 1);
    assert.ok(rest.length > 0);
    const terminal = rest.at(-1);
    assert.equal(terminal.type, 'response.completed');
    assert.deepEqual(
      rest.filter((e) => TERMINAL.includes(e.type)),
      [terminal],
    );

    const text = deltaText([...before, ...rest]);
    assert.equal(words(text), WORDS, 'the whole answer, once');
    const final = await client.responses.retrieve(id);
    assert.equal(final.status, 'completed');
    assert.equal(final.output_text, text);

    // A replay from the start is the same events with the same numbers.
    const replay = await collect(await client.responses.retrieve(id, { stream: true }));
    assert.deepEqual(replay, [...before, ...rest]);
  });

  test('the stream helper follows a response by id after starting_after', async () => {
    const queued = await client.responses.create({ model: 'sim', input: 'Count.', background: true });
    assert.ok(['queued', 'in_progress'].includes(queued.status), queued.status);

    // The helper asks for the whole stream (it needs response.created) and drops the
    // events up to `starting_after` itself.
    const helper = client.responses.stream({ response_id: queued.id, starting_after: 3 });
    let snapshot;
    helper.on('response.output_text.delta', (delta) => {
      snapshot = delta.snapshot;
    });
    const events = await collect(helper, 4);
    assert.ok(events.some((e) => e.type === 'response.output_text.delta'));
    const final = await helper.finalResponse();
    assert.equal(final.status, 'completed');
    assert.equal(snapshot, final.output_text, "the helper's accumulated text");
    assert.equal(words(final.output_text), WORDS);
    assert.equal((await client.responses.retrieve(queued.id)).output_text, final.output_text);
  });

  test('cancel stops the answer and is idempotent', async () => {
    const first = await client.responses.create({ model: 'sim', input: 'Count.', stream: true, background: true });
    const events = [];
    let cancelled;
    for await (const event of first) {
      assert.equal(event.sequence_number, events.length);
      events.push(event);
      if (event.type === 'response.output_text.delta' && !cancelled) {
        cancelled = await client.responses.cancel(events[0].response.id); // the stream goes on to its end
      }
    }
    assert.equal(cancelled.status, 'cancelled');
    // Neither SDK knows a `response.cancelled` event: followers see `response.failed`.
    const terminal = events.at(-1);
    assert.equal(terminal.type, 'response.failed');
    assert.equal(terminal.response.status, 'cancelled');
    const text = deltaText(events);
    assert.ok(words(text) < WORDS, 'stopped before the end');
    assert.equal(cancelled.output_text, text, 'the object holds what the stream delivered');

    const id = cancelled.id;
    assert.equal((await client.responses.cancel(id)).status, 'cancelled');
    const again = await client.responses.retrieve(id);
    assert.equal(again.status, 'cancelled');
    assert.equal(again.output_text, text);
  });

  test('previous_response_id continues the conversation', async () => {
    const first = await client.responses.create({ model: 'sim', input: 'Tell me something.' });
    assert.equal(first.status, 'completed');
    const second = await client.responses.create({ model: 'sim', input: 'And more?', previous_response_id: first.id });
    assert.equal(second.status, 'completed');
    assert.equal(second.previous_response_id, first.id);
    // The simulator counts the prompt's words: the first turn and its answer came along.
    assert.equal(second.usage.input_tokens, first.usage.input_tokens + first.usage.output_tokens + words('And more?'));

    await assert.rejects(
      client.responses.create({ model: 'sim', input: '?', previous_response_id: 'resp_nothing' }),
      OpenAI.NotFoundError,
    );
  });
});
