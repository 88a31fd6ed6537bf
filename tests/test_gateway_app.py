"""How ``ssegate serve`` sets up the process it owns (``gateway/_app.py``)."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import uvloop

from ssegate.gateway._app import _asyncio_declared

# Without sniffio anyio checks for a running loop itself, cheaply: nothing to declare.
sniffio = pytest.importorskip("sniffio")


def test_the_served_loop_is_declared_asyncio_to_sniffio() -> None:
    """uvicorn runs the app with ``asyncio.run``, which does not tell sniffio the library;
    anyio then sniffs on every call. The gateway says it for the server's run, as
    ``anyio.run`` does, and every task the loop starts inherits it."""
    seen: list[str | None] = []

    async def task() -> None:
        seen.append(sniffio.current_async_library_cvar.get())
        anyio.current_time()  # anyio still works, taking the declared name

    async def main() -> None:
        seen.append(sniffio.current_async_library_cvar.get())
        await asyncio.get_running_loop().create_task(task())

    assert sniffio.current_async_library_cvar.get() is None
    with _asyncio_declared():
        uvloop.run(main())
    assert seen == ["asyncio", "asyncio"]
    assert sniffio.current_async_library_cvar.get() is None  # reset after the run
