/**
 * The chat page: one conversation kept in localStorage, answers streamed with ssegate.js and
 * rendered as sanitised markdown as they grow.
 *
 * `?mode=eventsource` (or the settings dialog) follows streams with EventSource instead of
 * fetch. A reload in the middle of an answer resumes it from the last event id it had saved.
 */
import { followStream, startStream } from './ssegate.js';
import { renderMarkdown } from './render.js';

const STORE_KEY = 'ssegate.chat.v1';
const SETTINGS_KEY = 'ssegate.settings.v1';
const DEMO_MODEL = 'ssegate-demo';
// Where the gateway is: this page's directory, so the page also works under a path prefix.
const BASE = new URL('.', window.location.href).href.replace(/\/+$/, '');

const $ = (selector) => document.querySelector(selector);
const els = {
  scroller: $('#scroller'),
  empty: $('#empty'),
  messages: $('#messages'),
  form: $('#composer'),
  input: $('#input'),
  send: $('#send'),
  stop: $('#stop'),
  newChat: $('#new-chat'),
  modelSelect: $('#model-select'),
  modelName: $('#model-name'),
  demoBadge: $('#demo-badge'),
  settings: $('#settings'),
  settingsForm: $('#settings-form'),
  settingsButton: $('#settings-button'),
  settingsCancel: $('#settings-cancel'),
  apiKey: $('#api-key'),
};

// ---- persistence ---------------------------------------------------------------------------

function loadJson(key, fallback) {
  try {
    const value = JSON.parse(window.localStorage.getItem(key));
    return value && typeof value === 'object' ? value : fallback;
  } catch {
    return fallback;
  }
}

function saveJson(key, value) {
  try {
    window.localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the conversation just is not kept.
  }
}

const chat = loadJson(STORE_KEY, { messages: [], model: null });
if (!Array.isArray(chat.messages)) chat.messages = [];
const settings = loadJson(SETTINGS_KEY, { apiKey: '', mode: 'fetch' });
const urlMode = new URLSearchParams(window.location.search).get('mode');

function mode() {
  const wanted = urlMode || settings.mode;
  return wanted === 'eventsource' ? 'eventsource' : 'fetch';
}

function authHeaders() {
  return settings.apiKey ? { Authorization: `Bearer ${settings.apiKey}` } : {};
}

let saveTimer = null;
function saveSoon() {
  // While tokens stream, write at most twice a second; content and lastEventId are updated in
  // the same turn, so every snapshot is consistent for a resume after a reload.
  if (saveTimer) return;
  saveTimer = setTimeout(saveNow, 500);
}
function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  saveJson(STORE_KEY, chat);
}

// ---- views ---------------------------------------------------------------------------------

const views = new Map(); // message object → its DOM nodes
let active = null; // {msg, stream, stopped}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function buildUser(msg) {
  const li = el('li', 'msg user');
  li.append(el('div', 'bubble', msg.content));
  return { li };
}

function buildAssistant(msg) {
  const li = el('li', 'msg assistant');
  const reasoning = el('details', 'reasoning');
  const summary = el('summary', null, 'Reasoning');
  const reasoningText = el('div', 'reasoning-text');
  reasoning.append(summary, reasoningText);
  reasoning.hidden = true;
  // Once the reader opens or closes it, the page stops opening/closing it for them.
  summary.addEventListener('click', () => { reasoning.dataset.touched = '1'; });
  const tools = el('div', 'tool-calls');
  const answer = el('div', 'answer');
  const caret = el('span', 'caret');
  caret.setAttribute('aria-hidden', 'true');
  const errorBox = el('div', 'error-box');
  errorBox.setAttribute('role', 'alert');
  const errorText = el('span', 'error-text');
  const retry = el('button', 'retry', 'Retry');
  retry.type = 'button';
  retry.addEventListener('click', () => regenerate(msg));
  errorBox.append(errorText, retry);
  errorBox.hidden = true;
  const status = el('div', 'status-row');
  const conn = el('span', 'conn');
  conn.setAttribute('role', 'status');
  const meta = el('span', 'meta');
  status.append(conn, meta);
  li.append(reasoning, tools, answer, caret, errorBox, status);
  return { li, reasoning, summary, reasoningText, tools, answer, caret, errorBox, errorText, retry, conn, meta };
}

function viewOf(msg) {
  let view = views.get(msg);
  if (!view) {
    view = msg.role === 'user' ? buildUser(msg) : buildAssistant(msg);
    views.set(msg, view);
  }
  return view;
}

function renderAll() {
  els.messages.replaceChildren();
  views.clear();
  for (const msg of chat.messages) {
    const view = viewOf(msg);
    els.messages.append(view.li);
    if (msg.role === 'assistant') updateAssistant(msg, { final: msg.status !== 'streaming' });
  }
  els.empty.hidden = chat.messages.length > 0;
  updateControls();
}

function addCopyButtons(answer) {
  for (const pre of answer.querySelectorAll('pre')) {
    const button = el('button', 'copy', 'Copy');
    button.type = 'button';
    button.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(pre.querySelector('code')?.innerText ?? pre.innerText);
        button.textContent = 'Copied';
      } catch {
        button.textContent = 'Press Ctrl+C';
      }
      setTimeout(() => { button.textContent = 'Copy'; }, 1500);
    });
    pre.append(button);
  }
}

function formatSeconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function metaText(msg) {
  const m = msg.metrics || {};
  const parts = [];
  if (msg.model) parts.push(msg.model);
  if (m.ttft != null) parts.push(`${formatSeconds(m.ttft)} to first token`);
  if (m.tps != null) parts.push(`${m.tps.toFixed(1)} tokens/s`);
  if (m.usage) parts.push(`${m.usage.prompt_tokens ?? '?'} in · ${m.usage.completion_tokens ?? '?'} out tokens`);
  return parts.join(' · ');
}

const CONN_LABELS = {
  connecting: 'connecting…',
  reconnecting: 'reconnecting…',
  open: '',
};

function updateAssistant(msg, { final = false } = {}) {
  const view = viewOf(msg);
  const streaming = msg.status === 'streaming';
  view.li.classList.toggle('streaming', streaming);
  view.li.dataset.status = msg.status;
  if (msg.streamId) view.li.dataset.streamId = msg.streamId;
  else delete view.li.dataset.streamId;

  view.answer.innerHTML = renderMarkdown(msg.content || '');
  if (final) addCopyButtons(view.answer);
  placeCaret(view, streaming && !!msg.content);

  view.reasoning.hidden = !msg.reasoning;
  view.reasoningText.textContent = msg.reasoning || '';
  if (!view.reasoning.dataset.touched) {
    view.reasoning.open = streaming && !!msg.reasoning && !msg.content;
  }
  view.summary.textContent = streaming && !msg.content && msg.reasoning ? 'Reasoning…' : 'Reasoning';

  view.tools.replaceChildren(...(msg.toolCalls || []).map((call) => el('div', 'tool-call',
    `🔧 ${call.name || 'tool'}(${call.arguments || ''})`)));

  let conn = '';
  if (streaming) conn = CONN_LABELS[msg.conn] ?? '';
  else if (msg.status === 'cancelled') conn = 'stopped';
  view.conn.textContent = conn;
  view.conn.className = `conn ${streaming ? msg.conn || '' : msg.status}`.trim();
  if (msg.status === 'cancelled') view.conn.classList.add('stopped');

  view.meta.textContent = metaText(msg);

  const err = msg.error;
  view.errorBox.hidden = !err;
  if (err) {
    view.errorText.replaceChildren(document.createTextNode(`${err.message || 'Something went wrong.'} `));
    if (err.code) view.errorText.append(el('code', null, err.code));
    const last = chat.messages[chat.messages.length - 1] === msg;
    view.retry.hidden = !last;
    view.retry.disabled = !!active;
  }
}

// The caret sits at the end of the text as it grows (inside the last paragraph, list item or
// code block); before the first token it stands alone.
const CARET_HOSTS = new Set(['P', 'LI', 'CODE', 'TD', 'TH', 'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'BLOCKQUOTE', 'UL', 'OL', 'PRE', 'TABLE', 'TBODY', 'TR', 'THEAD', 'DEL', 'EM', 'STRONG', 'A']);
function placeCaret(view, inline) {
  let host = view.li;
  if (inline) {
    host = view.answer;
    for (;;) {
      let last = host.lastChild;
      while (last && last.nodeType === Node.TEXT_NODE && !last.data.trim()) last = last.previousSibling;
      if (!last || last.nodeType !== Node.ELEMENT_NODE || !CARET_HOSTS.has(last.tagName)) break;
      host = last; // the text ends inside this element: go in
    }
  }
  if (host === view.li) view.li.insertBefore(view.caret, view.errorBox);
  else host.append(view.caret);
}

// Re-render at most once per frame, however fast tokens come.
const dirty = new Set();
let frame = 0;
function scheduleRender(msg) {
  dirty.add(msg);
  if (!frame) frame = requestAnimationFrame(flush);
}
function flush() {
  frame = 0;
  const stick = nearBottom();
  for (const msg of dirty) updateAssistant(msg);
  dirty.clear();
  if (stick) scrollToBottom();
}

function nearBottom() {
  const s = els.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}
function scrollToBottom() {
  els.scroller.scrollTop = els.scroller.scrollHeight;
}

function updateControls() {
  const busy = !!active;
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.send.disabled = busy || !els.input.value.trim();
  for (const msg of chat.messages) {
    if (msg.role === 'assistant' && msg.error) viewOf(msg).retry.disabled = busy;
  }
}

// ---- streaming -----------------------------------------------------------------------------

function history(upTo) {
  const out = [];
  for (const msg of chat.messages) {
    if (msg === upTo) break;
    if (msg.role === 'user') out.push({ role: 'user', content: msg.content });
    else if (msg.role === 'assistant' && msg.content) out.push({ role: 'assistant', content: msg.content });
  }
  return out;
}

// The stream's last event id before a resume: the events up to it were made while the page was
// away and arrive as one burst. Unknown (the status failed): Infinity, nothing counts as live.
async function lastIdBeforeResume(msg) {
  try {
    const url = new URL(`${BASE}/v1/streams/${encodeURIComponent(msg.streamId)}`);
    if (!settings.apiKey && msg.token) url.searchParams.set('token', msg.token);
    const response = await fetch(url, { headers: authHeaders(), cache: 'no-store' });
    if (response.ok) {
      const id = Number((await response.json()).last_event_id);
      if (Number.isFinite(id)) return id;
    }
  } catch {
    // Offline or refused: following the stream will say why.
  }
  return Infinity;
}

function run(msg, { resume = false } = {}) {
  const started = performance.now();
  // Tokens per second counts only tokens that arrived live, over the time they took to arrive:
  // on a resume the events the stream already had come as a burst (ids up to `liveAfter`).
  let liveAfter = resume ? Infinity : 0;
  let first = null;
  let last = null;
  let live = 0; // token events (delta, reasoning, tool call) that arrived live
  msg.status = 'streaming';
  msg.error = null;
  msg.conn = 'connecting';
  msg.metrics = resume ? msg.metrics || {} : {};
  const tick = (event) => {
    // Every token event of the answer, saved with it: this run's share of `usage`.
    msg.metrics.events = (msg.metrics.events || 0) + 1;
    if (Number(event.id) <= liveAfter) return;
    live += 1;
    last = performance.now();
    if (first === null) {
      first = last;
      if (!resume) msg.metrics.ttft = first - started;
    }
  };
  const options = {
    baseUrl: BASE,
    mode: mode(),
    headers: authHeaders(),
    onEvent: () => {
      msg.lastEventId = stream.lastEventId;
      saveSoon();
    },
    onStart: (data) => {
      msg.streamId = data.stream_id || msg.streamId;
      if (data.token) msg.token = data.token; // lets EventSource mode resume after a reload
      if (data.model) {
        msg.model = data.model;
        showModel(data.model);
      }
      scheduleRender(msg);
    },
    onDelta: ({ text }, event) => {
      tick(event);
      msg.content += text;
      scheduleRender(msg);
    },
    onReasoning: ({ text }, event) => {
      tick(event);
      msg.reasoning = (msg.reasoning || '') + text;
      scheduleRender(msg);
    },
    onToolCall: (data, event) => {
      tick(event);
      msg.toolCalls = msg.toolCalls || [];
      const call = msg.toolCalls.find((c) => c.index === data.index);
      if (call) {
        call.arguments = (call.arguments || '') + (data.arguments || '');
        call.name = call.name || data.name;
      } else {
        msg.toolCalls.push({ index: data.index, name: data.name, arguments: data.arguments || '' });
      }
      scheduleRender(msg);
    },
    onUsage: (usage) => {
      msg.metrics.usage = usage;
    },
    onError: (error) => {
      let message = error.message;
      if (error.status === 401) message += ' Enter an API key in Settings, then Retry.';
      msg.error = { code: error.code, message, retryable: !!error.retryable };
    },
    onStateChange: (state) => {
      msg.conn = state;
      scheduleRender(msg);
    },
    onClose: (info) => {
      if (!msg.streamId && info.streamId) msg.streamId = info.streamId;
      msg.status = { done: 'done', finished: 'done', cancelled: 'cancelled', closed: 'cancelled' }[info.reason] || 'error';
      if (msg.status === 'error' && !msg.error) msg.error = { code: 'unknown', message: 'The stream failed.' };
      // With usage: the live events' share of the answer's tokens; else one token an event.
      const usage = msg.metrics.usage?.completion_tokens;
      const count = usage != null && msg.metrics.events ? (usage * live) / msg.metrics.events : live;
      if (first !== null && last > first && count > 1) {
        msg.metrics.tps = (count - 1) / ((last - first) / 1000);
      }
      if (active && active.msg === msg) active = null;
      saveNow();
      cancelAnimationFrame(frame);
      frame = 0;
      dirty.delete(msg);
      const stick = nearBottom();
      updateAssistant(msg, { final: true });
      if (stick) scrollToBottom();
      updateControls();
      els.input.focus();
    },
  };
  let stream = null;
  const current = { msg, stream, stopped: false };
  active = current;
  if (resume) {
    lastIdBeforeResume(msg).then((id) => {
      liveAfter = id;
      stream = followStream(msg.streamId, {
        ...options, lastEventId: msg.lastEventId || '', token: msg.token || null,
      });
      current.stream = stream;
      if (current.stopped) stream.cancel(); // Stop or New chat while we asked
    });
  } else {
    const body = { messages: history(msg) };
    if (chat.model) body.model = chat.model;
    stream = startStream({ ...options, body });
    current.stream = stream;
  }
  updateControls();
  scheduleRender(msg);
}

function send(text) {
  if (active || !text.trim()) return;
  const user = { role: 'user', content: text };
  const msg = { role: 'assistant', content: '', reasoning: '', status: 'streaming' };
  chat.messages.push(user, msg);
  els.empty.hidden = true;
  els.messages.append(viewOf(user).li, viewOf(msg).li);
  els.input.value = '';
  autosize();
  run(msg);
  saveNow();
  scrollToBottom();
}

function regenerate(msg) {
  if (active) return;
  Object.assign(msg, {
    content: '', reasoning: '', toolCalls: [], error: null, streamId: null, lastEventId: '', token: null,
    metrics: {},
  });
  const view = viewOf(msg);
  delete view.reasoning.dataset.touched;
  run(msg);
  saveNow();
}

function stop() {
  if (!active) return;
  active.stopped = true;
  active.stream?.cancel();
}

function newChat() {
  stop(); // nobody will read the rest: stop it on the server
  active = null;
  chat.messages = [];
  saveNow();
  renderAll();
  els.input.focus();
}

// ---- model -------------------------------------------------------------------------------

function showModel(name) {
  if (!els.modelSelect.hidden && [...els.modelSelect.options].some((o) => o.value === name)) {
    els.modelSelect.value = name;
  } else {
    els.modelName.textContent = name;
  }
  els.demoBadge.hidden = name !== DEMO_MODEL;
}

async function loadModels() {
  let ids = [];
  try {
    const response = await fetch(`${BASE}/v1/models`, { headers: authHeaders(), cache: 'no-store' });
    if (response.ok) {
      const body = await response.json();
      ids = (body.data || []).map((m) => m && m.id).filter((id) => typeof id === 'string');
    }
  } catch {
    // No model list (older gateway, or offline): the start event will name the model.
  }
  if (ids.length > 1) {
    els.modelSelect.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (!ids.includes(chat.model)) chat.model = null;
    els.modelSelect.value = chat.model || ids[0];
    els.modelSelect.hidden = false;
    els.modelName.hidden = true;
    showModel(els.modelSelect.value);
  } else {
    if (ids.length === 0 || chat.model !== ids[0]) chat.model = null;
    const lastModel = [...chat.messages].reverse().find((m) => m.model)?.model;
    const name = ids[0] || lastModel;
    els.modelName.textContent = name || 'default model';
    els.demoBadge.hidden = name !== DEMO_MODEL;
  }
}

// ---- input -------------------------------------------------------------------------------

function autosize() {
  els.input.style.height = 'auto';
  els.input.style.height = `${Math.min(els.input.scrollHeight, 192)}px`;
  updateControls();
}

els.input.addEventListener('input', autosize);
els.input.addEventListener('keydown', (event) => {
  // isComposing: Enter that picks a candidate in a Chinese/Japanese IME must not send.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    send(els.input.value);
  }
});
els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  send(els.input.value);
});
els.stop.addEventListener('click', stop);
els.newChat.addEventListener('click', newChat);
els.modelSelect.addEventListener('change', () => {
  chat.model = els.modelSelect.value;
  showModel(chat.model);
  saveNow();
});
for (const chip of document.querySelectorAll('.chip')) {
  chip.addEventListener('click', () => send(chip.textContent));
}

els.settingsButton.addEventListener('click', () => {
  els.apiKey.value = settings.apiKey || '';
  for (const radio of els.settingsForm.elements.mode) radio.checked = radio.value === mode();
  els.settings.showModal();
});
els.settingsCancel.addEventListener('click', () => els.settings.close());
els.settingsForm.addEventListener('submit', (event) => {
  event.preventDefault();
  settings.apiKey = els.apiKey.value.trim();
  settings.mode = els.settingsForm.elements.mode.value || 'fetch';
  saveJson(SETTINGS_KEY, settings);
  els.settings.close();
  loadModels();
});

// ---- start -------------------------------------------------------------------------------

renderAll();
loadModels();
const pending = chat.messages[chat.messages.length - 1];
if (pending && pending.role === 'assistant' && pending.status === 'streaming') {
  if (pending.streamId) {
    run(pending, { resume: true }); // a reload mid-answer: pick it up after the saved event id
  } else {
    pending.status = 'error';
    pending.error = { code: 'interrupted', message: 'The page was closed before the answer started.' };
    updateAssistant(pending, { final: true });
    saveNow();
  }
}
scrollToBottom();
els.input.focus();
