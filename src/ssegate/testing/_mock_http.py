"""The mock upstream's server: the state shared with its callers, routing a request to its
response, a small HTTP/1.1 parser and one asyncio protocol per connection that drives the
response generators with loop timers (no task per stream)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import orjson

from ._mock_formats import (
    DROP,
    FORMATS,
    RESET,
    OpenAIFormat,
    completion_response,
    content_text,
    error_response,
    json_response,
    stream_response,
)
from ._mock_scenario import MockRequest, Scenario

__all__ = ["MockState", "serve"]

_log = logging.getLogger("ssegate.testing.mock_upstream")

_END = object()  # the response generator is exhausted


class MockState:
    """Shared by the server thread and the callers; ``cond`` guards ``records``."""

    def __init__(self, defaults: Scenario, api_key: str | None, max_records: int) -> None:
        self.defaults = defaults
        self.api_key = api_key
        self.max_records = max_records
        self.cond = threading.Condition()
        self.records: list[MockRequest] = []
        self.connections: set[_Connection] = set()
        self.connection_ids = itertools.count(1)
        self.stopped = False

    def record(self, request: _Request, connection: int) -> MockRequest:
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        with self.cond:
            rec = MockRequest(
                index=len(self.records),
                method=request.method,
                path=request.path,
                headers=request.headers,
                json=body,
                connection=connection,
                started_at=time.time(),
            )
            if len(self.records) < self.max_records:
                self.records.append(rec)
                self.cond.notify_all()
        return rec


# ---------------------------------------------------------------------------------------------
# Routing: a request to its response generator
# ---------------------------------------------------------------------------------------------


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _presented_key(fmt: str, headers: dict[str, str]) -> str:
    if fmt == "anthropic":
        return headers.get("x-api-key", "")
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else ""


def _generation(state: MockState, rec: MockRequest, request: _Request) -> Iterator[object]:
    fmt_type = FORMATS[(request.method, request.path)]
    rec.format = fmt = fmt_type.name
    body = rec.json
    if not isinstance(body, dict):
        rec.status = 400
        yield error_response(fmt, 400, "", "", "mock upstream: the body must be a JSON object")
        return
    model = str(body.get("model") or "mock-model")
    key = _presented_key(fmt, rec.headers)
    try:
        s = state.defaults.apply(model)
        s = s.apply(rec.headers.get("x-mock", ""))
        s = s.apply(_last_user_text(body.get("messages")))
    except ValueError as exc:
        rec.status = 400
        yield error_response(fmt, 400, model, key, f"mock upstream: {exc}")
        return
    rec.scenario = s
    header_delay = s.header_delay_ms / 1000
    if s.fault == "slow_headers" and not header_delay:
        header_delay = 3600.0
    if header_delay:
        yield header_delay
    if s.fault == "hangup":
        yield DROP
        return
    status = int(s.fault[5:]) if s.fault and s.fault.startswith("http_") else 200
    if status == 200 and state.api_key is not None and key != state.api_key:
        status = 401
    streaming = body.get("stream", fmt == "ollama")
    if status == 200 and not streaming and fmt != "openai":
        rec.status = 400
        yield error_response(fmt, 400, model, key, "mock upstream: only stream=true is served")
        return
    rec.status = status
    if status != 200:
        yield error_response(fmt, status, model, key)
        return
    format_ = fmt_type(rec, s, body)
    if streaming:
        yield from stream_response(rec, format_)
    else:
        yield from completion_response(rec, cast(OpenAIFormat, format_))


def _respond(state: MockState, conn: _Connection, request: _Request) -> Iterator[object]:
    if request.path.startswith("/_mock/"):
        if request.method == "GET" and request.path == "/_mock/requests":
            since = int(parse_qs(request.query).get("since", ["0"])[0] or 0)
            with state.cond:
                records = list(state.records[since:])
            yield json_response(200, [r.to_dict() for r in records])
        else:
            yield json_response(404, {"error": {"message": "no such mock route"}})
        return
    rec = conn.track(state.record(request, conn.id))
    key = (request.method, request.path)
    if key in FORMATS:
        yield from _generation(state, rec, request)
        return
    rec.status = 200
    if key in (("GET", "/v1/models"), ("GET", "/models")):
        models = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "ssegate-mock"}
            for name in ("mock-model", "mock-reasoner")
        ]
        yield json_response(200, {"object": "list", "data": models})
    elif key == ("GET", "/api/tags"):
        tag = {"name": "mock-model", "model": "mock-model", "size": 0, "digest": "0" * 64}
        yield json_response(200, {"models": [tag]})
    else:
        rec.status = 404
        message = f"mock upstream: no route {request.method} {request.path}"
        yield json_response(404, {"error": {"message": message, "type": "not_found"}})


# ---------------------------------------------------------------------------------------------
# HTTP/1.1: a small request parser and one asyncio protocol per connection
# ---------------------------------------------------------------------------------------------

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parse(buf: bytearray) -> tuple[_Request | None, int, dict[str, str] | None]:
    """``(request, bytes used, headers)``; ``request`` is None until the body is complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise _BadRequest(431)
        return None, 0, None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest(400)
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = _dechunk(buf, start)
        if dechunked is None:
            return None, 0, headers
        body, used = dechunked
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest(400) from None
        if length > _MAX_BODY or length < 0:
            raise _BadRequest(413)
        if len(buf) - start < length:
            return None, 0, headers
        body, used = bytes(buf[start : start + length]), start + length
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    url = urlsplit(target)
    return _Request(method, url.path, url.query, headers, body, keep_alive), used, headers


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        except ValueError:
            raise _BadRequest(400) from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            return None if end < 0 else (bytes(body), end + 4)
        if eol + 4 + size > len(buf):
            return None
        body += buf[eol + 2 : eol + 2 + size]
        if len(body) > _MAX_BODY:
            raise _BadRequest(413)
        pos = eol + 4 + size


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, drives response generators with loop timers."""

    def __init__(self, state: MockState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.id = next(state.connection_ids)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.response: Iterator[object] | None = None
        self.record: MockRequest | None = None
        self.records: list[MockRequest] = []
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.paused = False
        self.waiting = False
        self.continued = False

    def track(self, rec: MockRequest) -> MockRequest:
        self.record = rec
        self.records.append(rec)
        return rec

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.response is None:
            self._next_request()
        elif len(self.buffer) > _MAX_HEAD + _MAX_BODY and self.transport:
            self.transport.abort()  # a client pipelining without bound

    def eof_received(self) -> bool:
        return False  # the client is done: close, which reports connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        now = time.time()
        self.state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.response is not None:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
            self.response = None
        for rec in self.records:
            rec.closed_at = now
            rec.closed.set()
        self.records.clear()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.waiting:
            self.waiting = False
            self._step()

    def _next_request(self) -> None:
        transport = self.transport
        while self.response is None and self.buffer and transport is not None:
            try:
                request, used, headers = _parse(self.buffer)
            except _BadRequest as exc:
                transport.write(json_response(exc.status, {"error": {"message": "bad request"}}))
                transport.close()
                return
            if request is None:
                if headers and headers.get("expect", "").lower() == "100-continue":
                    if not self.continued:
                        self.continued = True
                        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            del self.buffer[:used]
            self.continued = False
            self.keep_alive = request.keep_alive
            self.response = _respond(self.state, self, request)
            self._step()

    def _step(self) -> None:
        self.timer = None
        response, transport = self.response, self.transport
        if response is None or transport is None:
            return
        out: list[bytes] = []
        try:
            while not self.paused:
                item = next(response, _END)
                if type(item) is bytes:
                    out.append(item)
                    continue
                if out:  # coalesce everything up to a pause into one write
                    transport.write(b"".join(out))
                    out.clear()
                if type(item) is float:
                    self.timer = self.loop.call_later(item, self._step)
                    return
                if item is _END:
                    self._finish()
                elif item is DROP or item is RESET:
                    if self.record is not None:
                        self.record.server_closed = True
                    if item is RESET:
                        sock = transport.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        transport.abort()
                    else:
                        transport.close()
                return  # _END, DROP, RESET, STALL
        except Exception:
            _log.exception("mock upstream response failed")
            transport.abort()
            return
        if out:
            transport.write(b"".join(out))
        self.waiting = True

    def _finish(self) -> None:
        if self.record is not None:
            self.record.ended_at = time.time()
        self.response = None
        self.record = None
        if not self.keep_alive and self.transport is not None:
            self.buffer.clear()  # nothing more is served on this connection
            self.transport.close()
        elif self.buffer:
            self.loop.call_soon(self._next_request)


# ---------------------------------------------------------------------------------------------
# Running it: in a background thread (tests) or blocking (CLI)
# ---------------------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(
    state: MockState,
    host: str,
    port: int,
    started: Callable[[asyncio.AbstractEventLoop, asyncio.Server], None],
    *,
    handle_signals: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``state`` on its own event loop in this thread until the loop is stopped;
    ``started`` gets the loop and the server once listening. With ``ssl_context`` (a server
    context holding its certificate) it serves https."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        server = loop.run_until_complete(
            loop.create_server(
                lambda: _Connection(state, loop), host, port, backlog=4096, ssl=ssl_context
            )
        )
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, loop.stop)
        started(loop, server)
        try:
            loop.run_forever()
        finally:
            server.close()
            for conn in list(state.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0))  # let connection_lost callbacks run
    finally:
        asyncio.set_event_loop(None)
        loop.close()
