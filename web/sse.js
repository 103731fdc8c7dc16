// sse.js — the SSE wire format for unbroken.js: an incremental, spec-exact parser of
// `text/event-stream` bodies and the two header helpers around it. An ES module with no
// dependencies, imported by unbroken.js (served beside it at /sdk/sse.js).

const LINE_END = /[\r\n]/g;

/**
 * An incremental parser of `text/event-stream` bodies, per the WHATWG HTML
 * "event stream interpretation" (https://html.spec.whatwg.org/multipage/server-sent-events.html).
 *
 * `feed()` takes `Uint8Array` (decoded as UTF-8 with replacement, multi-byte characters may
 * be split across calls) or already decoded strings; `end()` marks the end of the body: a
 * pending, not yet dispatched event is discarded, as a browser does.
 */
export class SseParser {
  /**
   * @param {object} [options]
   * @param {(event: {type: string, data: string, lastEventId: string}) => void} [options.onEvent]
   * @param {(ms: number) => void} [options.onRetry] a valid `retry:` field
   * @param {(text: string) => void} [options.onComment] a comment line (without the colon)
   * @param {string} [options.lastEventId] the last event ID string to start from
   */
  constructor({ onEvent, onRetry, onComment, lastEventId = '' } = {}) {
    this.onEvent = onEvent || (() => {});
    this.onRetry = onRetry || (() => {});
    this.onComment = onComment || null;
    /** The committed last event ID string (what a reconnection sends). */
    this.lastEventId = lastEventId;
    /** The reconnection time set by the last valid `retry:` field, or null. */
    this.retry = null;
    this._decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    this._bomPending = true; // "One leading U+FEFF BYTE ORDER MARK character must be ignored"
    this._line = '';
    this._afterCR = false; // the last line ended with CR: a following LF belongs to it
    this._data = '';
    this._type = '';
    this._idBuffer = lastEventId;
    this._ended = false;
  }

  /** Feed the next piece of the body. */
  feed(chunk) {
    if (this._ended) throw new Error('SseParser: feed() after end()');
    const text = typeof chunk === 'string' ? chunk : this._decoder.decode(chunk, { stream: true });
    this._push(text);
  }

  /** The body ended: flush the decoder; an incomplete event is discarded. */
  end() {
    if (this._ended) return;
    this._push(this._decoder.decode());
    this._ended = true;
    // "Once the end of the file is reached, any pending data must be discarded."
    this._line = '';
    this._data = '';
    this._type = '';
  }

  _push(text) {
    let i = 0;
    const n = text.length;
    if (n === 0) return;
    if (this._bomPending) {
      this._bomPending = false;
      if (text.charCodeAt(0) === 0xfeff) i = 1;
    }
    if (this._afterCR && i < n) {
      this._afterCR = false;
      if (text.charCodeAt(i) === 0x0a) i += 1; // CRLF split across chunks: one line end
    }
    while (i < n) {
      LINE_END.lastIndex = i;
      const m = LINE_END.exec(text);
      if (m === null) {
        this._line += text.slice(i);
        return;
      }
      const j = m.index;
      const line = this._line + text.slice(i, j);
      this._line = '';
      i = j + 1;
      if (text.charCodeAt(j) === 0x0d) {
        if (i < n) {
          if (text.charCodeAt(i) === 0x0a) i += 1;
        } else {
          this._afterCR = true;
        }
      }
      this._processLine(line);
    }
  }

  _processLine(line) {
    if (line === '') {
      this._dispatch();
      return;
    }
    const colon = line.indexOf(':');
    if (colon === 0) {
      if (this.onComment) this.onComment(line.slice(1));
      return;
    }
    let field;
    let value;
    if (colon > 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    } else {
      field = line;
      value = '';
    }
    switch (field) {
      case 'event':
        this._type = value;
        break;
      case 'data':
        this._data += `${value}\n`;
        break;
      case 'id':
        if (!value.includes('\0')) this._idBuffer = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) {
          this.retry = Number.parseInt(value, 10);
          this.onRetry(this.retry);
        }
        break;
      default: // unknown fields are ignored
    }
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    if (this._data === '') {
      this._type = '';
      return;
    }
    const data = this._data.slice(0, -1);
    const type = this._type === '' ? 'message' : this._type;
    this._data = '';
    this._type = '';
    this.onEvent({ type, data, lastEventId: this.lastEventId });
  }
}

/** Whether a Content-Type header names `text/event-stream` (parameters ignored). */
export function isEventStreamContentType(contentType) {
  if (typeof contentType !== 'string') return false;
  const essence = contentType.split(';', 1)[0].trim().toLowerCase();
  return essence === 'text/event-stream';
}

/**
 * A header value for a last event ID: fetch only takes byte strings, so a non-Latin-1 id is
 * sent as its UTF-8 bytes (what a browser's EventSource sends).
 */
export function lastEventIdHeader(id) {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(id)) return id;
  return Array.from(new TextEncoder().encode(id), (b) => String.fromCharCode(b)).join('');
}
