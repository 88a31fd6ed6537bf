"""A lean HTTP/1.1 load generator for event streams, on uvloop.

One ``asyncio.Protocol`` per connection; httptools' C parser reads the response head and
undoes the chunked transfer encoding; the events are checked at byte level with one regular
expression per received chunk (C speed), never one Python call per event:

* ``seq`` — every ``data:`` line must equal the expected payload of the next event (a list
  built once and shared by all connections, compared as a slice): each event intact, in order,
  none missing, none repeated;
* ``stamp`` — ``data: <seq>:<time_ns>:<pad>``: the sequence is checked and the latency
  (receive time − send time, ns) recorded for every event;
* ``tokens`` — relayed LLM tokens ``"<seq>:<time_ns> "`` wherever they appear in the event
  (OpenAI chunks, gateway ``delta`` events): order checked, latency recorded; the stream must
  also end with its terminal marker (``data: [DONE]``, ``event: done``); the time from
  sending the request to the first token is recorded apart (first-token latency).

A connection may be TLS (``ssl=`` a client context): the https upstream read directly.

Each run is bounded: a fixed number of events per connection and a deadline after which the
connections still open are aborted and reported. A run stops by itself.

The generator's own garbage collector is kept out of the measurement: a run starts with a full
collection, freezes what survives and disables automatic collection until it ends (the heap
stays bounded: a run allocates per connection, not per event). Measured before this: with the
heap a full benchmark leaves behind, one 20 ms gen-2 pass in the generator delayed 32 of the
160 tokens that make a paced run's p99, for whichever peer happened to be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import httptools

Mode = Literal["seq", "stamp", "tokens", "idle"]

_DATA = re.compile(rb"^data: ([^\n]*)", re.M)
_STAMPED = re.compile(rb"^data: (\d{8}):(\d{19}):(x*)$", re.M)
_TOKEN = re.compile(rb"(\d+):(\d{19}) ")
_LINGER_RST = struct.pack("ii", 1, 0)
_MAX_ERRORS = 20


def request_bytes(
    method: str,
    path: str,
    *,
    port: int,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An HTTP/1.1 request (keep-alive; the client closes after the response)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Check:
    """What each connection must receive.

    ``count``: events (``seq``/``stamp``) or tokens (``tokens``) per connection. ``expected``:
    the payloads for ``seq``. ``pad``: the padding length for ``stamp``. ``terminal``: bytes
    that must appear once the stream ends (``tokens``). ``skip``: latencies of the first
    ``skip`` events of each stream are not recorded (they measure the start, not the flow).
    """

    mode: Mode
    count: int = 0
    expected: list[bytes] = field(default_factory=list)
    pad: int = 0
    terminal: bytes | None = None
    skip: int = 0


@dataclass
class LoadResult:
    """The outcome of one run. ``rate`` is events (or tokens) received per second, from the
    moment the requests went out (all at once, on open connections) to the last event."""

    connections: int
    completed: int
    failed: int
    events: int
    elapsed: float
    rate: float
    latencies_ns: list[int]
    errors: list[str]
    first_ns: list[int] = field(default_factory=list)  # request sent → first token

    @property
    def ok(self) -> bool:
        """Every connection got everything, intact and in order."""
        return self.failed == 0 and self.completed == self.connections


class _Run:
    def __init__(self, check: Check, connections: int, loop: asyncio.AbstractEventLoop) -> None:
        self.check = check
        self.connections = connections
        self.loop = loop
        self.events = 0
        self.completed = 0
        self.failed = 0
        self.headers = 0
        self.errors: list[str] = []
        self.latencies: list[int] = []
        self.first: list[int] = []
        self.finished: asyncio.Future[None] = loop.create_future()
        self.all_headers: asyncio.Future[None] = loop.create_future()
        self.conns: list[_Conn] = []

    def error(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(message)

    def count(self, k: int) -> None:
        self.events += k

    def settle(self) -> None:
        if self.completed + self.failed >= self.connections and not self.finished.done():
            self.finished.set_result(None)

    def got_headers(self) -> None:
        self.headers += 1
        if self.headers >= self.connections and not self.all_headers.done():
            self.all_headers.set_result(None)


class _Conn(asyncio.Protocol):
    """One connection: one request, one streamed response, checked as it arrives."""

    def __init__(self, run: _Run, request: bytes, send_on_connect: bool) -> None:
        self.run = run
        self.request = request
        self.send_on_connect = send_on_connect
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.tail = b""
        self.next = 0
        self.terminal_seen = False
        self.done = False
        self.sent_ns = 0
        check = run.check
        self.mode = check.mode
        self.expected = check.expected
        self.count = check.count
        self.pad = check.pad
        self.terminal = check.terminal
        self.skip = check.skip

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, don't check.
        self.transport = cast(asyncio.Transport, transport)
        if self.send_on_connect:
            self.sent_ns = time.time_ns()
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(f"bad HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done:
            self.fail(f"connection lost after {self.next} of {self.count} ({exc or 'EOF'})")

    # -- httptools callbacks ----------------------------------------------------------

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self.fail(f"HTTP {status}")
            return
        self.run.got_headers()

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        buf = self.tail + body if self.tail else body
        if b"\r" in buf:  # sse-starlette and aiohttp-sse end lines with CRLF
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.tail = buf
            return
        complete = buf[: end + 2]
        self.tail = buf[end + 2 :]
        mode = self.mode
        if mode == "seq":
            found = _DATA.findall(complete)
            k = len(found)
            if k:
                start = self.next
                if found != self.expected[start : start + k]:
                    self.fail(f"event {start}..{start + k} not intact or out of order")
                    return
                self.next = start + k
                self.run.count(k)
        elif mode == "stamp":
            now = time.time_ns()
            lat = self.run.latencies
            k = 0
            for seq, stamp, pad in _STAMPED.findall(complete):
                if int(seq) != self.next or len(pad) != self.pad:
                    self.fail(f"event {self.next}: got {seq!r}, pad {len(pad)}")
                    return
                if self.next >= self.skip:
                    lat.append(now - int(stamp))
                self.next += 1
                k += 1
            if k:
                self.run.count(k)
        elif mode == "tokens":
            if self.terminal_seen:
                return  # what follows the terminal marker may repeat the text (Responses API)
            at = complete.find(self.terminal) if self.terminal is not None else -1
            now = time.time_ns()
            lat = self.run.latencies
            k = 0
            for seq, stamp in _TOKEN.findall(complete if at < 0 else complete[:at]):
                if int(seq) != self.next:
                    self.fail(f"token {self.next}: got {seq!r}")
                    return
                if self.next == 0:
                    self.run.first.append(now - self.sent_ns)
                if self.next >= self.skip:
                    lat.append(now - int(stamp))
                self.next += 1
                k += 1
            if k:
                self.run.count(k)
            if at >= 0:
                self.terminal_seen = True

    def on_message_complete(self) -> None:
        if self.done:
            return
        if self.next != self.count:
            self.fail(f"ended after {self.next} of {self.count}")
            return
        if self.terminal is not None and not self.terminal_seen:
            self.fail("ended without its terminal event")
            return
        self.done = True
        self.run.completed += 1
        self.run.settle()
        if self.transport is not None:
            self.transport.close()

    # -- helpers ----------------------------------------------------------------------

    def send_request(self) -> None:
        if self.transport is not None and not self.done:
            self.sent_ns = time.time_ns()
            self.transport.write(self.request)

    def fail(self, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.run.failed += 1
        self.run.error(message)
        self.run.settle()
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            transport.abort()


async def _connect_all(
    run: _Run,
    port: int,
    request: bytes,
    *,
    send_on_connect: bool,
    concurrency: int,
    deadline: float,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    loop = run.loop
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            if time.perf_counter() > deadline:
                raise TimeoutError
            conn = _Conn(run, request, send_on_connect)
            run.conns.append(conn)
            try:
                await loop.create_connection(
                    lambda: conn,
                    "127.0.0.1",
                    port,
                    ssl=ssl_context,
                    server_hostname="127.0.0.1" if ssl_context else None,
                )
            except OSError as exc:
                conn.fail(f"connect failed: {exc}")

    await asyncio.gather(*(one() for _ in range(run.connections)))


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No automatic collection in this process while the block runs (restored after)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def run_streams(
    port: int,
    request: bytes,
    connections: int,
    check: Check,
    *,
    timeout: float,
    connect_concurrency: int = 256,
    stagger: float = 0.0,
    ssl_context: ssl.SSLContext | None = None,
) -> LoadResult:
    """Open ``connections`` connections (TLS with ``ssl_context``), then send ``request`` on
    all of them at once (or spread evenly over ``stagger`` seconds), and check every response
    until all end or ``timeout`` seconds pass. The generator does not collect garbage
    meanwhile (:func:`quiet_gc`)."""
    with quiet_gc():
        return await _run_streams(
            port, request, connections, check, timeout, connect_concurrency, stagger, ssl_context
        )


async def _run_streams(
    port: int,
    request: bytes,
    connections: int,
    check: Check,
    timeout: float,
    connect_concurrency: int,
    stagger: float,
    ssl_context: ssl.SSLContext | None,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(check, connections, loop)
    start = time.perf_counter()
    deadline = start + timeout
    await _connect_all(
        run,
        port,
        request,
        send_on_connect=False,
        concurrency=connect_concurrency,
        deadline=deadline,
        ssl_context=ssl_context,
    )
    begin = time.perf_counter()
    if stagger > 0 and connections > 1:
        step = stagger / connections
        for i, conn in enumerate(run.conns):
            loop.call_at(loop.time() + i * step, conn.send_request)
    else:
        for conn in run.conns:
            conn.send_request()
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), max(0.1, deadline - begin))
    except TimeoutError:
        left = [c for c in run.conns if not c.done]
        for conn in left:
            conn.fail(f"timed out after {conn.next} of {conn.count}")
            conn.abort()
    elapsed = time.perf_counter() - begin
    rate = run.events / elapsed if elapsed > 0 else 0.0
    return LoadResult(
        connections=connections,
        completed=run.completed,
        failed=run.failed,
        events=run.events,
        elapsed=elapsed,
        rate=rate,
        latencies_ns=run.latencies,
        errors=run.errors,
        first_ns=run.first,
    )


class IdleConnections:
    """``connections`` open event streams that are kept open until :meth:`close`."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def open(self) -> int:
        """Connections that got their headers and are still open."""
        return sum(1 for c in self._run.conns if c.transport is not None and not c.done)

    @property
    def errors(self) -> list[str]:
        """What went wrong (connects refused, statuses, drops)."""
        return self._run.errors

    def close(self) -> None:
        """Abort every connection (RST: no TIME_WAIT left behind)."""
        for conn in self._run.conns:
            conn.done = True
            conn.abort()


async def open_idle(
    port: int, request: bytes, connections: int, *, timeout: float, concurrency: int = 256
) -> tuple[IdleConnections, float]:
    """Open ``connections`` idle event streams; return them and the seconds it took once
    every one has its response headers (or ``timeout`` passed)."""
    loop = asyncio.get_running_loop()
    run = _Run(Check("idle"), connections, loop)
    start = time.perf_counter()
    deadline = start + timeout
    try:
        await asyncio.wait_for(
            _connect_all(
                run,
                port,
                request,
                send_on_connect=True,
                concurrency=concurrency,
                deadline=deadline,
            ),
            timeout,
        )
        await asyncio.wait_for(
            asyncio.shield(run.all_headers), max(0.1, deadline - time.perf_counter())
        )
    except TimeoutError:
        run.error(f"only {run.headers} of {connections} got headers within {timeout} s")
    return IdleConnections(run), time.perf_counter() - start


# -- a small one-shot HTTP client, for control requests --------------------------------------


@dataclass
class Reply:
    """A whole HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


class _OneShot(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[Reply], on_headers: Callable[[Reply], None] | None):
        self.done = done
        self.on_headers_cb = on_headers
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before the response ended"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.on_headers_cb is not None:
            self.on_headers_cb(Reply(self.parser.get_status_code(), self.headers, b""))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.done.done():
            reply = Reply(self.parser.get_status_code(), self.headers, b"".join(self.body))
            self.done.set_result(reply)
        if self.transport is not None:
            self.transport.close()


async def fetch(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a new connection (TLS with ``ssl_context``); the whole response."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Reply] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _OneShot(done, None),
        "127.0.0.1",
        port,
        ssl=ssl_context,
        server_hostname="127.0.0.1" if ssl_context else None,
    )
    try:
        transport.write(request_bytes(method, path, port=port, body=body, headers=headers))
        return await asyncio.wait_for(done, timeout)
    finally:
        transport.close()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted ``values`` (nearest rank); 0 when empty."""
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return float(values[index])


def expected_payloads(count: int, size: int) -> list[bytes]:
    """The ``seq`` payloads of events ``0..count-1`` (as the peers make them)."""
    from ._peers import make_payload

    payload = make_payload(size, False)
    return [payload(i).encode() for i in range(count)]


def stamp_pad(size: int) -> int:
    """The padding length of a stamped payload of ``size`` bytes."""
    return max(0, size - 29)


__all__ = [
    "Check",
    "IdleConnections",
    "LoadResult",
    "Reply",
    "expected_payloads",
    "fetch",
    "open_idle",
    "percentile",
    "request_bytes",
    "run_streams",
    "stamp_pad",
]
