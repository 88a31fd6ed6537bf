"""``/static/ssegate.js``, the browser client library, used directly in real Chromium."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from browser_support import API_KEY, RETRY_MS
from playwright.sync_api import Page

from ssegate import Decoder
from ssegate.testing import DroppingProxy, MockUpstream, RunningServer

pytestmark = pytest.mark.browser

MODES = ["fetch", "eventsource"]

# Runs one stream with every callback recorded; resolves with the log once it closed.
RUN_STREAM = """async ([mode, body, headers, id, lastEventId]) => {
  const m = await import('/static/ssegate.js');
  const log = [];
  const states = [];
  const events = [];
  const options = {
    mode, headers, lastEventId,
    onStateChange: (s) => states.push(s),
    onEvent: (e) => events.push(e.type),
  };
  for (const name of ['onStart', 'onDelta', 'onReasoning', 'onToolCall', 'onUsage', 'onDone',
                      'onError', 'onCancelled']) {
    options[name] = (data, event) => log.push([name, data, event && event.id]);
  }
  const stream = id ? m.followStream(id, options) : m.startStream({...options, body});
  window.__stream = stream;
  const info = await stream.closed;
  return {log, states, events, info: {...info}};
}"""


def run_stream(
    page: Page,
    mode: str,
    *,
    content: str | None = None,
    headers: dict[str, str] | None = None,
    stream_id: str | None = None,
    last_event_id: str | None = None,
) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content or "hi"}]}
    result: dict[str, Any] = page.evaluate(
        RUN_STREAM, [mode, body, headers or {}, stream_id, last_event_id]
    )
    return result


def texts(log: list[Any], name: str) -> str:
    return "".join(data["text"] for callback, data, _ in log if callback == name)


@pytest.mark.parametrize("mode", MODES)
def test_client_streams_a_generation_with_typed_callbacks(
    page: Page, proxy: DroppingProxy, mock: MockUpstream, mode: str
) -> None:
    page.goto(proxy.url + "/")
    result = run_stream(
        page,
        mode,
        content="[[reasoning:3]][[tokens:12]][[interval_ms:5]][[lang:mixed]][[tool_call]]",
        headers={"Authorization": "Bearer test-key"},
    )
    sent = mock.requests[0]
    log = result["log"]
    assert texts(log, "onDelta") == sent.text
    assert texts(log, "onReasoning") == sent.reasoning
    names = [callback for callback, _, _ in log]
    assert names[0] == "onStart"
    assert names[-2:] == ["onUsage", "onDone"]
    assert "onToolCall" in names
    assert names.index("onReasoning") < names.index("onDelta") < names.index("onToolCall")
    ids = [int(event_id) for _, _, event_id in log]
    assert ids == list(range(1, len(log) + 1))  # every event once, in order
    assert len(result["events"]) == len(log)
    start = log[0][1]
    assert start["model"] == "mock"
    assert result["states"] == ["connecting", "open", "closed"]
    info = result["info"]
    assert info["reason"] == "done"
    assert info["streamId"] == start["stream_id"]
    assert info["lastEventId"] == str(len(log))
    # fetch mode sends the caller's headers on every request; EventSource cannot on its GET.
    assert proxy.sent(b"post /v1/streams ")[0].count(b"authorization: bearer test-key") == 1
    follows = proxy.sent(b"get /v1/streams/")
    assert follows
    assert all((b"authorization: bearer test-key" in head) == (mode == "fetch") for head in follows)


@pytest.mark.parametrize("mode", MODES)
def test_client_cancel_stops_the_stream_on_the_server(
    page: Page, gateway: RunningServer, mock: MockUpstream, mode: str
) -> None:
    page.goto(gateway.url + "/")
    result = page.evaluate(
        """async (mode) => {
          const m = await import('/static/ssegate.js');
          let deltas = 0, cancelled = 0, closes = 0, status = null;
          const states = [];
          const stream = m.startStream({
            mode, body: {messages: [{role: 'user', content: '[[tokens:500]][[interval_ms:20]]'}]},
            onDelta: () => {
              deltas += 1;
              if (deltas === 3) stream.cancel().then((s) => { status = s; });
            },
            onCancelled: () => { cancelled += 1; },
            onClose: () => { closes += 1; },
            onStateChange: (s) => states.push(s),
          });
          const info = await stream.closed;
          await stream.cancel();
          return {info: {...info}, deltas, cancelled, closes, states, status};
        }""",
        mode,
    )
    assert result["info"]["reason"] == "cancelled"
    assert result["cancelled"] == 1
    assert result["closes"] == 1
    assert result["states"][-1] == "closed"
    assert result["status"]["status"] == "cancelled"
    stream_id = result["info"]["streamId"]
    assert httpx.get(f"{gateway.url}/v1/streams/{stream_id}").json()["status"] == "cancelled"
    mock.wait_for_close(0, timeout=5)
    assert mock.requests[0].cancelled


@pytest.mark.parametrize("mode", MODES)
def test_client_gives_up_at_once_on_a_4xx(page: Page, gateway: RunningServer, mode: str) -> None:
    page.goto(gateway.url + "/")
    follows: list[str] = []
    page.on("request", lambda r: follows.append(r.url) if "st_missing/events" in r.url else None)
    result = run_stream(page, mode, stream_id="st_missing")
    assert result["info"]["reason"] == "error"
    assert result["info"]["error"]["code"] == "not_found"
    assert result["info"]["error"]["status"] == 404
    assert [name for name, _, _ in result["log"]] == ["onError"]
    assert result["states"] == ["connecting", "closed"]
    assert len(follows) == 1  # no hammering


@pytest.mark.parametrize("mode", MODES)
def test_client_stops_on_204_for_a_finished_stream(
    page: Page, gateway: RunningServer, mode: str
) -> None:
    created = httpx.post(
        f"{gateway.url}/v1/streams",
        json={"messages": [{"role": "user", "content": "[[tokens:3]]"}]},
    ).json()
    with httpx.stream("GET", gateway.url + created["events_url"]) as response:
        decoder = Decoder()
        events = [e for chunk in response.iter_bytes() for e in decoder.feed(chunk)]
    last_id = events[-1].id
    assert events[-1].event == "done"
    assert last_id is not None
    page.goto(gateway.url + "/")
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/events" in r.url else None)
    result = run_stream(page, mode, stream_id=created["id"], last_event_id=last_id)
    assert result["info"]["reason"] == "finished"
    assert result["log"] == []
    assert result["states"] == ["connecting", "closed"]
    if mode == "fetch":
        assert statuses == [204]


def test_client_reconnects_with_growing_backoff_then_gives_up(
    page: Page, proxy: DroppingProxy, gateway: RunningServer
) -> None:
    page.goto(proxy.url + "/")
    page.evaluate(
        """() => {
          window.__follows = [];
          const fetch0 = window.fetch;
          window.fetch = (url, init) => {
            if (String(url).endsWith('/events')) window.__follows.push(performance.now());
            return fetch0(url, init);
          };
        }"""
    )
    page.evaluate(
        """async () => {
          const m = await import('/static/ssegate.js');
          window.__states = [];
          window.__deltas = 0;
          window.__stream = m.startStream({
            body: {messages: [{role: 'user', content: '[[tokens:400]][[interval_ms:20]]'}]},
            maxRetries: 2,
            onDelta: () => { window.__deltas += 1; },
            onStateChange: (s) => {
              window.__states.push(s);
              if (s === 'reconnecting') window.__reconnectingAt = performance.now();
            },
          });
        }"""
    )
    page.wait_for_function("() => window.__deltas >= 3")
    proxy.stop()  # the connection drops, and every reconnection is refused
    info = page.evaluate("async () => ({...(await window.__stream.closed)})")
    assert info["reason"] == "error"
    assert info["error"]["code"] == "reconnect_failed"
    states = page.evaluate("() => window.__states")
    assert states == ["connecting", "open", "reconnecting", "closed"]
    # The generation goes on without us: stop it, so it does not outlive the test.
    stream_id = page.evaluate("() => window.__stream.id")
    assert httpx.delete(f"{gateway.url}/v1/streams/{stream_id}").status_code == 200
    follows = page.evaluate("() => window.__follows")
    assert len(follows) == 3  # the first connection, then maxRetries attempts
    reconnecting_at = page.evaluate("() => window.__reconnectingAt")
    first_wait, second_wait = follows[1] - reconnecting_at, follows[2] - follows[1]
    # The server said `retry: 300`: the first wait is that (plus up to 25 % jitter), the
    # next one doubles.
    assert 0.95 * RETRY_MS <= first_wait <= 1.25 * RETRY_MS + 500, first_wait
    assert 0.95 * 2 * RETRY_MS <= second_wait <= 2.5 * RETRY_MS + 500, second_wait


PARSER_CASES: list[bytes] = [
    b"\xef\xbb\xbfdata: a\r\ndata: b\rid: 7\n\nevent: x\ndata:c\r\n\r\n",
    b"id: 1\x00\ndata: nul-id is ignored\n\nid: 2\ndata: two\n\n",
    b"retry: 12a\ndata: r\n\nretry: 345\ndata: s\n\nretry:\n\n",
    b"data\n\ndata:\n\ndata:  two spaces\n\n",
    b": comment\nevent: lonely\n\ndata: the type did not leak\n\n",
    "data: 你好 🚀 ü\n\n".encode(),
    b"\xef\xbb\xbf\xef\xbb\xbfdata: a second BOM is part of the field name\n\ndata: ok\n\n",
    b"id: 5\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
    b"data: a\r\r\ndata: b\n\n\r\n",
    b"data: \xff bad byte\n\nfield-without-colon\ndata: x\n\n",
    b"data: first\ndata: second\ndata\ndata: fourth\n\ndata: unterminated",
]


def python_reference(raw: bytes) -> dict[str, Any]:
    decoder = Decoder()
    events = decoder.feed(raw)
    return {
        "events": [[e.event, e.data, e.id or ""] for e in events],
        "retry": decoder.retry,
        "lastEventId": decoder.last_event_id,
    }


def test_fetch_mode_parser_follows_the_whatwg_rules(page: Page, gateway: RunningServer) -> None:
    """The JS parser agrees with the Python decoder (itself tested against the spec) on tricky
    streams, whole and cut at every byte: CR/LF/CRLF, BOM, NUL in id, retry digits, multi-line
    data, split UTF-8."""
    page.goto(gateway.url + "/")
    results = page.evaluate(
        """async (cases) => {
          const {EventStreamParser} = await import('/static/ssegate.js');
          const run = (bytes, cuts) => {
            const events = [];
            const p = new EventStreamParser((e) => events.push([e.type, e.data, e.lastEventId]));
            let at = 0;
            for (const cut of [...cuts, bytes.length]) {
              p.feed(bytes.subarray(at, cut));
              at = cut;
            }
            p.end();
            return {events, retry: p.retry, lastEventId: p.lastEventId};
          };
          return cases.map((list) => {
            const bytes = new Uint8Array(list);
            const whole = run(bytes, []);
            const outcomes = [whole];
            outcomes.push(run(bytes, [...Array(bytes.length).keys()].slice(1)));  // byte by byte
            for (let i = 1; i < bytes.length; i++) outcomes.push(run(bytes, [i]));
            const same = outcomes.every((o) => JSON.stringify(o) === JSON.stringify(whole));
            return {whole, same};
          });
        }""",
        [list(case) for case in PARSER_CASES],
    )
    for raw, result in zip(PARSER_CASES, results, strict=True):
        assert result["same"], raw
        assert result["whole"] == python_reference(raw), raw
    # Spot checks against the spec itself, not only against our other decoder.
    assert results[0]["whole"]["events"] == [["message", "a\nb", "7"], ["x", "c", "7"]]
    assert results[1]["whole"]["events"][0] == ["message", "nul-id is ignored", ""]
    assert results[2]["whole"]["retry"] == 345
    assert results[3]["whole"]["events"] == [
        ["message", "", ""],
        ["message", "", ""],
        ["message", " two spaces", ""],
    ]
    assert results[6]["whole"]["events"] == [["message", "ok", ""]]
    assert results[10]["whole"]["events"] == [["message", "first\nsecond\n\nfourth", ""]]


@pytest.mark.parametrize("mode", MODES)
def test_client_with_an_api_key_reads_with_the_key_or_the_read_token(
    page: Page, keyed_gateway: RunningServer, mock: MockUpstream, mode: str
) -> None:
    page.goto(keyed_gateway.url + "/")
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    result = run_stream(page, mode, content="[[tokens:6]]", headers=headers)
    assert result["info"]["reason"] == "done"
    assert texts(result["log"], "onDelta") == mock.requests[0].text
    follows = [u for u in urls if "/events" in u]
    assert follows
    # EventSource cannot send the key: it reads with the stream's read token. fetch sends the key.
    assert all(("token=" in u) == (mode == "eventsource") for u in follows), follows
    assert not [u for u in urls if API_KEY in u]  # the key never goes in a URL
    # Stop needs the key itself (a read token cannot cancel).
    cancelled = page.evaluate(
        """async ([mode, headers]) => {
          const m = await import('/static/ssegate.js');
          const stream = m.startStream({
            mode, headers,
            body: {messages: [{role: 'user', content: '[[tokens:500]][[interval_ms:20]]'}]},
            onDelta: () => { if (!window.__asked) { window.__asked = stream.cancel(); } },
          });
          const info = await stream.closed;
          return {reason: info.reason, status: await window.__asked};
        }""",
        [mode, headers],
    )
    assert cancelled["reason"] == "cancelled"
    assert cancelled["status"]["status"] == "cancelled"


def test_client_without_the_key_stops_at_the_401(page: Page, keyed_gateway: RunningServer) -> None:
    page.goto(keyed_gateway.url + "/")
    result = run_stream(page, "fetch")
    assert result["info"]["reason"] == "error"
    assert result["info"]["error"]["status"] == 401
    assert result["states"] == ["connecting", "closed"]
