"""EventSourceResponse over real uvicorn (httpx and raw sockets) and a raw ASGI harness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx
import pytest
import uvicorn
from anyio import wait_all_tasks_blocked
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ssegate import (
    SHUTDOWN_STATE_KEY,
    CloseReason,
    EventSourceResponse,
    EventStreamOptions,
    ShutdownSignal,
)
from ssegate.codec import Decoder, ServerSentEvent
from ssegate.server import ShutdownAwareServer
from ssegate.testing import run_server

Message = dict[str, Any]


def _app(endpoint: Any) -> Starlette:
    return Starlette(routes=[Route("/", endpoint, methods=["GET", "HEAD"])])


def _read_until(chunks: Iterator[bytes], marker: bytes) -> bytes:
    got = b""
    for chunk in chunks:
        got += chunk
        if marker in got:
            return got
    raise AssertionError(f"stream ended before {marker!r}; got {got!r}")


def _raw_get(port: int, path: str = "/", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The async tests of this module run on both anyio backends."""
    return str(request.param)


# -- headers and encoding -----------------------------------------------------------------


def test_headers_are_sent_at_once_and_configurable() -> None:
    release = threading.Event()

    async def events() -> AsyncIterator[str]:
        await anyio.to_thread.run_sync(release.wait)
        yield "late"

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(
            events(),
            status_code=201,
            headers={"X-Stream": "abc", "Cache-Control": "no-store"},
        )

    with run_server(_app(endpoint)) as srv, httpx.stream("GET", srv.url) as response:
        # The headers arrived although the content has yielded nothing yet.
        assert response.status_code == 201
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"  # the caller's value wins
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-stream"] == "abc"
        assert "content-length" not in response.headers
        assert "connection" not in response.headers
        release.set()
        assert response.read() == b"data: late\n\n"


def test_default_headers() -> None:
    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(["x"])  # a sync iterable, run in the thread pool

    with run_server(_app(endpoint)) as srv:
        response = httpx.get(srv.url)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.content == b"data: x\n\n"


def test_every_item_type_is_encoded() -> None:
    async def events() -> AsyncIterator[Any]:
        yield "plain"
        yield "two\nlines"
        yield {"text": "héllo", "n": [1, 2]}
        yield [1, "a\nb"]
        yield ServerSentEvent(data="d", event="delta", id="7")
        yield b"event: raw\ndata: as is\n\n"
        yield bytearray(b"data: ba\n\n")

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping_interval=None)

    with run_server(_app(endpoint)) as srv:
        body = httpx.get(srv.url).content
    assert body == (
        b"data: plain\n\n"
        b"data: two\ndata: lines\n\n"
        b'data: {"text":"h\xc3\xa9llo","n":[1,2]}\n\n'
        b'data: [1,"a\\nb"]\n\n'
        b"id: 7\nevent: delta\ndata: d\n\n"
        b"event: raw\ndata: as is\n\n"
        b"data: ba\n\n"
    )


def test_retry_is_written_in_the_first_events_block_not_alone() -> None:
    # A block with retry alone dispatches nothing by the spec, but httpx-sse and
    # fetch-event-source report it as an empty message.
    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(["a", "b"], retry=1500)

    with run_server(_app(endpoint)) as srv:
        body = httpx.get(srv.url).content
    assert body == b"retry: 1500\ndata: a\n\ndata: b\n\n"
    decoder = Decoder()
    assert [e.data for e in decoder.feed(body)] == ["a", "b"]
    assert decoder.retry == 1500


def test_head_gets_headers_and_no_stream() -> None:
    async def events() -> AsyncIterator[str]:
        yield "never sent"
        await anyio.sleep_forever()

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events())

    with run_server(_app(endpoint)) as srv:
        response = httpx.head(srv.url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""


# -- heartbeat ----------------------------------------------------------------------------


def test_heartbeat_from_the_first_byte_while_idle() -> None:
    async def events() -> AsyncIterator[str]:
        await anyio.sleep_forever()
        yield "never"

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping_interval=0.2)

    with run_server(_app(endpoint)) as srv, httpx.stream("GET", srv.url) as response:
        started = time.monotonic()
        chunks = response.iter_raw()
        first = next(chunks)
        assert first == b": ping\n\n"  # before any event: a reasoning model may think a while
        assert time.monotonic() - started >= 0.15
        assert _read_until(chunks, b": ping") == b": ping\n\n"


def test_the_heartbeat_may_be_an_event() -> None:
    async def events() -> AsyncIterator[str]:
        await anyio.sleep_forever()
        yield "never"

    ping = ServerSentEvent(data='{"type":"ping"}', event="ping")
    options = EventStreamOptions(ping_interval=0.2, ping_event=ping)

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), options=options)

    with run_server(_app(endpoint)) as srv, httpx.stream("GET", srv.url) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b'event: ping\ndata: {"type":"ping"}\n\n'
        assert next(chunks) == b'event: ping\ndata: {"type":"ping"}\n\n'
    with pytest.raises(TypeError, match="ping_event"):
        EventStreamOptions(ping_event=": ping")  # type: ignore[arg-type]


def test_heartbeat_after_silence_between_events() -> None:
    go = anyio.Event()

    async def events() -> AsyncIterator[str]:
        yield "one"
        await go.wait()

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping_interval=0.2)

    with run_server(_app(endpoint)) as srv, httpx.stream("GET", srv.url) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"data: one\n\n"
        assert next(chunks) == b": ping\n\n"


def test_heartbeats_are_written_in_their_own_requests_context() -> None:
    """The watchdog is one loop timer for every stream; the writer it starts for a heartbeat
    still runs in that stream's request context (a ``send`` wrapper sees its variables)."""
    request_id: ContextVar[str] = ContextVar("request_id", default="-")
    seen: list[tuple[bytes, str, str]] = []

    async def events(name: str) -> AsyncIterator[str]:
        yield name
        await anyio.sleep_forever()

    async def endpoint(request: Request) -> Response:
        name = request.query_params["id"]
        request_id.set(name)
        return EventSourceResponse(events(name), ping_interval=0.3)

    app = _app(endpoint)

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                seen.append((message["body"], scope["query_string"].decode(), request_id.get()))
            await send(message)

        await app(scope, receive, recording_send)

    with run_server(recording) as srv:
        with (
            httpx.stream("GET", srv.url + "/?id=a") as a,
            httpx.stream("GET", srv.url + "/?id=b") as b,
        ):
            a_chunks, b_chunks = a.iter_raw(), b.iter_raw()
            assert next(a_chunks) == b"data: a\n\n"
            assert next(b_chunks) == b"data: b\n\n"
            assert next(a_chunks) == b": ping\n\n"
            assert next(b_chunks) == b": ping\n\n"
    pings = [(query, var) for body, query, var in seen if body == b": ping\n\n"]
    assert ("id=a", "a") in pings
    assert ("id=b", "b") in pings
    assert all(query == f"id={var}" for query, var in pings)


# -- disconnect and closing the producer --------------------------------------------------


def test_disconnect_noticed_while_producer_idle_and_producer_closed() -> None:
    finished = threading.Event()
    outcome: dict[str, Any] = {}
    responses: list[EventSourceResponse] = []

    async def events() -> AsyncIterator[str]:
        try:
            yield "hello"
            await anyio.sleep_forever()
        except BaseException as exc:
            outcome["exc"] = type(exc).__name__
            raise
        finally:
            finished.set()

    async def endpoint(request: Request) -> Response:
        response = EventSourceResponse(events(), ping_interval=None)
        responses.append(response)
        return response

    with run_server(_app(endpoint)) as srv:
        with httpx.stream("GET", srv.url) as response:
            assert next(response.iter_raw()) == b"data: hello\n\n"
        left = time.monotonic()
        assert finished.wait(1.0), "the producer's finally did not run within 1 s"
        assert time.monotonic() - left < 1.0
    assert outcome["exc"] == "CancelledError"
    assert responses[0].close_reason is CloseReason.DISCONNECTED


def test_send_timeout_drops_a_client_that_reads_nothing() -> None:
    finished = threading.Event()
    responses: list[EventSourceResponse] = []
    chunk = b"data: " + b"x" * 65536 + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        try:
            while True:
                yield chunk
        finally:
            finished.set()

    async def endpoint(request: Request) -> Response:
        response = EventSourceResponse(events(), ping_interval=None, send_timeout=0.3)
        responses.append(response)
        return response

    with run_server(_app(endpoint)) as srv:
        sock = _raw_get(srv.port, rcvbuf=4096)
        try:
            assert finished.wait(10), "a stalled client was never dropped"
        finally:
            sock.close()
    assert responses[0].close_reason is CloseReason.SEND_TIMEOUT


# -- coalescing ---------------------------------------------------------------------------


class _Harness:
    """A raw ASGI channel: records every ``send``; ``receive`` waits until ``disconnect()``."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._gone = anyio.Event()
        self.block_body: anyio.Event | None = None
        self.body_started = anyio.Event()

    scope: ClassVar[dict[str, Any]] = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        self._gone.set()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("more_body"):
            self.body_started.set()
            if self.block_body is not None:
                block, self.block_body = self.block_body, None
                await block.wait()  # a slow client: this write takes a while

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body" and m["body"]]

    @property
    def complete(self) -> bool:
        last = self.sent[-1] if self.sent else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


@pytest.mark.anyio
async def test_each_item_is_written_as_it_comes_in_one_write() -> None:
    harness = _Harness()
    items = ["e0", ServerSentEvent(data="e1", id="1"), b"data: e2\n\n"]
    response = EventSourceResponse(items, ping_interval=None)
    with anyio.fail_after(5):
        await response(harness.scope, harness.receive, harness.send)
    assert harness.bodies == [b"data: e0\n\n", b"id: 1\ndata: e1\n\n", b"data: e2\n\n"]
    assert harness.complete
    stats = response.statistics()
    assert (stats.events, stats.writes, stats.pings) == (3, 3, 0)
    assert stats.bytes_sent == sum(map(len, harness.bodies))
    assert response.close_reason is CloseReason.COMPLETED


@pytest.mark.anyio
async def test_a_slow_client_holds_the_producer_back() -> None:
    """Nothing is read ahead: while one write waits for the client, no item is pulled."""
    harness = _Harness()
    harness.block_body = release = anyio.Event()
    pulled = 0

    async def events() -> AsyncIterator[str]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield f"e{i}"

    response = EventSourceResponse(events(), ping_interval=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(response, harness.scope, harness.receive, harness.send)
        await harness.body_started.wait()
        await wait_all_tasks_blocked()
        assert pulled == 1  # the first write is stuck on the client; the rest wait unmade
        release.set()
    assert len(harness.bodies) == 100
    assert harness.complete


@pytest.mark.anyio
async def test_producer_error_flushes_what_it_made_then_propagates() -> None:
    harness = _Harness()

    async def events() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise ValueError("boom")

    response = EventSourceResponse(events(), ping_interval=None)
    with pytest.raises(ValueError, match="boom"):
        await response(harness.scope, harness.receive, harness.send)
    assert b"".join(harness.bodies) == b"data: a\n\ndata: b\n\n"
    assert not harness.complete  # the body is cut: clients see an error and reconnect
    assert response.close_reason is CloseReason.ERROR


@pytest.mark.anyio
async def test_an_unknown_item_type_is_refused() -> None:
    harness = _Harness()

    async def events() -> AsyncIterator[Any]:
        yield 42

    with pytest.raises(TypeError, match="int"):
        await EventSourceResponse(events())(harness.scope, harness.receive, harness.send)


@pytest.mark.anyio
async def test_a_response_is_sent_once() -> None:
    harness = _Harness()
    response = EventSourceResponse(["a"])
    await response(harness.scope, harness.receive, harness.send)
    with pytest.raises(RuntimeError, match="once"):
        await response(harness.scope, harness.receive, harness.send)


@pytest.mark.anyio
async def test_disconnect_in_the_harness_cancels_and_closes() -> None:
    harness = _Harness()
    closed = anyio.Event()

    async def events() -> AsyncIterator[str]:
        try:
            yield "a"
            await anyio.sleep_forever()
        finally:
            closed.set()

    response = EventSourceResponse(events(), ping_interval=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(response, harness.scope, harness.receive, harness.send)
        await harness.body_started.wait()
        harness.disconnect()
        with anyio.fail_after(1):
            await closed.wait()
    assert response.close_reason is CloseReason.DISCONNECTED
    assert not harness.complete


@pytest.mark.anyio
async def test_producer_suspended_at_yield_is_closed_on_disconnect() -> None:
    """A producer held back by a client that reads nothing sits at a ``yield``: ``aclose()``
    must reach it."""
    harness = _Harness()
    harness.block_body = anyio.Event()  # the client never reads
    closed = anyio.Event()
    produced = 0

    async def events() -> AsyncIterator[str]:
        nonlocal produced
        try:
            while True:
                yield "x" * 16384
                produced += 1
        finally:
            closed.set()

    response = EventSourceResponse(events(), ping_interval=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(response, harness.scope, harness.receive, harness.send)
        await harness.body_started.wait()
        await wait_all_tasks_blocked()
        assert produced == 0  # suspended at its first yield while that item is written
        harness.disconnect()
        with anyio.fail_after(1):
            await closed.wait()
    assert response.close_reason is CloseReason.DISCONNECTED


@given(
    st.lists(
        st.builds(
            ServerSentEvent,
            data=st.text(),
            event=st.none() | st.text().filter(lambda s: "\r" not in s and "\n" not in s),
            id=st.none() | st.text(st.characters(exclude_characters="\r\n\0")),
        ),
        max_size=20,
    )
)
@settings(max_examples=50, deadline=None)
def test_what_is_written_decodes_to_what_was_yielded(items: list[ServerSentEvent]) -> None:
    async def main() -> list[ServerSentEvent]:
        harness = _Harness()
        await EventSourceResponse(items, ping_interval=None)(
            harness.scope, harness.receive, harness.send
        )
        return Decoder().feed(b"".join(harness.bodies))

    decoded = anyio.run(main)
    # Every line ending in data becomes LF on the wire (WHATWG HTML §9.2.6 allows no other).
    assert [e.data for e in decoded] == [re.sub(r"\r\n?", "\n", e.data or "") for e in items]
    assert [e.event for e in decoded] == [e.event or "message" for e in items]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ping_interval": 0},
        {"ping_interval": -1.0},
        {"ping_interval": float("nan")},
        {"send_timeout": 0},
        {"max_duration": float("inf")},
        {"retry": -1},
        {"retry": 1.5},
        {"close_timeout": -1},
    ],
)
def test_options_refuse_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must"):
        EventStreamOptions(**kwargs)


def test_keyword_overrides_replace_single_options() -> None:
    base = EventStreamOptions(ping_interval=5.0, retry=100, close_timeout=1.5)
    response = EventSourceResponse([], options=base, ping_interval=None, retry=200)
    assert response.options == EventStreamOptions(ping_interval=None, retry=200, close_timeout=1.5)


# -- server shutdown ----------------------------------------------------------------------


@contextlib.contextmanager
def _shutdown_aware_server(app: Any) -> Iterator[tuple[ShutdownAwareServer, threading.Thread, str]]:
    ready = threading.Event()

    class _Server(ShutdownAwareServer):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            ready.set()

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = _Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, thread, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_server_shutdown_ends_open_streams_promptly() -> None:
    finished = threading.Event()

    async def events() -> AsyncIterator[str]:
        try:
            yield "hello"
            await anyio.sleep_forever()
        finally:
            finished.set()

    async def endpoint(request: Request) -> Response:
        # No signal passed: the response finds the server's in the lifespan state.
        assert isinstance(request.scope["state"][SHUTDOWN_STATE_KEY], ShutdownSignal)
        return EventSourceResponse(events())

    with _shutdown_aware_server(_app(endpoint)) as (server, thread, url):
        with httpx.stream("GET", url) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"data: hello\n\n"
            asked = time.monotonic()
            server.should_exit = True
            assert list(chunks) == []  # a clean end: httpx raises on a cut chunked body
        thread.join(3)
        assert not thread.is_alive(), "uvicorn still waits for the stream"
        assert time.monotonic() - asked < 3
        assert finished.is_set()


def test_an_explicit_shutdown_signal_ends_the_stream_from_another_thread() -> None:
    signal_ = ShutdownSignal()
    responses: list[EventSourceResponse] = []

    async def events() -> AsyncIterator[str]:
        yield "hello"
        await anyio.sleep_forever()

    async def endpoint(request: Request) -> Response:
        response = EventSourceResponse(events(), shutdown=signal_)
        responses.append(response)
        return response

    with run_server(_app(endpoint)) as srv:
        with httpx.stream("GET", srv.url) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"data: hello\n\n"
            signal_.set()  # from this (non-loop) thread
            assert list(chunks) == []
        assert responses[0].close_reason is CloseReason.SHUTDOWN
        # A stream opened after shutdown began ends at once, cleanly.
        assert httpx.get(srv.url).content == b""


_SIGTERM_APP = """
import anyio
from starlette.applications import Starlette
from starlette.routing import Route
from ssegate._response import EventSourceResponse
from ssegate.server import serve

async def events():
    yield "hello"
    await anyio.sleep_forever()

async def endpoint(request):
    return EventSourceResponse(events())

serve(Starlette(routes=[Route("/", endpoint)]), host="127.0.0.1", port=0, log_level="info")
"""


def test_sigterm_with_an_open_stream_exits_promptly(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(_SIGTERM_APP))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "the server did not start"
        with httpx.stream("GET", f"http://127.0.0.1:{port}/") as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"data: hello\n\n"
            asked = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert list(chunks) == []
        proc.wait(3)
        assert time.monotonic() - asked < 3
        # uvicorn re-raises the signal it handled once it has shut down.
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.anyio
async def test_shutdown_signal_wait_is_woken_from_another_thread() -> None:
    signal_ = ShutdownSignal()
    assert not signal_.is_set()
    async with anyio.create_task_group() as tg:
        tg.start_soon(signal_.wait)
        await wait_all_tasks_blocked()
        threading.Thread(target=signal_.set).start()
        with anyio.fail_after(1):
            await signal_.wait()
    assert signal_.is_set()
    with anyio.fail_after(1):
        await signal_.wait()  # already set: returns at once
