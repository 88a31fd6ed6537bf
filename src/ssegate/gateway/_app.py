"""``create_app(settings)``: the gateway as one ASGI app, and ``run(settings)`` to serve it."""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.config
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI

from .. import __version__
from .._jobs import JobManager, ObserverChain
from .._shutdown import SHUTDOWN_STATE_KEY
from ..server import ShutdownAwareServer
from ..store import Store, StoreUnavailableError
from ..store.memory import MemoryStore, MemoryStoreConfig
from ._auth import GatewaySecurity
from ._errors import install_error_handlers
from ._http import DEFAULT_MAX_HEAD_BYTES, bounded_http_protocol
from ._logging import logging_config
from ._metrics import GatewayMetrics, MeteredStore
from ._models import build_registry
from ._settings import Settings
from ._state import GatewayState
from .routes import learn_router, openai_router, ops_router, pages_router, streams_router

sniffio: ModuleType | None
try:
    import sniffio
except ImportError:  # pragma: no cover - anyio does not need it
    sniffio = None

__all__ = ["create_app", "run"]

log = logging.getLogger("ssegate.gateway")


def _open_store(settings: Settings) -> Store:
    """The store ``settings.store`` names: ``memory``, or ``redis://``/``rediss://``/``unix://``."""
    if settings.store == "memory":
        return MemoryStore(
            MemoryStoreConfig(
                max_streams=settings.max_streams,
                max_events=settings.max_events_per_stream,
                finished_ttl=settings.stream_ttl,
                lease_ttl=settings.lease_ttl or 15.0,
            )
        )
    if settings.store.startswith(("redis://", "rediss://", "unix://")):
        from ..store.redis import RedisStore, RedisStoreConfig  # imports redis only when used

        return RedisStore(
            RedisStoreConfig(
                url=settings.store,
                key_prefix=settings.redis_prefix,
                max_events=settings.max_events_per_stream,
                finished_ttl=settings.stream_ttl,
                lease_ttl=settings.lease_ttl or 10.0,
            )
        )
    raise ValueError(f"unknown store {settings.store!r}: use 'memory' or redis://host:port/db")


def _check_store(settings: Settings) -> str | None:
    """Connect to the store once before serving; the reason if it can't be reached."""
    if settings.store == "memory":
        return None

    async def probe() -> None:
        async with _open_store(settings):
            pass

    try:
        anyio.run(probe)
    except StoreUnavailableError as exc:
        return exc.message
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app for ``settings`` (defaults: demo model, memory store, loopback)."""
    settings = settings or Settings()
    security = GatewaySecurity(settings)  # keys, tokens, limits: fail fast on a bad keys file
    models = build_registry(settings)  # fail fast on a bad provider configuration
    _open_store(settings)  # fail fast on a bad store URL (connecting waits for the lifespan)
    metrics = GatewayMetrics()  # one registry per app: no global state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The metered store times every operation and ends producer-less streams.
        store = MeteredStore(_open_store(settings), metrics)
        observer = ObserverChain(security.observer(), metrics)
        async with store, JobManager(store, observer=observer) as jobs:
            metrics.bind(active=jobs.active, statistics=store.statistics)
            state = GatewayState(
                settings=settings, models=models, store=store, jobs=jobs, metrics=metrics
            )
            app.state.gateway = state
            try:
                # Responses find the shutdown signal here; ShutdownAwareServer leaves ours.
                yield {SHUTDOWN_STATE_KEY: state.shutdown}
            finally:
                state.draining = True
                await jobs.drain(settings.drain_timeout)
                state.shutdown.set()
                await models.aclose()

    app = FastAPI(
        title="ssegate",
        version=__version__,
        summary="Resumable, cancellable LLM streams over Server-Sent Events.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    security.install(app)  # CORS, API keys and rate, body size (docs/security.md)
    app.include_router(ops_router)
    app.include_router(learn_router)
    app.include_router(streams_router)
    app.include_router(openai_router)
    app.include_router(pages_router)
    return app


class _GatewayServer(ShutdownAwareServer):
    """On SIGTERM: turn unready, let generations finish (drain), then end open streams."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout = drain_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        """On the signal itself, turn unready at once: uvicorn only notices ``should_exit``
        on its next tick (up to 0.1 s later), and a load balancer probing ``/readyz``
        meanwhile must already see 503."""
        super().handle_exit(sig, frame)
        state: GatewayState | None = getattr(self._app.state, "gateway", None)
        if state is not None:
            state.draining = True

    async def shutdown(self, sockets: Any = None) -> None:
        state: GatewayState | None = getattr(self._app.state, "gateway", None)
        if state is not None:
            state.draining = True
            running = state.jobs.active()
            if running:
                log.warning("draining %d generation(s), up to %.0f s", running, self._drain_timeout)
            cancelled = await state.jobs.drain(self._drain_timeout)
            if cancelled:
                log.warning("drain timeout: cancelled %d generation(s)", cancelled)
            state.shutdown.set()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM as uvicorn does, but exit 0 after a clean drain.

        uvicorn re-raises the captured signal after shutting down, so the process would die
        "by SIGTERM" (exit -15) even when every stream was drained; a process manager or
        orchestrator reads that as a failure.
        """
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def run(settings: Settings) -> int:
    """Serve the gateway until SIGINT/SIGTERM; return the exit code."""
    log_config = logging_config(settings.log_level, json=settings.log_json)
    logging.config.dictConfig(log_config)
    try:
        app = create_app(settings)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config,
        loop="uvloop",
        http=bounded_http_protocol(DEFAULT_MAX_HEAD_BYTES),
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout) + 10,
    )
    problem = _check_store(settings)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    server = _GatewayServer(config, app, settings.drain_timeout)
    _tune_gc()
    with _asyncio_declared():
        server.run()
    return 0 if server.started else 1


@contextlib.contextmanager
def _asyncio_declared() -> Iterator[None]:
    """Tell sniffio, for the block, that the code runs on asyncio, as ``anyio.run`` does.

    Every anyio call (``current_time``, a cancel scope, a task group, an event) first asks
    sniffio which library runs it. uvicorn starts the loop with ``asyncio.run``, which does not
    say, so sniffio sniffs — an import statement and ``asyncio.current_task()`` — each time:
    about 1 µs, several times per relayed token (measured with py-spy in the relay
    benchmark). Set here, the context variable is copied into every task the server starts.
    """
    if sniffio is None:  # pragma: no cover - anyio then checks for a running loop, cheaply
        yield
        return
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        yield
    finally:
        sniffio.current_async_library_cvar.reset(token)


def _tune_gc() -> None:
    """Make the cyclic GC cheaper for a long-running gateway (the process is ours: ``run`` is
    the CLI's entry point, never a library call).

    What exists at startup lives as long as the process, so it is frozen out of every later
    collection; and young collections run ten times less often, so objects alive only while
    a token is in flight (coroutine frames, parsed chunks) are no longer promoted to the
    oldest generation, whose collections walk every stored event and pause the loop for tens
    to hundreds of milliseconds under load (measured with gc.callbacks in the relay benchmark).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 10)
