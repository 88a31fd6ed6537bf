"""EventSourceResponse and SseEmitter over real sockets on trio (hypercorn), as on asyncio.

uvicorn runs on asyncio only; hypercorn serves the same ASGI app on trio. Each test here is
the trio twin of one in test_response.py / test_emitter.py: the response is one portable
design, with no asyncio-only path to fall back from.

``send_timeout`` has no twin here: hypercorn shields its socket writes from cancellation, so
on hypercorn a blocked write ends only when the client reads or leaves (the response's
module docstring says so).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ssegate import (
    CloseReason,
    Decoder,
    EmitterClosedError,
    EventSourceResponse,
    ServerSentEvent,
    ShutdownSignal,
    SseEmitter,
)
from trio_server import run_trio_server


def _app(endpoint: Any) -> Starlette:
    return Starlette(routes=[Route("/", endpoint)])


def test_events_heartbeat_and_retry_on_trio() -> None:
    async def events() -> AsyncIterator[Any]:
        yield "plain"
        yield ServerSentEvent(data="d", event="delta", id="7")
        await anyio.sleep(0.35)  # silence: a heartbeat goes out
        yield {"n": 1}

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping_interval=0.2, retry=1000)

    with run_trio_server(_app(endpoint)) as srv:
        response = httpx.get(srv.url, timeout=10)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content.startswith(b"retry: 1000\ndata: plain\n\nid: 7\nevent: delta\n")
    assert b": ping\n\n" in response.content
    assert response.content.endswith(b'data: {"n":1}\n\n')
    decoder = Decoder()
    assert [e.data for e in decoder.feed(response.content)] == ["plain", "d", '{"n":1}']
    assert decoder.retry == 1000


def test_disconnect_noticed_while_idle_and_producer_closed_on_trio() -> None:
    finished = threading.Event()
    responses: list[EventSourceResponse] = []

    async def events() -> AsyncIterator[str]:
        try:
            yield "hello"
            await anyio.sleep_forever()
        finally:
            finished.set()

    async def endpoint(request: Request) -> Response:
        response = EventSourceResponse(events(), ping_interval=None)
        responses.append(response)
        return response

    with run_trio_server(_app(endpoint)) as srv:
        with httpx.stream("GET", srv.url, timeout=10) as response:
            assert next(response.iter_raw()) == b"data: hello\n\n"
        assert finished.wait(2), "the producer's finally did not run after the client left"
    assert responses[0].close_reason is CloseReason.DISCONNECTED


def test_a_shutdown_signal_set_from_another_thread_ends_the_stream_on_trio() -> None:
    signal_ = ShutdownSignal()
    responses: list[EventSourceResponse] = []

    async def events() -> AsyncIterator[str]:
        yield "hello"
        await anyio.sleep_forever()

    async def endpoint(request: Request) -> Response:
        response = EventSourceResponse(events(), shutdown=signal_)
        responses.append(response)
        return response

    with run_trio_server(_app(endpoint)) as srv:
        with httpx.stream("GET", srv.url, timeout=10) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"data: hello\n\n"
            signal_.set()  # from this thread: the trio loop runs the callback
            assert list(chunks) == []  # a complete body: the stream ended cleanly
    assert responses[0].close_reason is CloseReason.SHUTDOWN


def test_the_emitter_with_a_worker_thread_on_trio() -> None:
    done = threading.Event()
    loop_threads: list[str] = []

    async def endpoint(request: Request) -> Response:
        emitter = SseEmitter(30.0)
        emitter.on_completion(lambda: loop_threads.append(threading.current_thread().name))
        emitter.on_completion(done.set)
        emitter.send("start")

        def work() -> None:
            for i in range(1, 6):
                time.sleep(0.01)  # the stream waits for each: a wake-up across threads
                emitter.send(f"index:{i}")
            emitter.complete()

        threading.Thread(target=work).start()
        return emitter

    with run_trio_server(_app(endpoint)) as srv:
        response = httpx.get(srv.url, timeout=10)
        assert done.wait(2)
    assert [e.data for e in Decoder().feed(response.content)] == ["start"] + [
        f"index:{i}" for i in range(1, 6)
    ]
    assert loop_threads == ["hypercorn-trio-test-server"]


def test_a_sender_blocked_in_a_thread_is_woken_by_disconnect_on_trio() -> None:
    outcome: dict[str, Any] = {}
    started = threading.Event()

    async def endpoint(request: Request) -> Response:
        emitter = SseEmitter(30.0, max_queued=1)

        def work() -> None:
            started.set()
            try:
                while True:
                    emitter.send("x" * 65536)
            except EmitterClosedError as exc:
                outcome["error"] = exc

        outcome["worker"] = worker = threading.Thread(target=work, daemon=True)
        worker.start()
        return emitter

    with run_trio_server(_app(endpoint)) as srv:
        address = urlsplit(srv.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((address.hostname, address.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert started.wait(5)
        worker: threading.Thread = outcome["worker"]
        worker.join(0.5)
        assert worker.is_alive(), "the sender should be blocked: the client reads nothing"
        sock.close()
        worker.join(5)
        assert not worker.is_alive(), "the blocked sender was not woken"
    assert isinstance(outcome["error"], EmitterClosedError)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.anyio
async def test_shutdown_signal_wait_is_woken_from_another_thread_on_trio() -> None:
    signal_ = ShutdownSignal()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, signal_.set)
        with anyio.fail_after(5):
            await signal_.wait()
    assert signal_.is_set()
