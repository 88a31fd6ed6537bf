"""A plain-TCP upstream connection on asyncio, for the lean transport: one protocol, no pauses.

anyio's socket stream stops reading between two ``receive()`` calls and starts again at the
next one, and the lean transport bounded each read with its own ``asyncio.timeout``: for an
upstream that sends one token per packet, that is two ``epoll_ctl`` calls, a timer armed and
cancelled and a few layers of Python per token. :class:`AsyncioWire` keeps the socket readable
for the connection's life and keeps what arrives in its own bounded buffer:

* ``receive()`` hands over everything buffered at once (``b""`` at the end of the stream);
* reading pauses only while more than ``_HIGH_WATER`` bytes wait unread, so a client that
  stops reading never makes the buffer grow without bound;
* the read limit is one deadline per connection, checked by a single loop timer that is
  re-armed only when it fires early: a read that completes costs no timer work;
* while the connection sits idle in the pool, anything the server sends (a FIN included)
  lands in the protocol, so :meth:`AsyncioWire.idle_and_open` answers from its state.

The lean transport uses it for ``http`` on asyncio; ``https`` and other anyio backends keep
anyio's streams behind :class:`AnyioWire`, which offers the same four calls (``receive``,
``send``, ``aclose``, ``idle_and_open``), so the transport reads every connection one way.
Faults raise what the transport expects: ``OSError`` (or anyio's broken/closed-resource errors)
from ``send``/``receive`` — the transport maps them to httpx's ``WriteError``/``ReadError`` —
and ``TimeoutError`` for a read that waited past its limit.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
from typing import Protocol

import anyio
import anyio.abc

__all__ = ["AnyioWire", "AsyncioWire", "Wire", "connect_asyncio", "on_asyncio"]

_HIGH_WATER = 1024 * 1024  # unread bytes before the socket stops being read
_READ_SIZE = 256 * 1024  # the most one anyio read asks for


class Wire(Protocol):
    """What the lean transport needs of a connection."""

    async def receive(self, limit: float | None) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...

    def idle_and_open(self) -> bool: ...


def on_asyncio() -> bool:
    """Whether an asyncio loop runs this code (not another anyio backend, such as trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _readable_now(sock: socket.socket | None) -> bool:
    """Whether ``sock`` has something to read right now (bytes or a FIN), or can't be asked:
    for a connection idle in the pool, either means it can't carry another request.

    Asked through :mod:`selectors` (epoll, kqueue…), which takes any descriptor:
    ``select.select`` refuses one past ``FD_SETSIZE`` (1024), and a process that holds a
    thousand client streams has upstream sockets there. Once per request, not per read."""
    try:
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            return bool(selector.select(0))
    except (OSError, ValueError):
        return True


class AsyncioWire(asyncio.Protocol):
    """One TCP connection's protocol and the stream interface the lean transport reads."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_drain",
        "_eof",
        "_error",
        "_loop",
        "_paused",
        "_size",
        "_timer",
        "_timer_at",
        "_transport",
        "_waiter",
        "_write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: OSError | None = None
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc if isinstance(exc, OSError) else OSError(str(exc))
        self._wake()
        self._release_drain()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain()

    def _release_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the stream ----------------------------------------------------------------------

    async def receive(self, limit: float | None) -> bytes:
        """What has arrived since the last call, waiting up to ``limit`` seconds for a byte;
        ``b""`` once the server has closed and everything was read."""
        if self._buffer:
            await asyncio.sleep(0)  # data was waiting: let the loop run others first
        elif not self._eof and self._error is None:
            await self._wait(limit)
        if not self._buffer:
            if self._error is not None:
                raise self._error
            return b""
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        """Write ``data``; waits while the socket's write buffer is full."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise self._error or ConnectionResetError("the connection is closed")
        transport.write(data)
        while self._write_paused and not transport.is_closing():
            self._drain = self._loop.create_future()
            await self._drain
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Close at once: the server sees the connection end now, not a loop turn later
        (the transport's own ``abort`` closes the socket from a callback)."""
        transport = self._transport
        if transport is None:
            return
        try:
            _shutdown(transport.get_extra_info("socket"))
        finally:
            transport.abort()

    async def aclose(self) -> None:
        """:meth:`abort`, as the transport closes every connection it drops."""
        self.abort()

    def idle_and_open(self) -> bool:
        """Whether nothing has arrived since the last read and the server has not closed:
        neither in this protocol nor in the socket (what the loop has not read yet)."""
        if self._buffer or self._eof or self._error is not None or self._transport is None:
            return False
        return not _readable_now(self._transport.get_extra_info("socket"))

    # -- waiting -------------------------------------------------------------------------

    async def _wait(self, limit: float | None) -> None:
        waiter = self._waiter = self._loop.create_future()
        if limit is not None:
            deadline = self._deadline = self._loop.time() + limit
            timer = self._timer
            if timer is None or self._timer_at > deadline:  # none armed, or too late
                if timer is not None:
                    timer.cancel()
                self._arm(deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no read waiting: the next one arms a timer again
        if self._loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:  # the read that armed this timer completed; a later one is waiting
            self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check_deadline)


def _shutdown(sock: socket.socket | None) -> None:
    """Send the FIN now. uvloop hands out a stand-in socket without ``shutdown()``, so this
    shuts down a duplicate of the descriptor: shutdown acts on the connection, not the fd."""
    if sock is None:
        return
    try:
        fd = sock.fileno()
        if fd < 0:
            return
        with socket.socket(fileno=os.dup(fd)) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the server, or never connected
        pass


async def connect_asyncio(host: str, port: int) -> AsyncioWire:
    """Open a TCP connection on the running asyncio loop (asyncio and uvloop both set
    ``TCP_NODELAY`` on it)."""
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(lambda: AsyncioWire(loop), host, port)
    return wire


class AnyioWire:
    """An anyio byte stream (TLS, or a backend other than asyncio) as a :class:`Wire`."""

    __slots__ = ("_on_asyncio", "_stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        # A connection is used on the event loop that opened it: asked once, not per read.
        self._on_asyncio = on_asyncio()

    async def receive(self, limit: float | None) -> bytes:
        """One read (``b""`` at the end of the stream), waiting up to ``limit`` seconds."""
        stream = self._stream
        try:
            if limit is None:
                return await stream.receive(_READ_SIZE)
            if self._on_asyncio:
                # The same limit at a third of the cost of anyio.fail_after(), paid on every
                # read. Python >= 3.11's timeout counts cancellations, so an anyio cancel
                # scope around it keeps working.
                async with asyncio.timeout(limit):
                    return await stream.receive(_READ_SIZE)
            with anyio.fail_after(limit):
                return await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            return b""

    async def send(self, data: bytes) -> None:
        """Write ``data``."""
        await self._stream.send(data)

    async def aclose(self) -> None:
        """Close at once (no TLS goodbye)."""
        await anyio.aclose_forcefully(self._stream)

    def idle_and_open(self) -> bool:
        """anyio stops reading between ``receive()`` calls, so a FIN (or stray bytes) from the
        server is still in the socket: readable while idle means unusable."""
        try:
            sock = self._stream.extra(anyio.abc.SocketAttribute.raw_socket)
        except anyio.TypedAttributeLookupError:
            return False
        return not _readable_now(sock)
