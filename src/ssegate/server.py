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
exits.

:func:`listening_sockets` opens several listening sockets on one port (``SO_REUSEPORT``): uvloop
accepts one connection per listening socket per turn of its loop, so while a few hundred
streams keep each turn busy, a burst of new connections waits in the kernel's queue for
seconds (1,000 requests sent at once: a first-token p99 of 6-20 s). With N sockets the kernel
spreads new connections over them and N are accepted per turn.

This module imports uvicorn; ``import ssegate`` does not import it.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn

from ._shutdown import SHUTDOWN_STATE_KEY, ShutdownSignal

__all__ = ["ShutdownAwareServer", "listening_sockets", "serve"]

_uvicorn_log = logging.getLogger("uvicorn.error")


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
        if sockets and self.started:
            # uvicorn says where it listens only for sockets it opened itself.
            host, port = sockets[0].getsockname()[:2]
            scheme = "https" if self.config.ssl else "http"
            shown = f"[{host}]" if ":" in host else host
            _uvicorn_log.info(
                "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, shown, port
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Trip the signal, then shut down as uvicorn does (which now finds streams ending)."""
        self.shutdown_signal.set()
        await super().shutdown(sockets=sockets)


def listening_sockets(
    host: str, port: int, count: int = 1, *, backlog: int = 2048
) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` (the first one picks the port if it is 0).

    With ``count > 1`` each is opened with ``SO_REUSEPORT``, and the kernel spreads new
    connections over them; where the platform has no load-balancing ``SO_REUSEPORT`` (it is
    Linux's), one socket is opened whatever ``count`` says.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
        count = 1
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if count > 1 and port != 0:
        # SO_REUSEPORT would let this process share a port another one of ours already
        # listens on: bind once without it, so a port in use fails here as it always did.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            address = sock.getsockname()  # the port the first socket got, for the others
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve(
    app: Any,
    *,
    shutdown_signal: ShutdownSignal | None = None,
    listeners: int = 1,
    **config: Any,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, like :func:`uvicorn.run` in a single process.

    Keyword arguments go to :class:`uvicorn.Config` (``host``, ``port``, ``log_level``...).
    ``listeners``: how many listening sockets share the port (see :func:`listening_sockets`).
    ``workers`` and ``reload`` are not supported: they run uvicorn's own ``Server`` in child
    processes.
    """
    if config.get("workers", 1) not in (None, 1) or config.get("reload"):
        raise ValueError("serve() runs one process; use a process manager for more workers")
    uvicorn_config = uvicorn.Config(app, **config)
    server = ShutdownAwareServer(uvicorn_config, shutdown_signal=shutdown_signal)
    sockets = listening_sockets(
        uvicorn_config.host, uvicorn_config.port, listeners, backlog=uvicorn_config.backlog
    )
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
