/**
 * ssegate.js: a small, dependency-free ES module to start and follow ssegate streams.
 *
 *   import { startStream } from '/static/ssegate.js';
 *   const stream = startStream({
 *     body: { messages: [{ role: 'user', content: 'Hello' }] },
 *     onDelta: ({ text }) => { out.textContent += text; },
 *     onClose: ({ reason }) => console.log('finished:', reason),
 *   });
 *   stopButton.onclick = () => stream.cancel();
 *
 * Two ways to follow a stream (`mode`):
 *
 * - `'fetch'` (default): `fetch()` plus our own event-stream parser, so every request can carry
 *   headers (an `Authorization` key) and the reconnection policy is ours from end to end.
 * - `'eventsource'`: the browser's `EventSource` (no custom headers; cookies with
 *   `withCredentials`).
 *
 * In both modes a dropped connection is resumed from the last event id (no event lost, none
 * repeated), after a delay that starts at the server's `retry:` (or `retryDelay`) and doubles
 * per failed attempt, with jitter, up to `maxRetryDelay`; a 4xx answer ends the stream at once.
 *
 * The parser follows the WHATWG HTML standard, "9.2.6 Interpreting an event stream"; where this
 * module departs from EventSource it says so in docs/browser.md.
 */

/** The event types of the ssegate wire protocol (docs/protocol.md). */
export const EVENT_TYPES = Object.freeze([
  'start', 'delta', 'reasoning', 'tool_call', 'usage', 'done', 'error', 'cancelled',
]);

/** The connection states reported to `onStateChange`. */
export const STATES = Object.freeze(['connecting', 'open', 'reconnecting', 'closed']);

const TERMINAL = new Set(['done', 'error', 'cancelled']);
const CALLBACKS = {
  start: 'onStart',
  delta: 'onDelta',
  reasoning: 'onReasoning',
  tool_call: 'onToolCall',
  usage: 'onUsage',
  done: 'onDone',
  error: 'onError',
  cancelled: 'onCancelled',
};
const DEFAULT_MAX_BUFFER = 4 * 1024 * 1024;
const MIN_RETRY_DELAY = 100; // a server's `retry: 0` must not turn into a tight loop

/**
 * An incremental `text/event-stream` parser, to the letter of the WHATWG rules: lines end with
 * CRLF, LF or CR (a CRLF split across two chunks too), one leading BOM is dropped, `data` lines
 * join with LF, an `id` holding NUL is ignored, `retry` counts only when all ASCII digits, an
 * event with no data is not dispatched, and an unterminated last event is discarded.
 *
 * Feed it bytes (`Uint8Array`, decoded with a streaming `TextDecoder`, so a character split
 * across chunks is joined) or strings. Bounded: a line or an event larger than `maxBuffer`
 * characters throws (the spec sets no bound; an endless line must not eat the tab's memory).
 */
export class EventStreamParser {
  /**
   * @param {(event: {type: string, data: string, lastEventId: string}) => void} onEvent
   * @param {{lastEventId?: string, onRetry?: (ms: number) => void,
   *          onComment?: (text: string) => void, maxBuffer?: number}} [options]
   */
  constructor(onEvent, options = {}) {
    this._onEvent = onEvent;
    this._onRetry = options.onRetry;
    this._onComment = options.onComment;
    this._max = options.maxBuffer ?? DEFAULT_MAX_BUFFER;
    this._decoder = new TextDecoder('utf-8'); // drops one leading BOM, replaces bad bytes
    this._started = false;
    this._skipLF = false;
    this._line = '';
    this._data = '';
    this._hasData = false;
    this._type = '';
    // Chrome and Firefox start a reconnection's parser from the id they already have.
    this._idBuffer = options.lastEventId ?? '';
    /** The last event id string, as `EventSource`'s `lastEventId` would report it. */
    this.lastEventId = this._idBuffer;
    /** The reconnection time in milliseconds, once the stream set one (else `null`). */
    this.retry = null;
  }

  /** Parse a chunk: bytes or text. Dispatches the events it completes, in order. */
  feed(chunk) {
    let text;
    if (typeof chunk === 'string') {
      text = chunk;
      if (!this._started && text.length > 0 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    } else {
      text = this._decoder.decode(chunk, { stream: true });
    }
    if (text.length === 0) return;
    this._started = true;
    let pos = 0;
    if (this._skipLF) {
      this._skipLF = false;
      if (text.charCodeAt(0) === 10) pos = 1;
    }
    const n = text.length;
    while (pos < n) {
      const lf = text.indexOf('\n', pos);
      const cr = text.indexOf('\r', pos);
      let end;
      if (cr === -1) end = lf;
      else if (lf === -1) end = cr;
      else end = Math.min(cr, lf);
      if (end === -1) {
        this._line += text.slice(pos);
        if (this._line.length > this._max) throw new Error('event stream line too long');
        return;
      }
      const line = this._line + text.slice(pos, end);
      this._line = '';
      pos = end + 1;
      if (end === cr) {
        if (pos < n) {
          if (text.charCodeAt(pos) === 10) pos += 1;
        } else {
          this._skipLF = true; // the LF of a CRLF may come with the next chunk
        }
      }
      this._field(line);
    }
  }

  /** The stream ended: an unfinished line or event is discarded, as the spec says. */
  end() {
    this._decoder.decode(); // flush (and forget) a partial character
    this._line = '';
    this._data = '';
    this._hasData = false;
    this._type = '';
    this._skipLF = false;
  }

  _field(line) {
    if (line.length === 0) {
      this._dispatch();
      return;
    }
    const colon = line.indexOf(':');
    if (colon === 0) {
      if (this._onComment) this._onComment(line.slice(1));
      return;
    }
    let name = line;
    let value = '';
    if (colon > 0) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (name) {
      case 'data':
        this._data += value + '\n';
        this._hasData = true;
        if (this._data.length > this._max) throw new Error('event stream event too large');
        break;
      case 'event':
        this._type = value;
        break;
      case 'id':
        if (value.indexOf('\0') === -1) this._idBuffer = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) {
          this.retry = parseInt(value, 10);
          if (this._onRetry) this._onRetry(this.retry);
        }
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    if (!this._hasData) {
      this._type = '';
      return;
    }
    const data = this._data.slice(0, -1); // drop the LF after the last data line
    const type = this._type || 'message';
    this._data = '';
    this._hasData = false;
    this._type = '';
    this._onEvent({ type, data, lastEventId: this.lastEventId });
  }
}

/** Run a user callback; its exception is reported but never breaks the stream. */
function safeCall(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    if (typeof reportError === 'function') reportError(err);
    else console.error(err);
  }
}

function joinUrl(base, path) {
  if (/^[a-z][a-z0-9+.-]*:/i.test(path)) return path; // already absolute
  return base.replace(/\/+$/, '') + path;
}

function withQuery(url, name, value) {
  const [head, hash = ''] = url.split('#', 2);
  const sep = head.includes('?') ? '&' : '?';
  return head + sep + encodeURIComponent(name) + '=' + encodeURIComponent(value)
    + (hash ? '#' + hash : '');
}

/** Split a `token` query parameter off `url`: `[url without it, token or null]`. */
function takeToken(url) {
  const match = /[?&]token=([^&#]*)/.exec(url);
  if (!match) return [url, null];
  const rest = (url.slice(0, match.index) + url.slice(match.index + match[0].length))
    .replace(/^([^?#]*)&/, '$1?');
  return [rest, decodeURIComponent(match[1])];
}

function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

async function httpError(response) {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status} ${response.statusText || ''}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  const retryable = response.status >= 500 || response.status === 408 || response.status === 429;
  return { code, message, retryable, status: response.status };
}

function networkError(err) {
  return {
    code: 'network',
    message: (err && err.message) || 'network error',
    retryable: true,
  };
}

/**
 * One ssegate stream, started by `startStream()` or followed by `followStream()`.
 *
 * Properties: `id` (the stream id, once known), `lastEventId` (string), `state`
 * (`'connecting' | 'open' | 'reconnecting' | 'closed'`), `model`, `closed` (a promise of the
 * `onClose` info). Methods: `cancel()`, `close()`.
 */
export class SsegateStream {
  constructor(options, { id = null, eventsUrl = null, body = null } = {}) {
    this.options = options;
    this.baseUrl = options.baseUrl ?? '';
    this.mode = options.mode ?? 'fetch';
    if (this.mode !== 'fetch' && this.mode !== 'eventsource') {
      throw new TypeError(`mode must be 'fetch' or 'eventsource', not ${this.mode}`);
    }
    this.id = id;
    this.eventsUrl = eventsUrl;
    this.statusUrl = id ? joinUrl(this.baseUrl, `/v1/streams/${encodeURIComponent(id)}`) : null;
    this.lastEventId = options.lastEventId != null ? String(options.lastEventId) : '';
    this.model = null;
    this.state = null;
    /** The stream's read token (gateways with API keys): lets EventSource read without a key. */
    this.token = options.token ?? null;
    this._body = body;
    this._closed = false;
    this._serverRetry = null;
    this._connection = null; // {abort()} of the live connection
    this._wake = null; // ends a back-off wait early
    this._progress = false;
    this._cancelPromise = null;
    let resolveCreated;
    this._created = new Promise((resolve) => { resolveCreated = resolve; });
    this._resolveCreated = resolveCreated;
    if (id) resolveCreated(id);
    this.closed = new Promise((resolve) => { this._resolveClosed = resolve; });
    if (options.signal) {
      if (options.signal.aborted) queueMicrotask(() => this.close());
      else options.signal.addEventListener('abort', () => this.close(), { once: true });
    }
    this._setState('connecting');
    queueMicrotask(() => this._run());
  }

  /**
   * Stop the generation on the server (`DELETE`), then close. Resolves with the server's
   * status JSON, or `null` when the stream had already ended or the request failed.
   * `onCancelled` and `onClose({reason: 'cancelled'})` fire once, whichever of the server's
   * `cancelled` event and the `DELETE` answer comes first.
   */
  cancel() {
    if (!this._cancelPromise) this._cancelPromise = this._cancel();
    return this._cancelPromise;
  }

  /** Stop following here, without cancelling on the server. Fires `onClose({reason:'closed'})`. */
  close() {
    this._finish('closed');
  }

  /**
   * A URL to read the stream with: plus the read token, when we have one and the request will
   * not carry an Authorization header (EventSource never can). The key never goes in a URL.
   */
  _readUrl(url, { sendsHeaders }) {
    if (!this.token) return url;
    const headers = this.options.headers || {};
    const keyed = Object.keys(headers).some((name) => name.toLowerCase() === 'authorization');
    return sendsHeaders && keyed ? url : withQuery(url, 'token', this.token);
  }

  _headers(extra) {
    return { ...(this.options.headers || {}), ...extra };
  }

  _fetchInit(init) {
    const credentials = this.options.withCredentials ? 'include' : 'same-origin';
    return { credentials, cache: 'no-store', ...init };
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    safeCall(this.options.onStateChange, state);
  }

  _finish(reason, error = null) {
    if (this._closed) return;
    this._closed = true;
    if (this._connection) this._connection.abort();
    this._connection = null;
    if (this._wake) this._wake();
    this._resolveCreated(this.id);
    this._setState('closed');
    const info = { reason, streamId: this.id, lastEventId: this.lastEventId, error };
    safeCall(this.options.onClose, info);
    this._resolveClosed(info);
  }

  _fail(error) {
    if (this._closed) return;
    safeCall(this.options.onError, error, null);
    this._finish('error', error);
  }

  async _cancel() {
    const id = await this._created;
    if (!id || this._closed) return null;
    let status = null;
    try {
      const response = await fetch(this.statusUrl, this._fetchInit({
        method: 'DELETE',
        headers: this._headers({ Accept: 'application/json' }),
      }));
      if (response.ok) status = await response.json();
    } catch {
      // The server is out of reach: stop here all the same; with on_disconnect=cancel the
      // server stops the generation once nobody follows it.
    }
    const finished = status && (status.status === 'done' || status.status === 'error');
    if (!finished && !this._closed) {
      // The DELETE was answered before our connection delivered the `cancelled` event.
      const data = { cause: 'client' };
      safeCall(this.options.onCancelled, data, { type: 'cancelled', data, id: null });
      this._finish('cancelled');
    }
    return status;
  }

  async _create() {
    const url = joinUrl(this.baseUrl, '/v1/streams');
    let response;
    try {
      response = await fetch(url, this._fetchInit({
        method: 'POST',
        headers: this._headers({ 'Content-Type': 'application/json', Accept: 'application/json' }),
        body: JSON.stringify(this._body),
      }));
    } catch (err) {
      // A POST is not idempotent: it is never retried behind the caller's back.
      return networkError(err);
    }
    if (!response.ok) return httpError(response);
    const info = await response.json();
    this.id = info.id;
    this.model = info.model ?? null;
    // The URLs may carry the read token: keep it apart, and add it only where it is needed.
    const [eventsUrl, eventsToken] = takeToken(info.events_url);
    const [statusUrl] = takeToken(info.status_url || `/v1/streams/${info.id}`);
    this.token = info.token || eventsToken || this.token;
    this.eventsUrl = joinUrl(this.baseUrl, eventsUrl);
    this.statusUrl = joinUrl(this.baseUrl, statusUrl);
    this._resolveCreated(this.id);
    return null;
  }

  async _run() {
    if (this._closed) return;
    if (!this.eventsUrl) {
      if (this.id) {
        this.eventsUrl = joinUrl(this.baseUrl, `/v1/streams/${encodeURIComponent(this.id)}/events`);
      } else {
        const error = await this._create();
        if (error) {
          this._resolveCreated(null);
          this._fail(error);
          return;
        }
        if (this._closed) {
          // close() or cancel() came while the POST was in flight: the stream exists now.
          return;
        }
      }
    }
    let failures = 0;
    while (!this._closed) {
      this._progress = false;
      const outcome = this.mode === 'fetch' ? await this._followFetch() : await this._followEventSource();
      if (this._closed) return;
      if (outcome.kind === 'finished') {
        this._finish('finished');
        return;
      }
      if (outcome.kind === 'fatal') {
        this._fail(outcome.error);
        return;
      }
      // kind === 'retry'
      failures = this._progress ? 1 : failures + 1;
      const maxRetries = this.options.maxRetries ?? 8;
      if (failures > maxRetries) {
        this._fail({
          code: 'reconnect_failed',
          message: `gave up after ${maxRetries} reconnection attempts: ${outcome.error.message}`,
          retryable: true,
          cause: outcome.error,
        });
        return;
      }
      this._setState('reconnecting');
      await this._sleep(this._delay(failures, outcome.retryAfter));
    }
  }

  /** Back-off: the server's `retry:` (or `retryDelay`), doubled per failure, plus 0-25 % jitter. */
  _delay(attempt, retryAfter) {
    const cap = this.options.maxRetryDelay ?? 30000;
    const base = Math.max(MIN_RETRY_DELAY, this._serverRetry ?? this.options.retryDelay ?? 1000);
    let delay = Math.min(cap, base * 2 ** (attempt - 1));
    delay *= 1 + Math.random() * 0.25;
    if (retryAfter != null) delay = Math.max(delay, retryAfter);
    return Math.min(delay, Math.max(cap, retryAfter ?? 0));
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = done;
    }).finally(() => { this._wake = null; });
  }

  /** Handle one parsed event; returns whether it ended the stream. */
  _handle(type, rawData, id) {
    if (this._closed) return true;
    const terminal = TERMINAL.has(type);
    // A resumed connection never repeats events, but a misbehaving proxy or a replayed
    // EventSource URL could: ids only grow, so anything at or below ours is a repeat. (Terminal
    // events end the stream, so they cannot repeat; the gateway's `gap` error has no id.)
    if (!terminal && id && this.lastEventId && Number(id) <= Number(this.lastEventId)) return false;
    if (id) this.lastEventId = id;
    this._progress = true;
    let data = rawData;
    try {
      data = JSON.parse(rawData);
    } catch {
      // Not JSON: hand over the text.
    }
    const event = { type, data, id: id || null };
    if (type === 'start' && data && typeof data === 'object') {
      if (!this.id && data.stream_id) {
        this.id = data.stream_id;
        this._resolveCreated(this.id);
      }
      if (data.model) this.model = data.model;
      if (data.token) this.token = data.token;
    }
    safeCall(this.options.onEvent, event);
    safeCall(this.options[CALLBACKS[type]], data, event);
    if (terminal) {
      this._finish(type === 'done' ? 'done' : type, type === 'error' ? data : null);
      return true;
    }
    return false;
  }

  async _followFetch() {
    const controller = new AbortController();
    let idled = false;
    this._connection = controller;
    const headers = this._headers({ Accept: 'text/event-stream' });
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    let response;
    try {
      response = await fetch(this._readUrl(this.eventsUrl, { sendsHeaders: true }), this._fetchInit({ headers, signal: controller.signal }));
    } catch (err) {
      return { kind: 'retry', error: networkError(err) };
    }
    if (this._closed) return { kind: 'closed' };
    if (response.status === 204) return { kind: 'finished' };
    if (!response.ok) {
      const error = await httpError(response);
      const retryAfter = parseRetryAfter(response.headers.get('Retry-After'));
      return error.retryable ? { kind: 'retry', error, retryAfter } : { kind: 'fatal', error };
    }
    const type = (response.headers.get('Content-Type') || '').toLowerCase();
    if (!type.startsWith('text/event-stream') || !response.body) {
      controller.abort();
      return {
        kind: 'fatal',
        error: { code: 'bad_response', message: `expected text/event-stream, got ${type || 'nothing'}`, retryable: false, status: response.status },
      };
    }
    this._setState('open');
    let ended = false;
    const parser = new EventStreamParser(
      (ev) => { if (!ended) ended = this._handle(ev.type, ev.data, ev.lastEventId); },
      { lastEventId: this.lastEventId, onRetry: (ms) => { this._serverRetry = ms; } },
    );
    const reader = response.body.getReader();
    const idleTimeout = this.options.idleTimeout ?? 60000;
    let idleTimer = null;
    const arm = () => {
      if (!idleTimeout) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => { idled = true; controller.abort(); }, idleTimeout);
    };
    try {
      arm();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        parser.feed(value);
        if (ended || this._closed) break;
      }
    } catch (err) {
      if (ended || this._closed) return { kind: 'closed' };
      if (idled) {
        return { kind: 'retry', error: { code: 'idle_timeout', message: `no data for ${idleTimeout} ms`, retryable: true } };
      }
      if (err instanceof Error && /event stream (line|event)/.test(err.message)) {
        return { kind: 'fatal', error: { code: 'protocol', message: err.message, retryable: false } };
      }
      return { kind: 'retry', error: networkError(err) };
    } finally {
      clearTimeout(idleTimer);
      if (this._connection === controller) this._connection = null;
    }
    if (ended || this._closed) {
      controller.abort(); // let go of the connection at once
      return { kind: 'closed' };
    }
    parser.end();
    return {
      kind: 'retry',
      error: { code: 'incomplete', message: 'the connection closed before the stream ended', retryable: true },
    };
  }

  _followEventSource() {
    // The query form of the id: a fresh EventSource has no way to send Last-Event-ID itself.
    const base = this._readUrl(this.eventsUrl, { sendsHeaders: false });
    const url = this.lastEventId ? withQuery(base, 'last_event_id', this.lastEventId) : base;
    const source = new EventSource(url, { withCredentials: !!this.options.withCredentials });
    return new Promise((resolve) => {
      let settled = false;
      const settle = (outcome) => {
        if (settled) return;
        settled = true;
        source.close();
        if (this._connection === connection) this._connection = null;
        resolve(outcome);
      };
      const connection = { abort: () => settle({ kind: 'closed' }) };
      this._connection = connection;
      source.onopen = () => this._setState('open');
      const listen = (type) => (ev) => {
        // EventSource fires its own connection failures as `error` too, as plain Events: only
        // a MessageEvent is the server's `error` event.
        if (settled || !(ev instanceof MessageEvent)) return;
        if (this._handle(type, ev.data, ev.lastEventId)) settle({ kind: 'closed' });
      };
      for (const type of EVENT_TYPES) source.addEventListener(type, listen(type));
      source.addEventListener('message', listen('message')); // untyped: onEvent only
      // Every error closes the EventSource: reconnecting is ours (back-off, give up on 4xx),
      // and a reconnection of its own would resend our `last_event_id` query over its header.
      source.onerror = (ev) => {
        if (settled || ev instanceof MessageEvent) return; // the server's `error` event
        source.close();
        this._probe().then(settle);
      };
    });
  }

  /** EventSource hides why it failed: the status route tells 204-like ends and 4xx apart. */
  async _probe() {
    let response;
    try {
      response = await fetch(this._readUrl(this.statusUrl, { sendsHeaders: true }), this._fetchInit({ headers: this._headers({ Accept: 'application/json' }) }));
    } catch (err) {
      return { kind: 'retry', error: networkError(err) };
    }
    if (!response.ok) {
      const error = await httpError(response);
      const retryAfter = parseRetryAfter(response.headers.get('Retry-After'));
      return error.retryable ? { kind: 'retry', error, retryAfter } : { kind: 'fatal', error };
    }
    let info = null;
    try {
      info = await response.json();
    } catch {
      // fall through: retry
    }
    if (info && info.status !== 'running' && String(info.last_event_id) === this.lastEventId) {
      return { kind: 'finished' };
    }
    return {
      kind: 'retry',
      error: { code: 'incomplete', message: 'the connection closed before the stream ended', retryable: true },
    };
  }
}

/**
 * Start a generation (`POST /v1/streams` with `options.body`) and follow its events.
 *
 * @param {object} options `body` (the request JSON: `messages`, `model`, ...), `baseUrl`,
 *   `mode` ('fetch' | 'eventsource'), `headers`, `withCredentials`, `retryDelay`,
 *   `maxRetryDelay`, `maxRetries`, `idleTimeout`, `signal`, and the callbacks `onStart`,
 *   `onDelta`, `onReasoning`, `onToolCall`, `onUsage`, `onDone`, `onError`, `onCancelled`
 *   (each `(data, event)`), `onEvent(event)`, `onStateChange(state)`, `onClose(info)`.
 * @returns {SsegateStream}
 */
export function startStream(options) {
  if (!options || typeof options.body !== 'object' || options.body === null) {
    throw new TypeError('startStream needs options.body, the request JSON ({messages: [...]})');
  }
  return new SsegateStream(options, { body: options.body });
}

/**
 * Follow an existing stream by id, e.g. after a page reload: pass `options.lastEventId` to get
 * only the events after it. Same options and callbacks as `startStream` (no `body`).
 *
 * @param {string} id the stream id (`st_...`)
 * @returns {SsegateStream}
 */
export function followStream(id, options = {}) {
  if (!id) throw new TypeError('followStream needs a stream id');
  return new SsegateStream(options, { id });
}
