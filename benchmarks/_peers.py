"""The servers under test, each behind the same endpoints, written as their users would.

Every peer serves:

* ``GET /stream?n=N&interval_ms=F&size=S&stamp=0|1&burst=0|1`` — ``N`` events, ``id: <i>``
  and ``data: <payload>``, with a pause of ``F`` ms between events. At ``F = 0`` the producer
  still yields to the event loop once per event (``await asyncio.sleep(0)``), as a relay does
  whose tokens arrive from its upstream one read at a time; only with ``burst=1`` does it make
  the whole stream without a loop turn (a case no LLM relay meets, reported apart as
  "burst"). The payload is ``"%08d:" % i`` padded with ``x`` to ``S`` bytes, or with
  ``stamp=1`` ``"%08d:%019d:" % (i, time.time_ns())`` padded the same way (latency).
* ``GET /idle`` — an event stream that sends nothing (but the peer's own heartbeats).
* ``GET /ready`` — ``200 ok`` once serving.

Each peer runs in its own process (``python -m benchmarks._serve_peer PEER``). The apps are
built here, lazily, so a peer's process imports only its own framework.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple

#: Library peers: name -> what it is (for the report).
STREAM_PEERS: dict[str, str] = {
    "bare": "bare uvloop asyncio.Protocol writing SSE bytes (the limit for Python)",
    "starlette": "Starlette StreamingResponse of pre-encoded bytes, uvicorn",
    "sse-starlette": "sse-starlette EventSourceResponse, uvicorn",
    "fastapi-sse": "FastAPI's own SSE (fastapi.sse.EventSourceResponse), uvicorn",
    "aiohttp-sse": "aiohttp-sse on aiohttp's server",
    "ssegate": "ssegate EventSourceResponse, uvicorn (ssegate.server)",
    "ssegate@pre-redesign": "the same app on ssegate as of the commit before the redesign",
    "ssegate-granian": "ssegate EventSourceResponse, granian",
}

MAX_EVENTS = 10_000_000
MAX_SIZE = 64 * 1024


def make_payload(size: int, stamp: bool) -> Callable[[int], str]:
    """The payload of event ``i`` as a function (one string format per event)."""
    if stamp:
        pad = "x" * max(0, size - 29)
        return lambda i: f"{i:08d}:{time.time_ns():019d}:{pad}"
    pad = "x" * max(0, size - 9)
    return lambda i: f"{i:08d}:{pad}"


class StreamQuery(NamedTuple):
    """What ``/stream`` was asked for."""

    n: int
    interval: float  # seconds
    size: int
    stamp: bool
    pace: bool  # await asyncio.sleep(interval) after every event (False only for a burst)


def parse_query(query: str | bytes) -> StreamQuery:
    """A ``/stream`` query string, read."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    values: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        values[name] = value
    n = min(int(values.get("n") or 100), MAX_EVENTS)
    interval = max(0.0, float(values.get("interval_ms") or 0)) / 1000
    size = min(max(int(values.get("size") or 32), 0), MAX_SIZE)
    pace = interval > 0 or values.get("burst") != "1"
    return StreamQuery(n, interval, size, values.get("stamp") == "1", pace)


# -- Starlette-based peers -----------------------------------------------------------------


def _starlette_app(stream: Any, idle: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ready(request: Any) -> Any:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/stream", stream), Route("/idle", idle), Route("/ready", ready)]
    )


async def _forever() -> None:
    await asyncio.Event().wait()


def starlette_app() -> Any:
    """Plain Starlette: a StreamingResponse of bytes the app encodes itself."""
    from starlette.responses import StreamingResponse

    async def stream(request: Any) -> Any:
        n, interval, size, stamp, pace = parse_query(request.url.query)
        payload = make_payload(size, stamp)

        async def events() -> Any:
            for i in range(n):
                yield f"id: {i}\ndata: {payload(i)}\n\n".encode()
                if pace:
                    await asyncio.sleep(interval)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    async def idle(request: Any) -> Any:
        async def events() -> Any:
            await _forever()
            yield b""

        return StreamingResponse(events(), media_type="text/event-stream")

    return _starlette_app(stream, idle)


def sse_starlette_app() -> Any:
    """sse-starlette with its defaults (15 s pings, CRLF line ends)."""
    from sse_starlette import EventSourceResponse, ServerSentEvent

    async def stream(request: Any) -> Any:
        n, interval, size, stamp, pace = parse_query(request.url.query)
        payload = make_payload(size, stamp)

        async def events() -> Any:
            for i in range(n):
                yield ServerSentEvent(data=payload(i), id=str(i))
                if pace:
                    await asyncio.sleep(interval)

        return EventSourceResponse(events())

    async def idle(request: Any) -> Any:
        async def events() -> Any:
            await _forever()
            yield ""

        return EventSourceResponse(events())

    return _starlette_app(stream, idle)


def ssegate_app() -> Any:
    """ssegate's EventSourceResponse with its defaults (15 s heartbeat)."""
    from ssegate import EventSourceResponse, ServerSentEvent

    async def stream(request: Any) -> Any:
        n, interval, size, stamp, pace = parse_query(request.url.query)
        payload = make_payload(size, stamp)

        async def events() -> Any:
            for i in range(n):
                yield ServerSentEvent(data=payload(i), id=str(i))
                if pace:
                    await asyncio.sleep(interval)

        return EventSourceResponse(events())

    async def idle(request: Any) -> Any:
        async def events() -> Any:
            await _forever()
            yield ""

        return EventSourceResponse(events())

    return _starlette_app(stream, idle)


def fastapi_sse_app() -> Any:
    """FastAPI's own SSE: a generator path operation with ``response_class=EventSourceResponse``."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    app = FastAPI()

    @app.get("/stream", response_class=EventSourceResponse)
    async def stream(
        n: int = 100, interval_ms: float = 0, size: int = 32, stamp: int = 0, burst: int = 0
    ) -> Any:
        payload = make_payload(min(max(size, 0), MAX_SIZE), stamp == 1)
        interval = max(interval_ms, 0) / 1000
        pace = interval > 0 or burst != 1
        for i in range(min(n, MAX_EVENTS)):
            # raw_data: the payload is already text (data= would JSON-quote it).
            yield ServerSentEvent(raw_data=payload(i), id=str(i))
            if pace:
                await asyncio.sleep(interval)

    @app.get("/idle", response_class=EventSourceResponse)
    async def idle() -> Any:
        await _forever()
        yield ServerSentEvent(raw_data="")

    @app.get("/ready", response_class=PlainTextResponse)
    async def ready() -> str:
        return "ok"

    return app


# -- aiohttp-sse ------------------------------------------------------------------------


def aiohttp_sse_app() -> Any:
    """aiohttp-sse's ``sse_response`` with its defaults (15 s pings)."""
    from aiohttp import web
    from aiohttp_sse import sse_response

    async def stream(request: web.Request) -> web.StreamResponse:
        n, interval, size, stamp, pace = parse_query(request.query_string)
        payload = make_payload(size, stamp)
        async with sse_response(request) as resp:
            for i in range(n):
                await resp.send(payload(i), id=str(i))
                if pace:
                    await asyncio.sleep(interval)
        return resp

    async def idle(request: web.Request) -> web.StreamResponse:
        async with sse_response(request) as resp:
            await _forever()
        return resp  # pragma: no cover - never reached

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/idle", idle)
    app.router.add_get("/ready", ready)
    return app


# -- bare uvloop protocol ----------------------------------------------------------------

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_READY = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_PING = b": ping\n\n"
_BATCH_BYTES = 64 * 1024


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class BareProtocol(asyncio.Protocol):
    """One connection: parse the request line, then write events with loop callbacks only.

    At interval 0 it writes one event per loop turn (``call_soon``), or for a burst encodes
    events until 64 KiB are ready (or flow control pauses it) and writes them in one chunk:
    what any server could do at best in Python. It sends the same 15 s heartbeat as the others
    on idle streams.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.paused = False
        self.resume: Callable[[], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.next = 0
        self.n = 0
        self.interval = 0.0
        self.pace = True
        self.payload: Callable[[int], str] = str

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resume is not None:
            resume, self.resume = self.resume, None
            resume()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        line = self.buffer[: self.buffer.find(b"\r\n")]
        self.buffer = self.buffer[end + 4 :]
        target = line.split(b" ")[1]
        path, _, query = target.partition(b"?")
        if path == b"/ready":
            self.transport.write(_READY)
        elif path == b"/idle":
            self.transport.write(_HEAD)
            self.timer = self.loop.call_later(15.0, self.ping)
        elif path == b"/stream":
            self.n, self.interval, size, stamp, self.pace = parse_query(query)
            self.payload = make_payload(size, stamp)
            self.transport.write(_HEAD)
            self.step()
        else:
            self.transport.write(_NOT_FOUND)

    def ping(self) -> None:
        if self.transport is not None:
            self.transport.write(_chunk(_PING))
            self.timer = self.loop.call_later(15.0, self.ping)

    def step(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        if self.paused:
            self.resume = self.step
            return
        payload, n, i = self.payload, self.n, self.next
        if self.pace:
            transport.write(_chunk(f"id: {i}\ndata: {payload(i)}\n\n".encode()))
            i += 1
        else:
            parts: list[str] = []
            size = 0
            while i < n and size < _BATCH_BYTES:
                event = f"id: {i}\ndata: {payload(i)}\n\n"
                parts.append(event)
                size += len(event)
                i += 1
            transport.write(_chunk("".join(parts).encode()))
        self.next = i
        if i >= n:
            transport.write(b"0\r\n\r\n")
        elif self.interval:
            self.timer = self.loop.call_later(self.interval, self.step)
        else:
            self.loop.call_soon(self.step)  # let other connections have a turn


#: Builders of the ASGI (or aiohttp) app of each peer; ``bare`` has no app.
APPS: dict[str, Callable[[], Any]] = {
    "starlette": starlette_app,
    "sse-starlette": sse_starlette_app,
    "fastapi-sse": fastapi_sse_app,
    "aiohttp-sse": aiohttp_sse_app,
    "ssegate": ssegate_app,
    "ssegate@pre-redesign": ssegate_app,
    "ssegate-granian": ssegate_app,
}


def granian_target() -> Any:
    """The app granian imports (``benchmarks._peers:granian_target``, a factory)."""
    return ssegate_app()
