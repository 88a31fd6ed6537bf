"""Run an ASGI app on uvicorn so that open event streams end promptly on shutdown.

uvicorn (0.55), asked to stop (SIGINT/SIGTERM or ``Server.should_exit``), closes its listeners,
marks busy connections ``keep_alive = False`` and then waits for every open response to finish —
without a bound unless ``timeout_graceful_shutdown`` is set, and then by cancelling the tasks,
which cuts streams mid-body. It sends no ``http.disconnect`` to a running response and has no
shutdown hook for the app: the ASGI lifespan ``shutdown`` message comes only after the
connections are gone.

:class:`ShutdownAwareServer` is a subclass — uvicorn is not patched — that

* publishes a :class:`~ssegate.ShutdownSignal` in the lifespan state under
  :data:`~ssegate.SHUTDOWN_STATE_KEY`, where every ``EventSourceResponse`` and
  ``SseEmitter`` of the app finds it through the request scope's ``state``, and
* sets that signal as the first step of :meth:`uvicorn.Server.shutdown`, whatever began the
  shutdown (a signal, ``should_exit``, ``limit_max_requests``).

Open streams then end cleanly within moments, uvicorn closes their connections, and the server
exits. This module imports uvicorn; ``import ssegate`` does not import it.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from ._shutdown import SHUTDOWN_STATE_KEY, ShutdownSignal

__all__ = ["ShutdownAwareServer", "serve"]


class ShutdownAwareServer(uvicorn.Server):
    """A :class:`uvicorn.Server` that ends the app's event streams when it begins shutting down.

    ``shutdown_signal`` is the signal to trip (a new one by default); pass the same one to
    responses explicitly if the app does not run the lifespan protocol.
    """

    def __init__(
        self, config: uvicorn.Config, *, shutdown_signal: ShutdownSignal | None = None
    ) -> None:
        super().__init__(config)
        self.shutdown_signal = shutdown_signal if shutdown_signal is not None else ShutdownSignal()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then publish the signal in the lifespan state.

        Every request scope gets a shallow copy of that state, so the app needs no code for it.
        An app's own lifespan value under the same key wins.
        """
        await super().startup(sockets=sockets)
        state = getattr(getattr(self, "lifespan", None), "state", None)
        if isinstance(state, dict):
            state.setdefault(SHUTDOWN_STATE_KEY, self.shutdown_signal)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Trip the signal, then shut down as uvicorn does (which now finds streams ending)."""
        self.shutdown_signal.set()
        await super().shutdown(sockets=sockets)


def serve(app: Any, *, shutdown_signal: ShutdownSignal | None = None, **config: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, like :func:`uvicorn.run` in a single process.

    Keyword arguments go to :class:`uvicorn.Config` (``host``, ``port``, ``log_level``...).
    ``workers`` and ``reload`` are not supported: they run uvicorn's own ``Server`` in child
    processes.
    """
    if config.get("workers", 1) not in (None, 1) or config.get("reload"):
        raise ValueError("serve() runs one process; use a process manager for more workers")
    server = ShutdownAwareServer(uvicorn.Config(app, **config), shutdown_signal=shutdown_signal)
    server.run()
