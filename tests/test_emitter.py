"""SseEmitter: the seed's Spring pattern over real uvicorn, threads, backpressure, lifecycle."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ssegate import EmitterClosedError
from ssegate._emitter import EmitterState, SseEmitter
from ssegate._response import CloseReason, EventStreamOptions, ShutdownSignal
from ssegate.codec import Decoder, ServerSentEvent
from ssegate.providers import UpstreamTimeoutError
from ssegate.testing import run_server

Message = dict[str, Any]


def _serve_emitter(make: Callable[[], SseEmitter]) -> Starlette:
    def endpoint(request: Request) -> Response:  # sync: Starlette runs it in a worker thread
        return make()

    return Starlette(routes=[Route("/", endpoint)])


def _events(body: bytes) -> list[ServerSentEvent]:
    return Decoder().feed(body)


class _Harness:
    """A raw ASGI channel: records every ``send``; ``receive`` waits until ``disconnect()``."""

    scope: ClassVar[dict[str, Any]] = {"type": "http", "method": "GET", "path": "/"}

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._gone = anyio.Event()

    async def receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        self._gone.set()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The async tests of this module run on both anyio backends."""
    return str(request.param)


# -- the seed's pattern -------------------------------------------------------------------


def test_the_seed_pattern_with_fastapi_and_a_worker_thread() -> None:
    app = FastAPI()
    log: list[tuple[str, str]] = []
    done = threading.Event()
    emitters: list[SseEmitter] = []

    @app.get("/learn/sseChat")
    def chat(name: str) -> SseEmitter:
        emitter = SseEmitter(360.0)
        emitter.on_completion(lambda: log.append(("complete", threading.current_thread().name)))
        emitter.on_completion(done.set)
        emitter.on_error(lambda exc: log.append(("error", repr(exc))))
        emitter.send("start")  # before the emitter is returned: no event loop bound yet

        def work() -> None:
            try:
                for i in range(1, 11):
                    emitter.send(f"{threading.current_thread().name}: the next index:{i}")
                emitter.complete()
            except Exception as exc:
                emitter.complete_with_error(exc)

        threading.Thread(target=work, name="Thread-2").start()
        emitters.append(emitter)
        return emitter

    with run_server(app) as srv:
        response = httpx.get(f"{srv.url}/learn/sseChat", params={"name": "xx"})
        assert done.wait(2)
        loop_thread = srv.thread.name
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert [e.data for e in _events(response.content)] == ["start"] + [
        f"Thread-2: the next index:{i}" for i in range(1, 11)
    ]
    # Callbacks run on the event loop's thread, after the stream has ended.
    assert log == [("complete", loop_thread)]
    emitter = emitters[0]
    assert emitter.close_reason is CloseReason.COMPLETED
    assert emitter.state is EmitterState.CLOSED
    with pytest.raises(EmitterClosedError):
        emitter.send("too late")


def test_send_forms() -> None:
    def make() -> SseEmitter:
        emitter = SseEmitter(5.0)
        emitter.send("text")
        emitter.send({"k": "v"})
        emitter.send([1, 2])
        emitter.send(3)
        emitter.send("two\nlines", event="delta", id="9")
        emitter.send(ServerSentEvent(data="x", event="e"))
        emitter.send("c", comment="note", retry=500)
        emitter.complete()
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        body = httpx.get(srv.url).content
    assert body == (
        b"data: text\n\n"
        b'data: {"k":"v"}\n\n'
        b"data: [1,2]\n\n"
        b"data: 3\n\n"
        b"id: 9\nevent: delta\ndata: two\ndata: lines\n\n"
        b"event: e\ndata: x\n\n"
        b": note\nretry: 500\ndata: c\n\n"
    )


def test_send_refuses_ambiguous_input() -> None:
    emitter = SseEmitter()
    with pytest.raises(TypeError):
        emitter.send(b"bytes")
    with pytest.raises(TypeError):
        emitter.send(ServerSentEvent(data="x"), event="e")
    with pytest.raises(ValueError, match="CR or LF"):
        emitter.send("x", event="a\nb")
    assert emitter.statistics().sent == 0


def test_many_threads_send_safely() -> None:
    threads, per_thread = 16, 200
    started = threading.Barrier(threads)

    def make() -> SseEmitter:
        # A small queue, so senders really block and wake each other.
        emitter = SseEmitter(30.0, max_queued=8)
        remaining = [threads]
        lock = threading.Lock()

        def work(t: int) -> None:
            started.wait()
            for i in range(per_thread):
                emitter.send(f"{t}:{i}")
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    emitter.complete()

        for t in range(threads):
            threading.Thread(target=work, args=(t,), daemon=True).start()
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        body = httpx.get(srv.url, timeout=20).content
    got = [e.data for e in _events(body)]
    assert len(got) == threads * per_thread
    assert len(set(got)) == len(got)  # none doubled
    for t in range(threads):
        assert [g for g in got if g.startswith(f"{t}:")] == [f"{t}:{i}" for i in range(per_thread)]


# -- disconnect, timeout, errors ----------------------------------------------------------


def test_disconnect_completes_the_emitter_and_the_next_send_raises() -> None:
    completed = threading.Event()
    emitters: list[SseEmitter] = []

    def make() -> SseEmitter:
        emitter = SseEmitter(30.0)
        emitter.on_completion(completed.set)
        emitter.send("hello")
        emitters.append(emitter)
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        with httpx.stream("GET", srv.url) as response:
            assert next(response.iter_raw()) == b"data: hello\n\n"
        left = time.monotonic()
        assert completed.wait(1.0)
        emitter = emitters[0]
        with pytest.raises(EmitterClosedError, match="disconnected"):
            emitter.send("anyone?")
        assert time.monotonic() - left < 1.0
    assert emitter.close_reason is CloseReason.DISCONNECTED


def test_backpressure_holds_memory_flat_and_disconnect_wakes_the_blocked_sender() -> None:
    event_size = 1024
    attempted = 200_000  # 200 MB if nothing held the sender back
    result: dict[str, Any] = {}
    holder: list[SseEmitter] = []
    created = threading.Event()

    def make() -> SseEmitter:
        emitter = SseEmitter(30.0, max_queued=64, max_queued_bytes=32 * 1024)
        holder.append(emitter)
        payload = "x" * (event_size - 8)

        def work() -> None:
            sent = 0
            try:
                for _ in range(attempted):
                    emitter.send(payload)
                    sent += 1
            except EmitterClosedError as exc:
                result["error"] = exc
            result["sent"] = sent

        worker = threading.Thread(target=work, daemon=True)
        result["worker"] = worker
        worker.start()
        created.set()
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        try:
            assert created.wait(5)
            worker: threading.Thread = result["worker"]
            worker.join(1.5)  # the client reads nothing: the sender must be stuck
            assert worker.is_alive()
            stats = holder[0].statistics()
            assert stats.waiting_senders == 1
            assert stats.queued_bytes <= 32 * 1024
            assert stats.queued <= 64
            # Kernel buffers, the transport, the read-ahead and the queue hold a few MB.
            assert stats.sent * event_size < 16 * 1024 * 1024
        finally:
            sock.close()
        left = time.monotonic()
        worker.join(1.0)
        assert not worker.is_alive(), "the blocked sender was not woken"
        assert time.monotonic() - left < 1.0
    assert isinstance(result["error"], EmitterClosedError)
    assert result["sent"] < attempted


def test_timeout_fires_on_timeout_then_completion_and_ends_cleanly() -> None:
    order: list[str] = []
    done = threading.Event()
    emitters: list[SseEmitter] = []

    def make() -> SseEmitter:
        emitter = SseEmitter(0.3)
        emitter.on_timeout(lambda: order.append("timeout"))
        emitter.on_completion(lambda: order.append("completion"))
        emitter.on_completion(done.set)
        emitter.on_error(lambda exc: order.append("error"))
        emitter.send("one")
        emitters.append(emitter)
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        started = time.monotonic()
        with httpx.stream("GET", srv.url) as response:
            body = response.read()  # httpx raises if the body is cut
        assert time.monotonic() - started >= 0.25
        assert done.wait(1)
    assert body == b"data: one\n\n"
    assert order == ["timeout", "completion"]
    emitter = emitters[0]
    assert emitter.close_reason is CloseReason.TIMEOUT
    with pytest.raises(EmitterClosedError, match="timeout"):
        emitter.send("late")


def test_complete_with_error_sends_queued_events_then_an_error_event() -> None:
    calls: list[Any] = []
    done = threading.Event()
    failure = RuntimeError("database password is hunter2")

    def make() -> SseEmitter:
        emitter = SseEmitter(5.0)
        emitter.on_error(lambda exc: calls.append(("error", exc)))
        emitter.on_completion(lambda: calls.append(("completion",)))
        emitter.on_completion(done.set)
        emitter.send("partial")
        emitter.complete_with_error(failure)
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        body = httpx.get(srv.url).content
        assert done.wait(1)
    events = _events(body)
    assert [(e.event, e.data) for e in events] == [
        ("message", "partial"),
        ("error", '{"code":"internal","message":"internal error","retryable":false}'),
    ]
    assert b"hunter2" not in body  # internal detail stays on the server
    assert calls == [("error", failure), ("completion",)]


def test_an_ssegate_error_keeps_its_wire_form() -> None:
    def make() -> SseEmitter:
        emitter = SseEmitter(5.0)
        emitter.complete_with_error(UpstreamTimeoutError("the model went quiet"))
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        body = httpx.get(srv.url).content
    (event,) = _events(body)
    assert event.event == "error"
    assert event.data == (
        '{"code":"upstream_timeout","message":"the model went quiet","retryable":true}'
    )


def test_send_after_complete_raises_and_complete_is_idempotent() -> None:
    emitter = SseEmitter()
    emitter.send("a")
    emitter.complete()
    emitter.complete()
    emitter.complete_with_error(ValueError("ignored"))
    assert emitter.state is EmitterState.COMPLETING
    with pytest.raises(EmitterClosedError):
        emitter.send("b")
    assert emitter.statistics().queued == 1


def test_shutdown_ends_the_stream_and_closes_the_emitter() -> None:
    signal_ = ShutdownSignal()
    done = threading.Event()
    emitters: list[SseEmitter] = []

    def make() -> SseEmitter:
        emitter = SseEmitter(30.0, shutdown=signal_)
        emitter.on_completion(done.set)
        emitter.send("hi")
        emitters.append(emitter)
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        with httpx.stream("GET", srv.url) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"data: hi\n\n"
            signal_.set()
            assert list(chunks) == []  # a clean end
        assert done.wait(1)
    assert emitters[0].close_reason is CloseReason.SHUTDOWN
    with pytest.raises(EmitterClosedError, match="shutdown"):
        emitters[0].send("x")


def test_callback_errors_are_logged_and_never_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("callback bug")

    def make() -> SseEmitter:
        emitter = SseEmitter(5.0)
        emitter.on_completion(boom)
        emitter.on_completion(done.set)
        emitter.complete()
        return emitter

    with (
        caplog.at_level(logging.ERROR, logger="ssegate.emitter"),
        run_server(_serve_emitter(make)) as srv,
    ):
        assert httpx.get(srv.url).status_code == 200
        assert done.wait(1)
        assert httpx.get(srv.url).status_code == 200  # the server is fine
    assert any("callback bug" in (r.exc_text or "") for r in caplog.records)


# -- the async face, in a raw ASGI harness ------------------------------------------------


@pytest.mark.anyio
async def test_asend_waits_for_room_and_keeps_order() -> None:
    harness = _Harness()
    emitter = SseEmitter(10.0, max_queued=4)
    waited = 0

    async def produce() -> None:
        nonlocal waited
        for i in range(500):
            if emitter.statistics().queued == 4:
                waited += 1
            await emitter.asend(str(i), id=str(i))
            assert emitter.statistics().queued <= 4
        await emitter.acomplete()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await emitter(harness.scope, harness.receive, harness.send)
    assert [e.data for e in _events(harness.body)] == [str(i) for i in range(500)]
    assert waited > 0  # the queue did fill, so asend really waited
    assert emitter.close_reason is CloseReason.COMPLETED


@pytest.mark.anyio
async def test_a_blocked_asend_is_woken_by_disconnect() -> None:
    harness = _Harness()
    emitter = SseEmitter(10.0, max_queued=1)
    woken = anyio.Event()
    errors: list[BaseException] = []
    produced = 0

    async def stuck_client(message: Message) -> None:
        harness.sent.append(message)
        if message.get("more_body"):
            await anyio.sleep_forever()

    async def produce() -> None:
        nonlocal produced
        try:
            for _ in range(10_000):
                await emitter.asend("x" * 4096)
                produced += 1
        except EmitterClosedError as exc:
            errors.append(exc)
            woken.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(emitter, harness.scope, harness.receive, stuck_client)
        tg.start_soon(produce)
        await anyio.wait_all_tasks_blocked()
        stats = emitter.statistics()
        assert (stats.waiting_senders, stats.queued) == (1, 1)
        assert produced < 50  # held back by the queue and the stream's read-ahead bound
        harness.disconnect()
        with anyio.fail_after(1):
            await woken.wait()
    assert emitter.close_reason is CloseReason.DISCONNECTED


@pytest.mark.anyio
async def test_sync_send_on_the_event_loop_never_blocks_it() -> None:
    emitter = SseEmitter(10.0, max_queued=1)
    emitter.send("fits")  # an empty queue takes one event
    with pytest.raises(RuntimeError, match="asend"):
        emitter.send("would block")


@pytest.mark.anyio
async def test_an_emitter_is_returned_once() -> None:
    emitter = SseEmitter(10.0)
    emitter.complete()
    harness = _Harness()
    await emitter(harness.scope, harness.receive, harness.send)
    with pytest.raises(RuntimeError, match="once"):
        await emitter(harness.scope, harness.receive, harness.send)


def test_a_callback_registered_after_the_end_runs_at_once() -> None:
    async def main() -> SseEmitter:
        emitter = SseEmitter(10.0)
        emitter.complete()
        harness = _Harness()
        await emitter(harness.scope, harness.receive, harness.send)
        return emitter

    emitter = anyio.run(main)
    calls: list[str] = []
    emitter.on_completion(lambda: calls.append("completion"))
    emitter.on_timeout(lambda: calls.append("timeout"))  # it did not time out
    assert calls == ["completion"]


def test_stream_options_pass_through() -> None:
    def make() -> SseEmitter:
        emitter = SseEmitter(5.0, options=EventStreamOptions(retry=2500), headers={"X-A": "b"})
        emitter.send("x")
        emitter.complete()
        return emitter

    with run_server(_serve_emitter(make)) as srv:
        response = httpx.get(srv.url)
    assert response.headers["x-a"] == "b"
    assert response.content == b"retry: 2500\ndata: x\n\n"  # retry in the first block


# -- the lifecycle table ------------------------------------------------------------------

_ACTIONS = st.lists(st.sampled_from(["send", "complete", "error"]), max_size=30)


@given(_ACTIONS)
@settings(max_examples=200, deadline=None)
def test_lifecycle_follows_the_table(actions: list[str]) -> None:
    """Before the stream starts: OPEN until complete/error, then COMPLETING for good; a send
    succeeds exactly while OPEN; the first finishing call decides."""
    emitter = SseEmitter(None, max_queued=100)
    accepted = 0
    finished_by: str | None = None
    for action in actions:
        before = emitter.state
        if action == "send":
            if before is EmitterState.OPEN:
                emitter.send("x")
                accepted += 1
            else:
                with pytest.raises(EmitterClosedError):
                    emitter.send("x")
        elif action == "complete":
            emitter.complete()
            finished_by = finished_by or "complete"
        else:
            emitter.complete_with_error(ValueError("e"))
            finished_by = finished_by or "error"
        expected = EmitterState.OPEN if finished_by is None else EmitterState.COMPLETING
        assert emitter.state is expected
    stats = emitter.statistics()
    assert (stats.sent, stats.queued) == (accepted, accepted)
    assert emitter.close_reason is None  # nothing has been streamed yet
