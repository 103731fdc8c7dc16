// The chat UI served at `/`: a thin layer over the SDK (/sdk/unbroken.js). The conversation
// lives in sessionStorage (sent whole with each request, OpenAI-style); the answer in flight
// is kept by the SDK, so a page reload resumes it instead of asking the model again.
import { streamChat, resumeChat } from '/sdk/unbroken.js';

const CONVERSATION_KEY = 'unbroken:conversation';
const API_KEY = 'unbroken:apiKey'; // localStorage
const MODEL_KEY = 'unbroken:model'; // localStorage

const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'),
  messages: $('messages'),
  chat: $('chat'),
  empty: $('empty'),
  conn: $('conn'),
  ttft: $('stat-ttft'),
  rate: $('stat-rate'),
  error: $('error'),
  errorText: $('error-text'),
  errorClose: $('error-close'),
  form: $('composer'),
  input: $('input'),
  send: $('send'),
  stop: $('stop'),
  newChat: $('new-chat'),
  apiKey: $('api-key'),
  saveKey: $('save-key'),
  clearKey: $('clear-key'),
  settings: $('settings'),
};

// ---------------------------------------------------------------------------------------
// State

/** @type {{messages: Array<{role: string, content: string, status?: string}>}} */
let conversation = loadConversation();
let current = null; // the answer in flight: { handle, el, startedAt, firstTokenAt, tokens }
let countdown = null;

function loadConversation() {
  try {
    const c = JSON.parse(sessionStorage.getItem(CONVERSATION_KEY) || 'null');
    if (c && Array.isArray(c.messages)) return c;
  } catch {
    // fall through
  }
  return { messages: [] };
}

function saveConversation() {
  try {
    sessionStorage.setItem(CONVERSATION_KEY, JSON.stringify(conversation));
  } catch {
    // storage full or disabled: the chat still works, it just won't survive a reload
  }
}

function apiKey() {
  try {
    return localStorage.getItem(API_KEY) || '';
  } catch {
    return '';
  }
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// What the model sees: user and assistant turns, without answers that failed.
function historyForModel() {
  return conversation.messages
    .filter((m) => m.status !== 'failed' && m.content !== '')
    .map((m) => ({ role: m.role, content: m.content }));
}

// ---------------------------------------------------------------------------------------
// Rendering

function messageElement(role, text, status) {
  const li = document.createElement('li');
  li.className = `msg ${role}`;
  li.dataset.testid = role === 'user' ? 'user-message' : 'assistant-message';
  li.dataset.role = role;
  if (status) li.dataset.state = status;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Assistant';
  const body = document.createElement('div');
  body.className = 'text';
  body.dataset.testid = 'message-text';
  body.textContent = text;
  li.append(who, body);
  if (status && status !== 'done') li.append(noteElement(status));
  return li;
}

function noteElement(status) {
  const note = document.createElement('span');
  note.className = 'note';
  note.dataset.testid = 'message-note';
  note.textContent = { cancelled: 'Stopped', failed: 'Interrupted', streaming: '' }[status] || '';
  return note;
}

function setMessageState(li, status) {
  li.dataset.state = status;
  li.querySelector('.note')?.remove();
  const body = li.querySelector('.text');
  body.removeAttribute('aria-live');
  if (status !== 'done') li.append(noteElement(status));
}

function renderConversation() {
  ui.messages.replaceChildren(
    ...conversation.messages.map((m) => messageElement(m.role, m.content, m.role === 'assistant' ? m.status || 'done' : undefined)),
  );
  updateEmpty();
}

function updateEmpty() {
  ui.empty.hidden = ui.messages.children.length > 0;
}

function nearBottom() {
  const c = ui.chat;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function scrollToBottom(force) {
  if (force || nearBottom()) ui.chat.scrollTop = ui.chat.scrollHeight;
}

function setConn(state, text) {
  ui.conn.dataset.state = state;
  ui.conn.textContent = text;
}

function stopCountdown() {
  if (countdown) clearInterval(countdown);
  countdown = null;
}

function showError(text) {
  ui.errorText.textContent = text;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.errorText.textContent = '';
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = false;
  ui.model.disabled = busy;
  ui.newChat.disabled = busy;
  ui.messages.setAttribute('aria-busy', busy ? 'true' : 'false');
}

const seconds = (ms) => `${(Math.max(0, ms) / 1000).toFixed(1)} s`;

// Errors a person understands.
function describe(error, { retrying = false } = {}) {
  if (!error) return 'Something went wrong.';
  const wait = error.retryAfterMs != null ? Math.max(1, Math.ceil(error.retryAfterMs / 1000)) : null;
  switch (error.status) {
    case 429:
      return wait ? `The model is busy — ${retrying ? 'retrying' : 'try again'} in ${wait} s.` : 'The model is busy — try again in a moment.';
    case 401:
    case 403:
      return 'This gateway needs a valid API key. Add it under Settings.';
    case 404:
      return error.code === 'model_not_found'
        ? 'That model is not available on this gateway. Pick another one.'
        : 'The gateway no longer knows this answer (it may have expired).';
    case 413:
      return 'This conversation is too long to send. Start a new chat.';
    case 422:
    case 400:
      return `The gateway refused the request: ${error.message}`;
    case 502:
      return "The model's provider failed to answer. Try again.";
    case 503:
      return 'The gateway is not available right now. Try again shortly.';
    case 504:
      return 'The model took too long to answer. Try again.';
    default:
  }
  if (error.code === 'bad_content_type') return 'The gateway answered with something other than a stream.';
  if (error.status == null && (error.code === 'retries_exhausted' || /network|connection|closed|stalled|received/i.test(error.message))) {
    return "Can't reach the gateway. Check your connection and try again.";
  }
  if (error.type === 'upstream_error' || error.code) return `The answer was interrupted: ${error.message}`;
  return error.message || 'Something went wrong.';
}

// ---------------------------------------------------------------------------------------
// Models

async function loadModels() {
  const previous = ui.model.value || localStorage.getItem(MODEL_KEY) || '';
  try {
    const r = await fetch('/v1/models', { headers: authHeaders(), cache: 'no-store' });
    if (!r.ok) {
      let body = null;
      try {
        body = await r.json();
      } catch {
        // ignore
      }
      throw Object.assign(new Error(body?.error?.message || `HTTP ${r.status}`), { status: r.status, code: body?.error?.code });
    }
    const list = (await r.json()).data || [];
    ui.model.replaceChildren(
      ...list.map((m) => {
        const o = document.createElement('option');
        o.value = m.id;
        o.textContent = m.id;
        return o;
      }),
    );
    if (list.length === 0) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = 'No models configured';
      ui.model.append(o);
    } else if (list.some((m) => m.id === previous)) {
      ui.model.value = previous;
    }
    ui.model.dataset.loaded = 'true';
  } catch (e) {
    ui.model.replaceChildren(new Option('Models unavailable', ''));
    showError(e.status ? describe(e) : "Can't reach the gateway to list its models.");
    if (e.status === 401 || e.status === 403) ui.settings.open = true;
  }
}

// ---------------------------------------------------------------------------------------
// Streaming an answer

function track(handle, el, { startedAt }) {
  current = { handle, el, startedAt, firstTokenAt: null, lastTokenAt: null, tokens: 0 };
  const body = el.querySelector('.text');
  body.setAttribute('aria-live', 'polite');
  setBusy(true);
  ui.ttft.textContent = '—';
  ui.rate.textContent = '—';
  return current;
}

function onToken(token) {
  if (!current) return;
  if (current.handle.streamId) current.el.dataset.streamId = current.handle.streamId;
  const now = performance.now();
  if (current.firstTokenAt == null) {
    current.firstTokenAt = now;
    if (current.startedAt != null) ui.ttft.textContent = `${Math.round(now - current.startedAt)} ms`;
  }
  current.lastTokenAt = now;
  current.tokens += 1;
  const stick = nearBottom();
  current.el.querySelector('.text').append(token); // a text node: never HTML
  if (stick) scrollToBottom(true);
}

function onState(s) {
  stopCountdown();
  switch (s.state) {
    case 'connecting':
      setConn('connecting', s.resumed ? 'Resuming the answer…' : 'Connecting…');
      break;
    case 'streaming':
      setConn('streaming', 'Streaming');
      hideErrorIfTransient();
      break;
    case 'reconnecting': {
      const due = performance.now() + s.delayMs;
      const busy = s.error && s.error.status === 429;
      const tick = () => {
        const left = due - performance.now();
        const text = busy
          ? `The model is busy — retrying in ${seconds(left)} (attempt ${s.attempt})`
          : `Reconnecting — attempt ${s.attempt} in ${seconds(left)}`;
        setConn('reconnecting', left > 0 ? text : `Reconnecting — attempt ${s.attempt}…`);
        if (left <= 0) stopCountdown();
      };
      tick();
      countdown = setInterval(tick, 100);
      break;
    }
    case 'done':
      setConn('idle', 'Ready');
      break;
    case 'cancelled':
      setConn('idle', 'Stopped');
      break;
    case 'failed':
      setConn('failed', 'Failed');
      break;
    default:
  }
}

let transientError = false;
function hideErrorIfTransient() {
  if (transientError) hideError();
  transientError = false;
}

function finish(status, result, error) {
  stopCountdown();
  const { el } = current;
  if (current.handle.streamId) el.dataset.streamId = current.handle.streamId;
  const text = result ? result.text : (error && error.partialText) || el.querySelector('.text').textContent;
  el.querySelector('.text').textContent = text;
  setMessageState(el, status);
  conversation.messages.push({ role: 'assistant', content: text, status });
  saveConversation();
  if (current.firstTokenAt != null && current.lastTokenAt > current.firstTokenAt) {
    const tokens = result?.usage?.completion_tokens ?? current.tokens;
    const rate = (tokens - 1) / ((current.lastTokenAt - current.firstTokenAt) / 1000);
    ui.rate.textContent = rate.toFixed(1);
  }
  current = null;
  setBusy(false);
  if (error) showError(describe(error));
  ui.input.focus();
}

function follow(handle) {
  handle.done.then(
    (result) => {
      if (!current || current.handle !== handle) return;
      if (result.finishReason === 'aborted') return; // page is going away
      finish(result.finishReason === 'cancelled' ? 'cancelled' : 'done', result, null);
    },
    (error) => {
      if (!current || current.handle !== handle) return;
      finish('failed', null, error);
    },
  );
}

function send(text) {
  const model = ui.model.value;
  if (!model) {
    showError('Pick a model first.');
    return;
  }
  localStorage.setItem(MODEL_KEY, model);
  hideError();
  conversation.messages.push({ role: 'user', content: text });
  saveConversation();
  ui.messages.append(messageElement('user', text));
  const el = messageElement('assistant', '', 'streaming');
  ui.messages.append(el);
  updateEmpty();
  scrollToBottom(true);
  const startedAt = performance.now();
  const handle = streamChat({
    model,
    messages: historyForModel(),
    apiKey: apiKey(),
    onToken,
    onState,
  });
  track(handle, el, { startedAt });
  follow(handle);
}

function resumeInFlight() {
  let handle;
  try {
    handle = resumeChat({ apiKey: apiKey(), onToken, onState });
  } catch {
    handle = null;
  }
  if (!handle) return;
  // The user's question is already in the conversation (saved before sending).
  const el = messageElement('assistant', handle.text, 'streaming');
  ui.messages.append(el);
  updateEmpty();
  if (handle.model && [...ui.model.options].some((o) => o.value === handle.model)) ui.model.value = handle.model;
  track(handle, el, { startedAt: null });
  follow(handle);
  scrollToBottom(true);
}

// ---------------------------------------------------------------------------------------
// Wiring

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  if (current) return;
  const text = ui.input.value.trim();
  if (!text) return;
  ui.input.value = '';
  autosize();
  send(text);
});

ui.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.input.addEventListener('input', autosize);

ui.stop.addEventListener('click', () => {
  if (!current) return;
  ui.stop.disabled = true;
  setConn('connecting', 'Stopping…');
  current.handle.cancel();
});

ui.newChat.addEventListener('click', () => {
  if (current) return;
  conversation = { messages: [] };
  saveConversation();
  renderConversation();
  hideError();
  ui.ttft.textContent = '—';
  ui.rate.textContent = '—';
  ui.input.focus();
});

ui.errorClose.addEventListener('click', hideError);

ui.apiKey.value = apiKey();
ui.saveKey.addEventListener('click', () => {
  localStorage.setItem(API_KEY, ui.apiKey.value.trim());
  ui.settings.open = false;
  hideError();
  loadModels();
});
ui.clearKey.addEventListener('click', () => {
  localStorage.removeItem(API_KEY);
  ui.apiKey.value = '';
  loadModels();
});

window.addEventListener('offline', () => {
  if (current) {
    transientError = true;
    showError('You are offline. The answer will continue when the connection is back.');
  }
});
window.addEventListener('online', () => hideErrorIfTransient());

renderConversation();
setBusy(false);
loadModels().then(() => {
  resumeInFlight();
  document.body.dataset.ready = 'true';
});
