// The web UI in a real Chromium against a real gateway (simulator model). Scenarios run in
// order in one file: they share the gateway, whose upstream-request counter they check.
//
// Run: scripts/browser-test   (or: node --test tests/browser/ with target/debug/unbroken built)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  RECORD_CONN_STATES,
  ROOT_DIR,
  browser,
  cuttableProxy,
  gateway,
  streamStatus,
  streamText,
  upstreamRequests,
} from './harness.js';

const TIMEOUT = 20000;
const SHOTS = process.env.UNBROKEN_SCREENSHOTS ? path.join(ROOT_DIR, 'docs/screenshots') : null;

let gw;
let chrome;

before(async () => {
  gw = await gateway();
  chrome = await browser();
  if (SHOTS) await mkdir(SHOTS, { recursive: true });
});

after(async () => {
  await chrome?.close();
  await gw?.stop();
});

async function openChat(url, page) {
  const p = page || (await chrome.context.newPage());
  p.setDefaultTimeout(TIMEOUT);
  await p.addInitScript(RECORD_CONN_STATES);
  await p.goto(`${url}/`);
  await p.waitForSelector('body[data-ready="true"]');
  return p;
}

async function ask(page, text) {
  const input = page.getByTestId('composer-input');
  await input.fill(text);
  await input.press('Enter');
  await page.waitForSelector('[data-testid="assistant-message"]:last-child');
}

const lastAnswer = (page) => page.locator('[data-testid="assistant-message"]').last();

async function answerState(page, state) {
  await page.waitForFunction((s) => {
    const all = document.querySelectorAll('[data-testid="assistant-message"]');
    return all.length > 0 && all[all.length - 1].dataset.state === s;
  }, state);
}

async function answerLongerThan(page, chars) {
  await page.waitForFunction((n) => {
    const all = document.querySelectorAll('[data-testid="assistant-message"] [data-testid="message-text"]');
    return all.length > 0 && all[all.length - 1].textContent.length > n;
  }, chars);
}

async function finishedAnswer(page) {
  await answerState(page, 'done');
  const el = lastAnswer(page);
  return { text: await el.getByTestId('message-text').textContent(), streamId: await el.getAttribute('data-stream-id') };
}

describe('web chat', { timeout: 110000 }, () => {
  test('the model picker lists the gateway models', async () => {
    const page = await openChat(gw.url);
    const options = await page.getByTestId('model-select').locator('option').allTextContents();
    assert.deepEqual(options, ['sim']);
    await page.close();
  });

  test('(1) a question gets the streamed answer the gateway holds', async () => {
    const before = await upstreamRequests(gw.url);
    const page = await openChat(gw.url);
    await ask(page, 'Tell me about streams.');
    await answerLongerThan(page, 20);
    assert.equal(await page.getByTestId('conn-state').getAttribute('data-state'), 'streaming');
    assert.equal(await page.getByTestId('stop-button').isVisible(), true);
    if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'desktop-streaming.png') });
    const { text, streamId } = await finishedAnswer(page);
    assert.ok(streamId, 'the answer names its stream');
    assert.ok(text.length > 100, `a full answer: ${text.length} chars`);
    assert.equal(text, await streamText(gw.url, streamId));
    assert.equal(await upstreamRequests(gw.url), before + 1);
    assert.equal(await page.getByTestId('user-message').count(), 1);
    assert.match(await page.getByTestId('stat-ttft').textContent(), /^\d+ ms$/);
    assert.match(await page.getByTestId('stat-rate').textContent(), /^\d+(\.\d)?$/);
    assert.equal(await page.getByTestId('send-button').isVisible(), true);
    if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'desktop-completed.png') });

    // A follow-up sends the whole conversation and gets a second answer.
    await ask(page, 'And then?');
    const second = await finishedAnswer(page);
    assert.equal(second.text, await streamText(gw.url, second.streamId));
    assert.equal(await page.getByTestId('assistant-message').count(), 2);
    assert.equal(await upstreamRequests(gw.url), before + 2);
    await page.close();
  });

  test('(2) a reload mid-answer continues it: no duplicate, no second upstream request', async () => {
    const before = await upstreamRequests(gw.url);
    const page = await openChat(gw.url);
    await ask(page, 'A long answer, please.');
    await answerLongerThan(page, 60);
    const partial = await lastAnswer(page).getByTestId('message-text').textContent();
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    // The conversation is back and the answer picks up where it was.
    assert.equal(await page.getByTestId('user-message').count(), 1);
    assert.equal(await page.getByTestId('user-message').getByTestId('message-text').textContent(), 'A long answer, please.');
    const { text, streamId } = await finishedAnswer(page);
    assert.ok(text.startsWith(partial), 'the text shown before the reload is kept');
    assert.equal(text, await streamText(gw.url, streamId));
    assert.equal(await page.getByTestId('assistant-message').count(), 1);
    assert.equal(await upstreamRequests(gw.url), before + 1);
    await page.close();
  });

  test('(3) cut connections mid-answer: reconnecting is shown, the answer arrives once', async () => {
    const proxy = await cuttableProxy(gw.url);
    try {
      const before = await upstreamRequests(gw.url);
      const page = await openChat(proxy.url);
      await ask(page, 'Survive a dropped connection.');
      await answerLongerThan(page, 60);
      assert.ok(proxy.cut({ stayDown: true }) > 0, 'there were connections to cut');
      // While the network stays down the state counts the attempts down.
      await page.waitForFunction(() => /^Reconnecting — attempt 2 in \d+\.\d s$/.test(document.querySelector('[data-testid="conn-state"]').textContent));
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'desktop-reconnecting.png') });
      proxy.restore();
      const { text, streamId } = await finishedAnswer(page);
      const states = await page.evaluate(() => window.__connStates);
      assert.ok(
        states.some((s) => s.startsWith('reconnecting:Reconnecting — attempt 1')),
        `the reconnecting state was shown: ${JSON.stringify(states)}`,
      );
      assert.equal(text, await streamText(gw.url, streamId));
      assert.equal(await upstreamRequests(gw.url), before + 1);
      await page.close();
    } finally {
      await proxy.close();
    }
  });

  test('(4) the stop button cancels the stream on the server', async () => {
    const page = await openChat(gw.url);
    await ask(page, 'Stop me.');
    await answerLongerThan(page, 20);
    await page.getByTestId('stop-button').click();
    await answerState(page, 'cancelled');
    const streamId = await lastAnswer(page).getAttribute('data-stream-id');
    const status = await streamStatus(gw.url, streamId);
    assert.equal(status.state, 'cancelled');
    assert.equal(await page.getByTestId('conn-state').textContent(), 'Stopped');
    assert.equal(await page.getByTestId('send-button').isVisible(), true);
    // What was shown is what the server's log holds up to the cancel.
    const text = await lastAnswer(page).getByTestId('message-text').textContent();
    assert.equal(text, await streamText(gw.url, streamId));
    await page.close();
  });

  test('errors are explained in words', async () => {
    const page = await openChat(gw.url);
    // A model the gateway does not have (as after a config change): a readable sentence.
    await page.getByTestId('model-select').evaluate((s) => {
      s.add(new Option('gone', 'gone'));
      s.value = 'gone';
    });
    await ask(page, 'Hello?');
    await answerState(page, 'failed');
    const message = await page.getByTestId('error-text').textContent();
    assert.equal(message, 'That model is not available on this gateway. Pick another one.');
    await page.close();
  });

  test('phone viewport: no sideways scrolling, composer and controls reachable', async () => {
    const page = await chrome.context.newPage();
    await page.setViewportSize({ width: 390, height: 844 });
    await openChat(gw.url, page);
    await ask(page, 'Hi from a phone');
    await answerLongerThan(page, 40);
    const layout = await page.evaluate(() => {
      const box = (id) => document.querySelector(`[data-testid="${id}"]`).getBoundingClientRect().toJSON();
      return {
        scrollWidth: document.documentElement.scrollWidth,
        innerWidth: window.innerWidth,
        innerHeight: window.innerHeight,
        input: box('composer-input'),
        stop: box('stop-button'),
        model: box('model-select'),
        conn: box('conn-state'),
      };
    });
    assert.ok(layout.scrollWidth <= layout.innerWidth, `no horizontal overflow: ${layout.scrollWidth} > ${layout.innerWidth}`);
    for (const key of ['input', 'stop', 'model', 'conn']) {
      const b = layout[key];
      assert.ok(b.left >= 0 && b.right <= layout.innerWidth && b.top >= 0 && b.bottom <= layout.innerHeight, `${key} on screen: ${JSON.stringify(b)}`);
    }
    if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'phone-streaming.png') });
    await finishedAnswer(page);
    if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'phone-completed.png') });
    await page.close();
  });
});
