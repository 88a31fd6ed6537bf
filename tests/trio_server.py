"""Serve an ASGI app with hypercorn on trio, on a free loopback port, in a background thread.

The trio twin of ``ssegate.testing.run_server`` (uvicorn runs on asyncio only): the response
and emitter suites run over real sockets on both anyio backends.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass
class TrioServer:
    """A live hypercorn server on trio: ``url`` is ``http://127.0.0.1:<port>``."""

    url: str
    token: trio.lowlevel.TrioToken


@contextmanager
def run_trio_server(app: Any, *, graceful_timeout: float = 5.0) -> Iterator[TrioServer]:
    """Serve ``app`` for the duration of the ``with`` block; shut down gracefully after it."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = None
    started = threading.Event()
    holder: dict[str, Any] = {}
    stop: trio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = trio.Event()
        holder["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                functools.partial(serve, shutdown_trigger=stop.wait), app, config
            )
            holder["url"] = binds[0]
            started.set()

    def _run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below
            holder["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=_run, name="hypercorn-trio-test-server", daemon=True)
    thread.start()
    if not started.wait(20) or "url" not in holder:
        raise RuntimeError(f"hypercorn did not start: {holder.get('error')!r}")
    try:
        yield TrioServer(holder["url"], holder["token"])
    finally:
        assert stop is not None
        trio.from_thread.run_sync(stop.set, trio_token=holder["token"])
        thread.join(graceful_timeout + 10)
        if "error" in holder:
            raise holder["error"]
