"""What an idle EventSourceResponse keeps: tasks and Python memory per open stream.

Real uvicorn on a loopback port, real sockets. Memory is compared with a bare Starlette
``StreamingResponse`` in the same process (the bar: no more per idle stream); the task count
catches a third task per stream. docs/performance.md has the RSS numbers against the peers.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssegate import CloseReason, EventSourceResponse, ShutdownSignal
from ssegate.gateway._limits import BodyLimitMiddleware
from ssegate.testing import RunningServer, run_server

STREAMS = 200


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
def test_an_idle_stream_keeps_the_request_task_and_one_monitor(http: str) -> None:
    """The request task waits on the content; one child task (the monitor) waits on
    ``receive()`` with the heartbeat's deadline; nothing else. Closing the sockets ends every
    stream and leaves no task behind."""
    assert _tasks_kept_per_idle_stream(_idle_app(ShutdownSignal()), http=http) == 2


def _wrapping_receive(app: ASGIApp) -> ASGIApp:
    """Middleware that hands the app its own ``receive()`` (as body-size limits do)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped() -> Message:
            return await receive()

        await app(scope, wrapped, send)

    return middleware


@pytest.mark.parametrize("wrap", ["middleware", "body_limit"])
def test_a_wrapped_receive_is_listened_for_the_same_way(wrap: str) -> None:
    """Whatever ``receive()`` the response is given (middleware's, the gateway's body-size
    limit), it is awaited by the monitor the same way: two tasks, and a disconnect ends the
    stream."""
    closed: list[CloseReason | None] = []
    inner = _idle_app(ShutdownSignal(), closed)
    app = _wrapping_receive(inner) if wrap == "middleware" else BodyLimitMiddleware(inner, 1024)
    assert _tasks_kept_per_idle_stream(app) == 2
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


def _streaming_app() -> Starlette:
    """The peer: a bare ``StreamingResponse`` of an idle generator."""

    async def body() -> AsyncIterator[bytes]:
        await anyio.sleep_forever()
        yield b"never"

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/", endpoint)])


def _memory_per_idle_stream(app: ASGIApp) -> float:
    """Python memory that stays allocated per idle stream of ``app`` on uvicorn (everything
    the server, Starlette and the response keep, measured with tracemalloc)."""
    with run_server(app) as srv:
        with _idle_streams(srv, 20):  # warm up: lazily built state, grown containers
            pass
        _settle(srv)
        gc.collect()
        tracemalloc.start(1)
        try:
            before = tracemalloc.take_snapshot()
            with _idle_streams(srv, STREAMS):
                gc.collect()
                after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    grown = after.compare_to(before, "filename")
    return sum(stat.size_diff for stat in grown) / STREAMS


def test_an_idle_stream_keeps_no_more_memory_than_a_bare_streaming_response() -> None:
    """With the heartbeat on and the server's shutdown signal watched, as in production."""
    ours = _memory_per_idle_stream(_idle_app(ShutdownSignal()))
    peer = _memory_per_idle_stream(_streaming_app())
    # A few percent of slack for tracemalloc's own noise, not for a task or a buffer.
    assert ours <= peer * 1.05, f"{ours:.0f} vs {peer:.0f} bytes per idle stream"
