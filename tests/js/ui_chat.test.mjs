// The Vercel AI SDK's own client code against ssegate's useChat door (POST /v1/ui/chat).
//
// Run by tests/test_ui_chat_js.py with SSEGATE_URL (a gateway whose model is the mock upstream)
// and SSEGATE_MOCK_URL (that mock, whose /_mock/requests says what it really sent). Every chat
// here is the ai package's own: DefaultChatTransport, readUIMessageStream, and AbstractChat (the
// class useChat wraps) on a plain in-memory state. Every part ssegate sends is checked against
// the package's exported uiMessageChunkSchema.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import {
  AbstractChat,
  DefaultChatTransport,
  asSchema,
  readUIMessageStream,
  uiMessageChunkSchema,
} from 'ai';

const GATEWAY = process.env.SSEGATE_URL;
const MOCK = process.env.SSEGATE_MOCK_URL;
assert.ok(GATEWAY && MOCK, 'set SSEGATE_URL and SSEGATE_MOCK_URL');
const API = `${GATEWAY}/v1/ui/chat`;
const chunkSchema = asSchema(uiMessageChunkSchema);

// -- helpers ----------------------------------------------------------------------------------

/** useChat's Chat without React: the same AbstractChat, a plain state. */
class NodeChat extends AbstractChat {
  constructor({ messages = [], ...init }) {
    const state = {
      status: 'ready',
      error: undefined,
      messages,
      pushMessage(message) { this.messages = this.messages.concat(message); },
      popMessage() { this.messages = this.messages.slice(0, -1); },
      replaceMessage(index, message) {
        this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
      },
      snapshot: (thing) => structuredClone(thing),
    };
    super({ ...init, state });
  }
}

const transport = () => new DefaultChatTransport({ api: API });
const nonce = () => `n${randomUUID().slice(0, 8)}`;
const userMessage = (text) => ({ id: randomUUID(), role: 'user', parts: [{ type: 'text', text }] });
const textOf = (message) =>
  message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');

/** What the mock upstream sent for the one request whose prompt holds `word`. */
async function upstreamRecord(word, { ended = true } = {}) {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const records = await (await fetch(`${MOCK}/_mock/requests`)).json();
    const mine = records.filter((r) => JSON.stringify(r.json).includes(word));
    assert.ok(mine.length <= 1, `one upstream request per prompt, got ${mine.length}`);
    if (mine.length === 1 && (!ended || mine[0].ended_at !== null || mine[0].closed_at !== null)) {
      return mine[0];
    }
    await new Promise((resolve) => setTimeout(resolve, 50)); // the mock records as it goes
  }
  throw new Error(`the mock never finished a request with ${word}`);
}

/** The raw UI message stream of a response: every `data:` payload, each checked against the
 * ai package's own chunk schema; `[DONE]` must come last, once. */
async function rawParts(response) {
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  const text = await response.text();
  const blocks = text.split('\n\n').filter((b) => b.trim() !== '');
  const datas = blocks
    .map((block) => block.split('\n').filter((line) => line.startsWith('data: ')))
    .filter((lines) => lines.length > 0)
    .map((lines) => {
      assert.equal(lines.length, 1, 'one data line per part');
      return lines[0].slice('data: '.length);
    });
  assert.equal(datas.at(-1), '[DONE]', 'the stream ends with data: [DONE]');
  const parts = datas.slice(0, -1).map((data) => JSON.parse(data));
  for (const part of parts) {
    const checked = await chunkSchema.validate(part);
    assert.ok(checked.success, `not a UIMessageChunk: ${JSON.stringify(part)}: ${checked.error}`);
  }
  assert.ok(!parts.some((p) => p === '[DONE]'));
  return parts;
}

const post = (body) =>
  fetch(API, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const request = (chatId, text) => ({ id: chatId, messages: [userMessage(text)], trigger: 'submit-message' });

/** Wait (bounded) until `check()` holds; the chat's callbacks tell us nothing finer. */
async function until(check, what) {
  for (let i = 0; i < 200; i += 1) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// -- the answer assembles -----------------------------------------------------------------------

test('a streamed answer assembles into a UIMessage whose text is the upstream\'s', async () => {
  const word = nonce();
  const chat = new NodeChat({ id: randomUUID(), transport: transport() });
  await chat.sendMessage({ text: `${word} [[tokens:40]] [[lang:mixed]]` });
  assert.equal(chat.status, 'ready', String(chat.error));
  const sent = await upstreamRecord(word);
  assert.equal(chat.messages.length, 2);
  const answer = chat.messages[1];
  assert.equal(answer.role, 'assistant');
  assert.equal(textOf(answer), sent.text);
  assert.ok(sent.text.includes('中文·🚀'));
  assert.equal(answer.id, answer.metadata.streamId, 'the message id is the ssegate stream id');
  assert.deepEqual(answer.metadata.usage, {
    inputTokens: sent.usage.prompt_tokens,
    outputTokens: sent.usage.completion_tokens,
    totalTokens: sent.usage.prompt_tokens + sent.usage.completion_tokens,
  });
  // The second turn sends the whole conversation back, and it converts.
  const word2 = nonce();
  await chat.sendMessage({ text: `${word2} [[tokens:3]]` });
  const second = await upstreamRecord(word2);
  assert.deepEqual(
    second.json.messages.map((m) => [m.role, m.content]),
    [['user', `${word} [[tokens:40]] [[lang:mixed]]`], ['assistant', sent.text], ['user', `${word2} [[tokens:3]]`]],
  );
  assert.equal(textOf(chat.messages[3]), second.text);
});

test('reasoning and tool-call parts assemble', async () => {
  const word = nonce();
  const chat = new NodeChat({ id: randomUUID(), transport: transport() });
  await chat.sendMessage({ text: `${word} [[reasoning:3]] [[tokens:4]] [[tool_call:get_weather]]` });
  const sent = await upstreamRecord(word);
  const parts = chat.messages[1].parts;
  assert.deepEqual(parts.map((p) => p.type), ['step-start', 'reasoning', 'text', 'tool-get_weather']);
  assert.equal(parts[1].text, sent.reasoning);
  assert.equal(parts[1].state, 'done');
  assert.equal(parts[2].text, sent.text);
  assert.equal(parts[3].state, 'input-available');
  assert.equal(parts[3].toolCallId, 'call_mock_0');
  assert.deepEqual(parts[3].input, { city: 'Paris', unit: 'celsius' });
  // The tool's result goes back as a tool message, and the conversation goes on.
  await chat.addToolOutput({ tool: 'get_weather', toolCallId: 'call_mock_0', output: { celsius: 21 } });
  const word2 = nonce();
  await chat.sendMessage({ text: `${word2} [[tokens:2]]` });
  const next = await upstreamRecord(word2);
  const roles = next.json.messages.map((m) => m.role);
  assert.deepEqual(roles, ['user', 'assistant', 'tool', 'user']);
  assert.deepEqual(next.json.messages[1].tool_calls, [
    { id: 'call_mock_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' } },
  ]);
  assert.deepEqual(next.json.messages[2], { role: 'tool', tool_call_id: 'call_mock_0', content: '{"celsius":21}' });
});

// -- faults ----------------------------------------------------------------------------------

for (const [fault, expected] of [
  ['[[fault:stream_error]] [[after:3]]', /overloaded|error/i],
  ['[[fault:http_429]]', /429/],
]) {
  test(`an upstream fault (${fault}) arrives as an error part and the SDK reports it`, async () => {
    const word = nonce();
    const errors = [];
    const chat = new NodeChat({ id: randomUUID(), transport: transport(), onError: (e) => errors.push(e) });
    await chat.sendMessage({ text: `${word} [[tokens:20]] ${fault}` });
    assert.equal(chat.status, 'error');
    assert.equal(errors.length, 1);
    assert.equal(chat.error, errors[0]);
    assert.match(chat.error.message, expected);
    // The same stream, read raw: an error part, then finish, then [DONE].
    const transportErrors = [];
    const stream = await transport().sendMessages({
      chatId: randomUUID(), trigger: 'submit-message', messageId: undefined,
      messages: [userMessage(`${nonce()} [[tokens:20]] ${fault}`)], abortSignal: undefined,
    });
    const messages = [];
    for await (const m of readUIMessageStream({ stream, onError: (e) => transportErrors.push(e) })) messages.push(m);
    assert.equal(transportErrors.length, 1);
    assert.equal(transportErrors[0].message, chat.error.message);
    assert.ok(messages.at(-1).metadata.errorCode, 'the gateway error code is in the metadata');
  });
}

// -- resume ----------------------------------------------------------------------------------

test('reconnectToStream after a cut returns the complete message, nothing doubled', async () => {
  const word = nonce();
  const chatId = randomUUID();
  // The first page: reads a few parts, then its connection is cut (the fetch aborted).
  const before = new NodeChat({ id: chatId, transport: transport() });
  const sending = before.sendMessage({ text: `${word} [[tokens:60]] [[interval_ms:15]]` });
  await until(() => before.messages.length === 2 && textOf(before.messages[1]).length > 0, 'some text');
  await before.stop();
  await sending;
  const partial = textOf(before.messages[1]);

  // The transport's reconnect replays the stream from its start: the whole answer, once.
  const stream = await transport().reconnectToStream({ chatId });
  assert.ok(stream, 'the chat still has its running stream');
  let last;
  for await (const message of readUIMessageStream({ stream })) last = message;
  const sent = await upstreamRecord(word);
  assert.equal(sent.cancelled, false, 'the cut did not stop the generation');
  assert.equal(textOf(last), sent.text);
  assert.ok(sent.text.startsWith(partial) && partial.length < sent.text.length);
  assert.equal(last.id, before.messages[1].id);

  // Finished now: nothing to resume.
  assert.equal(await transport().reconnectToStream({ chatId }), null);
});

test('useChat\'s resume after a reload, with or without the partial answer saved', async () => {
  for (const keepPartial of [false, true]) {
    const word = nonce();
    const chatId = randomUUID();
    const before = new NodeChat({ id: chatId, transport: transport() });
    const sending = before.sendMessage({ text: `${word} [[tokens:50]] [[interval_ms:15]]` });
    await until(() => before.messages.length === 2 && textOf(before.messages[1]).length > 0, 'text');
    await before.stop(); // the reload: the page's fetch is gone
    await sending;
    const saved = structuredClone(keepPartial ? before.messages : before.messages.slice(0, 1));

    const after = new NodeChat({ id: chatId, transport: transport(), messages: saved });
    await after.resumeStream(); // what useChat({resume: true}) does on mount
    assert.equal(after.status, 'ready', String(after.error));
    const sent = await upstreamRecord(word);
    assert.equal(after.messages.length, 2, `keepPartial=${keepPartial}: one answer`);
    assert.equal(textOf(after.messages[1]), sent.text);
  }
});

test('204 with no active stream: the chat resumes nothing', async () => {
  const response = await fetch(`${API}/${randomUUID()}/stream`);
  assert.equal(response.status, 204);
  assert.equal(await transport().reconnectToStream({ chatId: randomUUID() }), null);
  const chat = new NodeChat({ id: randomUUID(), transport: transport(), messages: [userMessage('hi')] });
  await chat.resumeStream();
  assert.equal(chat.status, 'ready');
  assert.equal(chat.messages.length, 1);
});

// -- every part ssegate emits validates against the package's schema ---------------------------

test('every part of every kind of stream is a UIMessageChunk of the ai package', async () => {
  const seen = new Set();
  const scenarios = [
    '[[tokens:5]]',
    '[[reasoning:2]] [[tokens:2]] [[tool_call]]',
    '[[tokens:0]] [[tool_call:lookup]]',
    '[[tokens:6]] [[fault:stream_error]] [[after:2]]',
    '[[fault:http_500]]',
    '[[tokens:3]] [[finish:length]]',
    '[[tokens:3]] [[usage:off]]',
  ];
  for (const scenario of scenarios) {
    const parts = await rawParts(await post(request(randomUUID(), `${nonce()} ${scenario}`)));
    parts.forEach((p) => seen.add(p.type));
    assert.equal(parts[0].type, 'start');
    assert.ok(['finish'].includes(parts.at(-1).type), JSON.stringify(parts.at(-1)));
  }
  // A stopped stream (DELETE), read raw: ends with abort; its resume (GET) replays it whole.
  const chatId = randomUUID();
  const live = await post(request(chatId, `${nonce()} [[tokens:200]] [[interval_ms:20]]`));
  const resumed = await fetch(`${API}/${chatId}/stream`);
  const stopped = await fetch(`${API}/${chatId}/stream`, { method: 'DELETE' });
  assert.equal(stopped.status, 200);
  assert.equal((await stopped.json()).status, 'cancelled');
  const [first, second] = [await rawParts(live), await rawParts(resumed)];
  assert.equal(first.at(-1).type, 'abort');
  assert.deepEqual(second, first, 'a resume replays the same parts');
  first.forEach((p) => seen.add(p.type));
  assert.deepEqual([...seen].sort(), [
    'abort', 'error', 'finish', 'finish-step', 'message-metadata', 'reasoning-delta',
    'reasoning-end', 'reasoning-start', 'start', 'start-step', 'text-delta', 'text-end',
    'text-start', 'tool-input-available', 'tool-input-delta', 'tool-input-start',
  ]);
});
