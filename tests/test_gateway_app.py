"""How ``ssegate serve`` sets up the process it owns (``gateway/_app.py``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

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


_SERVE_PROBE = """
import sniffio
from ssegate.gateway import _app
from ssegate.gateway import Settings

def serve(self, sockets=None):  # the server's run, as uvicorn.Server.run is called by run()
    print("library:", sniffio.current_async_library_cvar.get())
    self.started = True

_app._GatewayServer.run = serve
print("exit:", _app.run(Settings.from_options(port=0, log_level="warning")))
print("after:", sniffio.current_async_library_cvar.get())
"""


def test_serve_runs_the_server_with_asyncio_declared() -> None:
    """``ssegate serve`` (``gateway._app.run``) runs its server inside the declaration; in a
    process of its own, since ``run`` sets up logging and the GC for the whole process."""
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out == ["library: asyncio", "exit: 0", "after: None"]
