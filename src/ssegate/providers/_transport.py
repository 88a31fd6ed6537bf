"""A lean HTTP/1.1 transport for httpx: anyio sockets and httptools' C parser.

httpx's default stack (httpcore + h11) turns every HTTP chunk into a Python event, so an
upstream streaming one token per chunk costs a dozen microseconds per token before any
provider code runs. This transport parses the response with ``httptools`` (llhttp, in C) and
hands httpx the body bytes of a whole socket read at once: every chunk that arrived together,
concatenated. The provider then decodes many tokens per call.

Plain ``http`` on asyncio runs on :class:`~ssegate.providers._wire.AsyncioWire` (one protocol
that keeps the socket readable, a bounded buffer and one read deadline per connection);
``https``, and any other anyio backend, on anyio's socket streams (``AnyioWire``). Both are
read, written, checked and closed through the same four calls.

What it does, and where it departs from httpcore:

* HTTP/1.1 only (ALPN offers ``http/1.1``), ``http`` and ``https``; TLS with the same default
  context httpx builds (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``). Proxies are not
  served: :class:`~ssegate.providers._http.HttpUpstream` uses httpx's own transport when the
  environment names one.
* A keep-alive pool per ``(scheme, host, port)``; ``max_connections`` bounds every open
  connection (idle ones included), ``max_keepalive`` the idle ones. A connection goes back to
  the pool only when its response was read to the end and both sides allow keep-alive;
  anything else (closed early, cancelled, a fault) closes it. An idle connection is dropped
  after ``keepalive_expiry`` seconds, or when the server has closed it (or sent anything)
  meanwhile. A request on a reused connection is not retried.
* httpx's ``timeout`` extension is honoured: ``connect`` (TCP and TLS), ``write``, ``read``
  (the longest wait for a byte, headers included) and ``pool``. Faults raise httpx's own
  exceptions: ``ConnectError``/``ConnectTimeout``, ``WriteError``/``WriteTimeout``,
  ``ReadError`` (reset), ``ReadTimeout``, ``PoolTimeout``, and ``RemoteProtocolError`` for a
  malformed response or a connection closed before the response ended.
* Informational (1xx) responses are skipped; ``101`` (upgrade) is refused. A ``HEAD``
  response ends with its headers and its connection is not reused.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httptools
import httpx

from ._wire import AnyioWire, Wire, connect_asyncio, on_asyncio

__all__ = ["LeanTransport"]

_MAX_HEAD = 64 * 1024  # bytes of a response head (status line and headers)
_CONNECTION_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)

_Key = tuple[str, str, int]


def _default_ssl_context() -> ssl.SSLContext:
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _reason(exc: BaseException) -> str:
    """The most telling message in ``exc``'s chain (anyio's own are often empty)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


class _Parse:
    """httptools callbacks for one response: status, headers, body pieces, completion.

    Informational (1xx) responses are forgotten as they complete; ``extra`` records bytes the
    server sent after the response (the connection is then not reused).
    """

    __slots__ = (
        "body",
        "complete",
        "extra",
        "head_size",
        "headers",
        "headers_done",
        "informational",
        "keep_alive",
        "parser",
        "reason",
        "status",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.headers_done = False
        self.informational = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.extra = False

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints…: the real answer follows.
            self.informational = True
            self.reason, self.headers, self.head_size = b"", [], 0
            return
        self.status = status
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.extra = True
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        elif self.complete:
            self.extra = True
        else:
            self.complete = True
            # Read now: once the message is over the parser forgets it.
            self.keep_alive = self.parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a malformed response raises ``RemoteProtocolError``."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise httpx.RemoteProtocolError(f"malformed response: {_reason(exc)}") from None
            self.extra = True  # junk after a complete answer: only the connection is lost


class _Connection:
    """One open connection: its wire, its pool key and the idle bookkeeping."""

    __slots__ = ("idle_since", "key", "stream")

    def __init__(self, key: _Key, stream: Wire) -> None:
        self.key = key
        self.stream = stream
        self.idle_since = 0.0

    def reusable(self, now: float, expiry: float) -> bool:
        """Whether this idle connection can carry another request."""
        return now - self.idle_since <= expiry and self.stream.idle_and_open()


class LeanTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` for HTTP/1.1 that yields a socket read at a time.

    Use it as ``httpx.AsyncClient(transport=LeanTransport(...))``. ``ssl_context`` defaults to
    httpx's own default context.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive: int | None = None,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self._max_keepalive = max_connections if max_keepalive is None else max_keepalive
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._permits = anyio.Semaphore(max_connections)
        self._idle: dict[_Key, list[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response once the head has arrived."""
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the lean transport serves http and https, not {url}")
        if not url.host:
            raise httpx.UnsupportedProtocol(f"no host in {url}")
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = await self._acquire(key, timeouts)
        try:
            await self._send(conn, request, timeouts.get("write"))
            parse = _Parse()
            await self._read_head(conn, parse, timeouts.get("read"))
        except BaseException:
            await self._discard(conn)
            raise
        stream = _ResponseStream(self, conn, parse, request.method, timeouts.get("read"))
        return httpx.Response(
            parse.status,
            headers=parse.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": parse.reason},
        )

    async def aclose(self) -> None:
        """Close every idle connection; connections still in use close when their response
        does."""
        self._closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        self._idle_count = 0
        for conn in idle:
            await self._discard(conn)

    # -- the pool ------------------------------------------------------------------------

    async def _acquire(self, key: _Key, timeouts: dict[str, float | None]) -> _Connection:
        if self._closed:
            raise RuntimeError("the transport is closed")
        idle = self._idle.get(key)
        if idle:
            now = anyio.current_time()
            while idle:
                conn = idle.pop()
                self._idle_count -= 1
                if conn.reusable(now, self._expiry):
                    return conn
                await self._discard(conn)
        if self._permits.value == 0 and self._idle_count:
            await self._evict_one()
        with anyio.move_on_after(_seconds(timeouts.get("pool"))) as scope:
            await self._permits.acquire()
        if scope.cancelled_caught:
            raise httpx.PoolTimeout("no free connection in the pool")
        try:
            stream = await self._connect(key, timeouts.get("connect"))
        except BaseException:
            self._permits.release()
            raise
        return _Connection(key, stream)

    async def _connect(self, key: _Key, limit: float | None) -> Wire:
        scheme, host, port = key
        try:
            with anyio.fail_after(_seconds(limit)):
                if scheme == "https":
                    if self._ssl_context is None:
                        self._ssl_context = _default_ssl_context()
                    tls = await anyio.connect_tcp(
                        host,
                        port,
                        ssl_context=self._ssl_context,
                        tls_hostname=host,
                        tls_standard_compatible=False,
                    )
                    return AnyioWire(tls)
                if on_asyncio():
                    return await connect_asyncio(host, port)
                return AnyioWire(await anyio.connect_tcp(host, port))
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (*_CONNECTION_ERRORS, ssl.SSLError) as exc:
            raise httpx.ConnectError(_reason(exc)) from exc

    async def _release(self, conn: _Connection) -> None:
        """Back to the pool: a connection whose response was read to its end."""
        waiting = self._permits.statistics().tasks_waiting
        if self._closed or waiting or self._idle_count >= self._max_keepalive:
            await self._discard(conn)  # a waiter for another host gets its permit
            return
        conn.idle_since = anyio.current_time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_count += 1

    async def _evict_one(self) -> None:
        for key, conns in self._idle.items():
            if conns:
                conn = conns.pop(0)
                self._idle_count -= 1
                if not conns:
                    del self._idle[key]
                await self._discard(conn)
                return

    async def _discard(self, conn: _Connection) -> None:
        """Close ``conn`` at once (no TLS goodbye) and free its place in the pool."""
        try:
            await conn.stream.aclose()
        finally:
            self._permits.release()

    # -- one exchange --------------------------------------------------------------------

    async def _send(self, conn: _Connection, request: httpx.Request, limit: float | None) -> None:
        url = request.url
        lines = [f"{request.method} ".encode(), url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value:  # httpx checks this; never trust it twice
                raise httpx.LocalProtocolError("illegal header value")
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        pending = b"".join(lines)
        try:
            with anyio.fail_after(_seconds(limit)):
                stream = request.stream
                if isinstance(stream, httpx.AsyncByteStream):
                    async for part in stream:
                        if not part:
                            continue
                        if chunked:
                            part = b"%x\r\n%b\r\n" % (len(part), part)
                        if pending:  # the head and the first part in one write
                            part, pending = pending + part, b""
                        await conn.stream.send(part)
                if chunked:
                    pending += b"0\r\n\r\n"
                if pending:
                    await conn.stream.send(pending)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except _CONNECTION_ERRORS as exc:
            raise httpx.WriteError(_reason(exc)) from exc

    async def _read_head(self, conn: _Connection, parse: _Parse, limit: float | None) -> None:
        received = 0
        while not parse.headers_done:
            data = await _receive(conn, limit)
            if not data:
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
            parse.feed(data)
            received += len(data)
            if parse.head_size > _MAX_HEAD or (received > _MAX_HEAD and not parse.headers_done):
                raise httpx.RemoteProtocolError("response head too large")
        if parse.status == 101:
            raise httpx.RemoteProtocolError("the server switched protocols (101)")


class _ResponseStream(httpx.AsyncByteStream):
    """The body: one ``bytes`` per socket read; the connection goes back to the pool only
    after a clean end."""

    __slots__ = ("_closed", "_conn", "_limit", "_parse", "_reusable", "_transport", "_until_close")

    def __init__(
        self,
        transport: LeanTransport,
        conn: _Connection,
        parse: _Parse,
        method: str,
        limit: float | None,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._parse = parse
        self._limit = limit
        self._closed = False
        self._reusable = method != "HEAD"
        if method == "HEAD":
            parse.complete = True  # the head is the whole answer
            parse.body.clear()
        # No length and not chunked: the body runs to the end of the connection.
        names = {name.lower() for name, _ in parse.headers}
        self._until_close = not parse.complete and not (
            b"content-length" in names or b"transfer-encoding" in names
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parse = self._parse
        if parse.body:
            body = b"".join(parse.body)
            parse.body.clear()
            yield body
        while not parse.complete:
            data = await _receive(self._conn, self._limit)
            if not data:
                if self._until_close:
                    parse.complete = True
                    self._reusable = False  # ended by the close
                    break
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            parse.feed(data)
            if parse.body:
                body = b"".join(parse.body)
                parse.body.clear()
                yield body

    async def aclose(self) -> None:
        """Return the connection to the pool after a clean, complete response; else close it."""
        if self._closed:
            return
        self._closed = True
        parse = self._parse
        if (
            self._reusable
            and parse.complete
            and not parse.extra
            and not self._until_close
            and parse.keep_alive
        ):
            await self._transport._release(self._conn)
        else:
            await self._transport._discard(self._conn)


def _seconds(timeout: Any) -> float:
    return float("inf") if timeout is None else float(timeout)


async def _receive(conn: _Connection, limit: float | None) -> bytes:
    """One socket read of ``conn``, ``b""`` at the end of the stream; httpx's exceptions for
    faults.

    ``limit`` (seconds, ``None`` for none) is httpx's read timeout: each phase's limit maps to
    its own httpx exception, so the limits are applied here rather than by the caller.
    """
    try:
        return await conn.stream.receive(limit)
    except TimeoutError:
        raise httpx.ReadTimeout("timed out waiting for the server") from None
    except _CONNECTION_ERRORS as exc:
        raise httpx.ReadError(_reason(exc)) from exc
