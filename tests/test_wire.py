"""The asyncio upstream wire: a bounded read buffer, one read deadline per connection, prompt
close. Real loopback sockets; the server side is a plain asyncio server in the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from ssegate.providers import _wire
from ssegate.providers._wire import AsyncioWire, connect_asyncio

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Both loops the gateway runs on: asyncio's own (tests, embedders) and uvloop (serve),
    whose transports hand out a stand-in socket without ``shutdown()``."""
    return ("asyncio", {"use_uvloop": request.param})


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _served(handler: Handler) -> AsyncIterator[AsyncioWire]:
    """A server running ``handler`` for one connection, and a wire connected to it; the
    handler's socket is closed when it returns or when the test is over."""
    done: list[asyncio.Task[None]] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = await connect_asyncio("127.0.0.1", port)
    try:
        yield wire
    finally:
        for task in done:
            task.cancel()
        with contextlib.suppress(Exception):  # a failing abort() is the test's to report
            wire.abort()
        await asyncio.gather(*done, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_a_read_with_nothing_to_read_times_out_after_its_limit() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async with _served(silent) as wire:
        started = anyio.current_time()
        with pytest.raises(TimeoutError):
            await wire.receive(0.2)
        assert 0.15 < anyio.current_time() - started < 2
        release.set()


async def test_a_shorter_limit_after_a_longer_one_is_kept() -> None:
    go = asyncio.Event()

    async def one_then_silence(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await go.wait()
        w.write(b"a")
        await asyncio.Event().wait()

    async with _served(one_then_silence) as wire:
        asyncio.get_running_loop().call_soon(go.set)
        assert await wire.receive(30) == b"a"  # arms the deadline timer 30 s out
        started = anyio.current_time()
        with pytest.raises(TimeoutError):
            await wire.receive(0.2)
        assert anyio.current_time() - started < 5  # not the 30 s timer


async def test_a_timer_left_by_a_finished_read_does_not_time_out_the_next() -> None:
    # Read 1 (limit 1 s) ends at once and leaves its timer armed for t=1. Read 2 waits from
    # t≈0 and gets its byte at 0.6; read 3 waits from 0.6 (deadline 1.6) and is still
    # waiting when that timer fires at t=1: it must be re-armed, not taken for a timeout.
    async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"1")
        await asyncio.sleep(0.6)
        writer.write(b"2")
        await asyncio.sleep(0.6)
        writer.write(b"3")
        await asyncio.Event().wait()

    async with _served(paced) as wire:
        assert await wire.receive(1.0) == b"1"
        assert await wire.receive(1.0) == b"2"
        assert await wire.receive(1.0) == b"3"


async def test_reading_pauses_while_too_much_waits_unread_and_nothing_is_lost() -> None:
    total = 48 * _wire._HIGH_WATER  # far more than the kernel buffers on both sides hold
    sent = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes(range(256)) * (total // 256))
        await writer.drain()
        sent.set()
        writer.close()

    async with _served(flood) as wire:
        with anyio.fail_after(10):
            while not wire._paused:  # the buffer filled without anyone reading
                await asyncio.sleep(0.01)
        assert wire._size <= _wire._HIGH_WATER + 256 * 1024  # bounded: one read past the mark
        assert not sent.is_set()  # the rest waits in the kernel, not in our memory
        got = bytearray()
        with anyio.fail_after(10):
            while data := await wire.receive(5):
                got += data
        assert len(got) == total
        assert bytes(got[:512]) == bytes(range(256)) * 2


async def test_a_reset_is_an_oserror_and_abort_closes_at_once() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with _served(reset) as wire:
        with anyio.fail_after(5):
            with pytest.raises(ConnectionResetError):
                await wire.receive(5)

    closed = asyncio.Event()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        closed.set()

    async with _served(watch) as wire:
        assert wire.idle_and_open()
        wire.abort()
        assert not wire.idle_and_open()
        with anyio.fail_after(5):
            await closed.wait()
