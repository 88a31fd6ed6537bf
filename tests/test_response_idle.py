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
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import ssegate._response
from ssegate._response import EventSourceResponse, ShutdownSignal
from ssegate.testing import RunningServer, run_server

STREAMS = 200
RESPONSE_FILE = str(Path(ssegate._response.__file__).resolve())


def _idle_app(shutdown: ShutdownSignal) -> Starlette:
    async def events() -> AsyncIterator[str]:
        await anyio.sleep_forever()
        yield "never"

    async def endpoint(request: Request) -> Response:
        # Heartbeat and shutdown watching on, as in production.
        return EventSourceResponse(events(), ping_interval=15.0, shutdown=shutdown)

    return Starlette(routes=[Route("/", endpoint)])


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


def test_an_idle_stream_keeps_one_task_besides_the_servers() -> None:
    """The server's request task listens for the client leaving; one child drives the content.
    No writer, watchdog or listener task waits beside them while nothing happens."""
    with run_server(_idle_app(ShutdownSignal())) as srv:
        _settle(srv)
        before = _tasks(srv)
        with _idle_streams(srv, 20):
            during = _tasks(srv)
        assert during - before == 20 * 2

        deadline = time.monotonic() + 5
        while _tasks(srv) > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _tasks(srv) == before, "tasks left behind by closed streams"


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
    # task group, the child task and the content it drives (here ~600 bytes), the server's
    # receive(). Measured 7,600 bytes (CPython 3.11, anyio 4.16), of which ~2,600 are the
    # anyio child task and ~1,100 the task group. The previous design, a writer parked in a
    # cancel scope of its own, kept 9,700; a second child task adds ~2,600.
    assert per_stream < 8_500, f"{per_stream:.0f} bytes per idle stream"
