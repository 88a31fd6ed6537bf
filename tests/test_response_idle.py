"""What an idle EventSourceResponse keeps: tasks and Python memory per open stream.

Real uvicorn on a loopback port, real sockets. The bounds are generous (the measured values
are in the comments); they catch a second task per stream or a return of per-stream timers,
not a few bytes. docs/performance.md has the RSS numbers against the peers.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ssegate._response
from ssegate._response import (
    CloseReason,
    EventSourceResponse,
    EventStreamOptions,
    ShutdownSignal,
    StreamItem,
    _ReceiveWatcher,
    _Stream,
)
from ssegate.gateway._limits import BodyLimitMiddleware
from ssegate.testing import RunningServer, run_server

STREAMS = 200
RESPONSE_FILE = str(Path(ssegate._response.__file__).resolve())


def _idle_app(
    shutdown: ShutdownSignal,
    closed: list[CloseReason | None] | None = None,
    *,
    ping_interval: float = 15.0,
    methods: list[str] | None = None,
) -> Starlette:
    """Idle event streams at ``/``; each one's close reason is appended to ``closed``."""

    async def events() -> AsyncIterator[str]:
        await anyio.sleep_forever()
        yield "never"

    async def endpoint(request: Request) -> Response:
        # Heartbeat and shutdown watching on, as in production.
        response = EventSourceResponse(events(), ping_interval=ping_interval, shutdown=shutdown)
        if closed is None:
            return response

        async def stream(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await response(scope, receive, send)
            finally:
                closed.append(response.close_reason)

        return stream  # type: ignore[return-value]

    return Starlette(routes=[Route("/", endpoint, methods=methods)])


def _open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` event streams, each past its response headers."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        socks.append(sock)
    for sock in socks:
        sock.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(4096)
            assert chunk, "the server closed an idle stream"
            got += chunk
    return socks


def _settle(srv: RunningServer) -> None:
    """Wait until the server's loop has run every ready callback (every stream is parked)."""
    loop = srv.loop
    assert loop is not None
    for _ in range(3):
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)


@contextmanager
def _idle_streams(srv: RunningServer, n: int) -> Iterator[None]:
    with ExitStack() as stack:
        for sock in _open_idle(srv.port, n):
            stack.callback(sock.close)
        _settle(srv)
        yield


def _tasks(srv: RunningServer) -> int:
    loop = srv.loop
    assert loop is not None

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(5) - 1


def _tasks_kept_per_idle_stream(app: ASGIApp, **config: Any) -> float:
    """Tasks kept per idle stream of ``app`` on uvicorn (20 streams); checks that closing the
    sockets leaves none behind (the count comes back down within 5 s)."""
    with run_server(app, **config) as srv:
        _settle(srv)
        before = _tasks(srv)
        with _idle_streams(srv, 20):
            during = _tasks(srv)
        deadline = time.monotonic() + 5
        while (after := _tasks(srv)) > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert after == before, "tasks left behind by closed streams"
    return (during - before) / 20


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_an_idle_stream_on_uvicorn_keeps_no_task_besides_the_servers(http: str) -> None:
    """On uvicorn the server's request task drives the content and uvicorn's receive() is
    watched from loop callbacks: no child task, writer, watchdog or listener waits beside the
    request task while nothing happens. Closing the sockets ends every stream."""
    assert _tasks_kept_per_idle_stream(_idle_app(ShutdownSignal()), http=http) == 1


def _wrapping_receive(app: ASGIApp) -> ASGIApp:
    """Middleware that hands the app its own ``receive()`` (as body-size limits do)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped() -> Message:
            return await receive()

        await app(scope, wrapped, send)

    return middleware


def test_a_wrapped_receive_is_listened_for_by_the_request_task() -> None:
    """A ``receive()`` the response does not know (middleware's) may need a task of its own:
    the request task listens on it and one child drives the content; a disconnect still ends
    the stream and leaves nothing behind."""
    closed: list[CloseReason | None] = []
    app = _wrapping_receive(_idle_app(ShutdownSignal(), closed))
    assert _tasks_kept_per_idle_stream(app) == 2
    assert closed == [CloseReason.DISCONNECTED] * 20


def test_the_gateways_body_limit_keeps_the_stream_taskless() -> None:
    """The gateway's body-size limit wraps receive() and says so: a stream behind it is still
    watched without a task (and a disconnect still ends it)."""
    closed: list[CloseReason | None] = []
    app = BodyLimitMiddleware(_idle_app(ShutdownSignal(), closed), max_bytes=1024)
    assert _tasks_kept_per_idle_stream(app) == 1
    assert closed == [CloseReason.DISCONNECTED] * 20


def test_a_request_body_sent_while_streaming_is_read_through_not_taken_for_a_leave() -> None:
    """The watcher reads the request body (chunked, sent in parts after the response began)
    and keeps streaming; the client leaving afterwards ends the stream as a disconnect."""
    closed: list[CloseReason | None] = []
    app = _idle_app(ShutdownSignal(), closed, ping_interval=0.2, methods=["POST"])
    with run_server(app) as srv, socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        for _ in range(20):
            sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        # A heartbeat written after the whole body was sent: the stream lives on.
        _settle(srv)
        got = b""
        while b": ping" not in got:
            chunk = sock.recv(4096)
            assert chunk, "the stream ended when the request body did"
            got += chunk
        assert closed == []
        sock.close()
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert closed == [CloseReason.DISCONNECTED]


def test_memory_kept_per_idle_stream_is_bounded() -> None:
    """Python memory allocated by the response that stays allocated while the stream is
    idle (the heartbeat on, the server's shutdown signal watched)."""
    with run_server(_idle_app(ShutdownSignal())) as srv:
        with _idle_streams(srv, 20):  # warm up: lazily built state, grown containers
            pass
        _settle(srv)
        gc.collect()
        tracemalloc.start(64)
        try:
            before = tracemalloc.take_snapshot()
            with _idle_streams(srv, STREAMS):
                gc.collect()
                after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    ours = [tracemalloc.Filter(True, RESPONSE_FILE, all_frames=True)]
    grown = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    per_stream = sum(stat.size_diff for stat in grown) / STREAMS
    # Everything allocated with the response's code on the stack: its frames and state, the
    # task group, the content it drives (here ~600 bytes), the server's pending receive().
    # Measured 4,960 bytes (CPython 3.11, anyio 4.16), of which ~1,100 are the task group.
    # An anyio child task driving the content instead (the previous design) kept 7,600; a
    # writer parked in a cancel scope of its own before that, 9,700.
    assert per_stream < 5_800, f"{per_stream:.0f} bytes per idle stream"


async def _never() -> AsyncIterator[StreamItem]:
    await anyio.sleep_forever()
    yield "never"


async def _no_send(message: Message) -> None:
    pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        # A bare yield (asyncio.sleep(0)) takes another loop turn, as a task would.
        (["yield", "disconnect"], CloseReason.DISCONNECTED),
        # Request body parts are read through.
        (["body", "wait", "body", "disconnect"], CloseReason.DISCONNECTED),
        # A receive() that fails: the client is gone.
        (["wait", "fail"], CloseReason.DISCONNECTED),
    ],
)
async def test_the_watcher_drives_receive_as_a_task_would(
    steps: list[str], reason: CloseReason
) -> None:
    """The watcher drives any asyncio receive() coroutine: futures, bare yields, messages
    that are not a disconnect, failures."""
    steps = list(steps)
    loop = asyncio.get_running_loop()
    gates: list[asyncio.Future[None]] = []
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        while steps:
            step = steps.pop(0)
            if step == "yield":
                await asyncio.sleep(0)
            elif step == "wait":
                gate = loop.create_future()
                gates.append(gate)
                await gate
            elif step == "body":
                return {"type": "http.request", "body": b"x", "more_body": True}
            elif step == "fail":
                raise RuntimeError("receive() after the connection was lost")
            else:
                return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stream = _Stream(EventStreamOptions(), _never(), b"", _no_send)
    watcher = _ReceiveWatcher(receive, stream)
    watcher._step()
    with anyio.fail_after(5):
        while stream.reason is None:
            for gate in gates:
                if not gate.done():
                    gate.set_result(None)
            await asyncio.sleep(0)
    assert stream.reason is reason
    assert not steps, "the watcher stopped before receive() said the client was gone"
    assert calls >= 1


@pytest.mark.anyio
async def test_closing_the_watcher_closes_the_pending_receive() -> None:
    """close() ends the pending receive() (its finally runs) and starts no other. The test
    keeps the receive() coroutine itself, so only an explicit close ends it (not the
    coroutine being dropped)."""
    finished: list[str] = []
    pending: list[Coroutine[Any, Any, Message]] = []

    async def waiting() -> Message:
        try:
            await asyncio.Event().wait()
        finally:
            finished.append("closed")
        raise AssertionError("unreachable")

    def receive() -> Coroutine[Any, Any, Message]:
        coro = waiting()
        pending.append(coro)
        return coro

    stream = _Stream(EventStreamOptions(), _never(), b"", _no_send)
    watcher = _ReceiveWatcher(receive, stream)
    watcher._step()
    watcher.close()
    watcher._step()  # a late wake-up does nothing
    assert finished == ["closed"]
    assert len(pending) == 1
    assert stream.reason is None
