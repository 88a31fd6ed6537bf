"""Run an ASGI app on a real uvicorn server on ``127.0.0.1:0`` in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

__all__ = ["RunningServer", "run_server"]


@dataclass
class RunningServer:
    """A live server: ``url`` is ``http://127.0.0.1:<port>``."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    url: str
    loop: asyncio.AbstractEventLoop | None = field(default=None)

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask uvicorn to shut down as on SIGTERM; return whether it exited within ``timeout``."""
        self.server.should_exit = True
        self.thread.join(timeout)
        return not self.thread.is_alive()


class _Server(uvicorn.Server):
    """uvicorn's server, telling a thread when it listens (uvicorn has no event for it)."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self._ready.set()


@contextmanager
def run_server(app: Any, **config: Any) -> Iterator[RunningServer]:
    """Serve ``app`` on a free loopback port for the duration of the ``with`` block.

    Extra keyword arguments go to :class:`uvicorn.Config` (e.g. ``timeout_graceful_shutdown``).
    """
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "on")
    cfg = uvicorn.Config(app, host="127.0.0.1", port=0, **config)
    ready = threading.Event()
    server = _Server(cfg, ready)
    holder: dict[str, Any] = {}

    def _run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        asyncio.set_event_loop(loop)

        try:
            loop.run_until_complete(server.serve())
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=_run, name="uvicorn-test-server", daemon=True)
    thread.start()
    if not ready.wait(20) or not server.started:
        server.should_exit = True
        thread.join(5)
        raise RuntimeError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    running = RunningServer(server, thread, port, f"http://127.0.0.1:{port}", holder.get("loop"))
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop(15)
