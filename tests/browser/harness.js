// Shared pieces of the browser tests: the gateway under test, Chromium via playwright-core,
// a cuttable TCP proxy, and readers of the gateway's own view (/metrics, the stream log).
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The simulator config the tests run against (about 4 s per answer). */
export const SIM_CONFIG = `[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 160, ttft_ms = 100, interval_ms = 25 }]
`;

/**
 * The gateway under test: `UNBROKEN_URL` when scripts/browser-test started one (simulator
 * config), otherwise a fresh `serve` on 127.0.0.1:0 with `config` whose URL is read from its
 * stdout.
 */
export async function gateway({ config = SIM_CONFIG } = {}) {
  if (process.env.UNBROKEN_URL && config === SIM_CONFIG) {
    return { url: process.env.UNBROKEN_URL.replace(/\/$/, ''), stop: async () => {} };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'unbroken-gw-'));
  const args = ['serve', '--listen', '127.0.0.1:0', '--store', 'memory'];
  // `config: null` runs the embedded defaults: the local model.
  if (config !== null) {
    const file = path.join(dir, 'unbroken.toml');
    await writeFile(file, config);
    args.push('--config', file);
  }
  const bin = process.env.UNBROKEN_BIN || path.join(ROOT, 'target/debug/unbroken');
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const m = /^unbroken listening on (http:\/\/\S+)/.exec(line);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`the gateway exited early (${code})`)));
    child.once('error', reject);
  });
  return {
    url,
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Chromium as FIELD-NOTES says it works here, with a fresh profile. */
export async function browser() {
  const userDataDir = await mkdtemp(path.join(os.tmpdir(), 'unbroken-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1100, height: 760 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      await rm(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy on 127.0.0.1:0 in front of `target` ("http://host:port"). `cut()` destroys
 * every open connection at once, as a dropped Wi-Fi does to the browser's streams.
 */
export async function cuttableProxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  let connections = 0;
  let refusing = false;
  const server = net.createServer((client) => {
    connections += 1;
    if (refusing) {
      client.destroy(); // the network is still down
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get connections() {
      return connections;
    },
    /** Destroy every open connection; with `{ stayDown: true }` refuse new ones until `restore()`. */
    cut({ stayDown = false } = {}) {
      refusing = stayDown;
      const n = sockets.size;
      for (const s of sockets) s.destroy();
      return n;
    },
    restore() {
      refusing = false;
    },
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(r);
      }),
  };
}

/** `unbroken_upstream_requests_total{model,provider,status="ok"}` from /metrics. */
export async function upstreamRequests(url, model = 'sim', provider = 'simulator') {
  const text = await (await fetch(`${url}/metrics`)).text();
  // Summed over the model's targets: a series per model, target, provider and status.
  const wanted = [`model="${model}"`, `provider="${provider}"`, 'status="ok"'];
  return text
    .split('\n')
    .filter((l) => l.startsWith('unbroken_upstream_requests_total{') && wanted.every((w) => l.includes(w)))
    .reduce((sum, l) => sum + Number(l.trim().split(/\s+/).at(-1)), 0);
}

/** The text the gateway's log holds for a stream (`?format=events`, text records joined). */
export async function streamText(url, streamId) {
  const r = await fetch(`${url}/v1/streams/${streamId}?format=events`);
  if (r.status !== 200) throw new Error(`GET stream ${streamId}: ${r.status}`);
  const body = await r.text();
  let text = '';
  for (const block of body.split('\n\n')) {
    const lines = block.split('\n');
    const event = lines.find((l) => l.startsWith('event:'))?.slice(6).trim();
    const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    if (event === 'text') text += JSON.parse(data).text;
  }
  return text;
}

/** `GET /v1/streams/{id}/status` as JSON. */
export async function streamStatus(url, streamId) {
  return (await fetch(`${url}/v1/streams/${streamId}/status`)).json();
}

/** Records every `data-state` of the connection indicator in `window.__connStates`. */
export const RECORD_CONN_STATES = `(() => {
  window.__connStates = [];
  const start = () => {
    const el = document.querySelector('[data-testid="conn-state"]');
    if (!el) return;
    window.__connStates.push(el.dataset.state + ':' + el.textContent);
    new MutationObserver(() => {
      const s = el.dataset.state + ':' + el.textContent;
      if (window.__connStates.at(-1) !== s) window.__connStates.push(s);
    }).observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})()`;

export const ROOT_DIR = ROOT;
