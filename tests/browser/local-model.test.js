// Smoke test of the default experience: `unbroken serve` with no configuration serves the
// embedded local model (SmolLM2), and the web UI streams a real answer from it.
//
// Needs the model file: scripts/test runs scripts/fetch-model first.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { browser, gateway, streamText, upstreamRequests } from './harness.js';

let gw;
let chrome;

before(async () => {
  gw = await gateway({ config: null });
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  await gw?.stop();
});

test('the local model answers in the browser', { timeout: 90000 }, async () => {
  const page = await chrome.context.newPage();
  page.setDefaultTimeout(60000);
  await page.goto(`${gw.url}/`);
  await page.waitForSelector('body[data-ready="true"]');
  const options = await page.getByTestId('model-select').locator('option').allTextContents();
  assert.deepEqual(options, ['smollm2']);

  const input = page.getByTestId('composer-input');
  await input.fill('What is the capital of France?');
  await input.press('Enter');
  await page.waitForFunction(() => {
    const all = document.querySelectorAll('[data-testid="assistant-message"]');
    return all.length > 0 && all[all.length - 1].dataset.state === 'done';
  });
  const answer = page.locator('[data-testid="assistant-message"]').last();
  const text = await answer.getByTestId('message-text').textContent();
  const streamId = await answer.getAttribute('data-stream-id');
  assert.ok(text.trim().length > 0, 'a real answer arrived');
  assert.equal(text, await streamText(gw.url, streamId), 'what the page shows is what the log holds');
  assert.equal(await upstreamRequests(gw.url, 'smollm2', 'local'), 1);
  await page.close();
});
