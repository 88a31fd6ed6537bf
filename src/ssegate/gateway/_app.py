"""``create_app(settings)``: the gateway as one ASGI app, and ``run(settings)`` to serve it."""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.config
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI

from .. import __version__
from .._jobs import JobManager, JobObserver, ObserverChain
from .._shutdown import SHUTDOWN_STATE_KEY
from ..server import ShutdownAwareServer, listening_sockets
from ..store import Store, StoreUnavailableError
from ..store.memory import MemoryStore, MemoryStoreConfig
from ._auth import AuthMiddleware, GatewaySecurity
from ._cors import JsonCORSMiddleware
from ._errors import install_error_handlers
from ._event_streams import EventStreamTracker
from ._http import DEFAULT_MAX_HEAD_BYTES, bounded_http_protocol
from ._keys import KeyRing
from ._limits import BodyLimitMiddleware
from ._logging import ContentLog, StreamLog, logging_config
from ._metrics import GatewayMetrics, MeteredStore
from ._models import build_registry
from ._quota import RateLimiter, StreamQuota
from ._settings import Settings
from ._state import GatewayState
from ._tokens import ReadTokens
from ._workers import WORKER_HEADER, supervise, worker_shares, workers_refusal
from .routes import (
    anthropic_router,
    document,
    learn_router,
    openai_router,
    ops_router,
    pages_router,
    responses_router,
    streams_router,
    ui_chat_router,
)

sniffio: ModuleType | None
try:
    import sniffio
except ImportError:  # pragma: no cover - anyio does not need it
    sniffio = None

__all__ = ["create_app", "run"]

log = logging.getLogger("ssegate.gateway")

#: Seconds a drain waits, once the generations are over, for their followers to finish.
_FOLLOWERS_FLUSH = 2.0

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _open_store(settings: Settings) -> Store:
    """The store ``--store`` names: ``memory``, or a Redis URL (``RedisStoreConfig.url``)."""
    config = settings.store
    if config.url == "memory":
        return MemoryStore(
            MemoryStoreConfig(
                max_streams=config.max_streams,
                max_events=config.max_events_per_stream,
                finished_ttl=config.stream_ttl,
                lease_ttl=config.lease_ttl or 15.0,
            )
        )
    from ..store.redis import RedisStore, RedisStoreConfig  # imports redis only when used

    return RedisStore(
        RedisStoreConfig(
            url=config.url,
            key_prefix=config.redis_prefix,
            max_events=config.max_events_per_stream,
            finished_ttl=config.stream_ttl,
            lease_ttl=config.lease_ttl or 10.0,
        )
    )


def _check_store(settings: Settings) -> str | None:
    """Connect to the store once before serving; the reason if it can't be reached."""
    if settings.store.url == "memory":
        return None

    async def probe() -> None:
        async with _open_store(settings):
            pass

    try:
        anyio.run(probe)
    except StoreUnavailableError as exc:
        return exc.message
    return None


def _security(settings: Settings) -> GatewaySecurity:
    """The keys, tokens, limiters and logs of one app (a bad keys file fails here)."""
    limits = settings.limits
    keys = KeyRing.from_config(settings.security)
    if not len(keys):
        keyring: KeyRing | None = None
        tokens: ReadTokens | None = None
    else:
        keyring, tokens = keys, ReadTokens.for_settings(settings, keys)
    rate = limits.rate_limit
    return GatewaySecurity(
        keys=keyring,
        tokens=tokens,
        limiter=RateLimiter(rate, limits.rate_burst) if rate > 0 else None,
        token_limiter=RateLimiter(rate, limits.rate_burst) if rate > 0 else None,
        quota=StreamQuota(limits.max_streams_per_key),
        event_streams=EventStreamTracker(),
        stream_log=StreamLog(),
        content_log=ContentLog() if settings.logging.content else None,
    )


def _install_middleware(app: FastAPI, settings: Settings, security: GatewaySecurity) -> None:
    """The middleware, outermost first: CORS, API keys and request rate, body size."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    if security.keys is not None and security.tokens is not None:
        app.add_middleware(
            AuthMiddleware,
            keys=security.keys,
            tokens=security.tokens,
            limiter=security.limiter,
            token_limiter=security.token_limiter,
        )
    origins = settings.security.cors_origins
    if origins:
        # '*' only when given, and then never with credentials (the CORS spec forbids it,
        # and a credentialed wildcard would let any site act as the user).
        wildcard = "*" in origins
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=["*"] if wildcard else list(origins),
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Accept"],
            expose_headers=[
                "x-ssegate-stream-id",
                "x-ssegate-read-token",
                "x-request-id",
                "Location",
                "Retry-After",
            ],
            max_age=600,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app for ``settings`` (defaults: demo model, memory store, loopback)."""
    settings = settings or Settings()
    security = _security(settings)
    models = build_registry(settings)  # fail fast on a bad provider configuration
    _open_store(settings)  # fail fast on a bad store URL (connecting waits for the lifespan)
    metrics = GatewayMetrics()  # one registry per app: no global state
    observer: JobObserver = ObserverChain(security.quota, security.stream_log, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The metered store times every operation and ends producer-less streams.
        store = MeteredStore(_open_store(settings), metrics)
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
                await jobs.drain(settings.server.drain_timeout)
                state.shutdown.set()
                await models.aclose()

    app = FastAPI(
        title="ssegate",
        version=__version__,
        summary="Resumable, cancellable LLM streams over Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.ssegate_security = security
    install_error_handlers(app)
    _install_middleware(app, settings, security)
    app.include_router(ops_router)
    app.include_router(learn_router)
    app.include_router(streams_router)
    app.include_router(openai_router)
    app.include_router(anthropic_router())
    app.include_router(responses_router)
    app.include_router(ui_chat_router(settings.server.ui_chat_path))
    app.include_router(pages_router)
    document(app)  # /openapi.json lists the statuses the routes really answer
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
            running = state.jobs.running()
            if running:
                log.warning(
                    "draining %d generation(s), up to %.0f s", len(running), self._drain_timeout
                )
            cancelled = await state.jobs.drain(self._drain_timeout)
            if cancelled:
                log.warning("drain timeout: cancelled %d generation(s)", cancelled)
            # Those generations are over, but their followers here may still have the last
            # events to write (with the Redis store they reach followers after the producer's
            # last write): let them, briefly, before the open streams are ended.
            security: GatewaySecurity | None = getattr(self._app.state, "ssegate_security", None)
            if security is not None and running:
                with anyio.move_on_after(_FOLLOWERS_FLUSH):
                    await security.event_streams.until_closed(set(running))
            state.shutdown.set()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM as uvicorn does, but exit 0 after a clean drain.

        uvicorn's own version re-raises the captured signal after shutting down, so the
        process would die "by SIGTERM" (exit -15) even when every stream was drained; a process
        manager or orchestrator reads that as a failure. This one only restores the previous
        handlers.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled in the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(settings: Settings) -> int:
    """Serve the gateway until SIGINT/SIGTERM; return the exit code."""
    server_config, log_level = settings.server, settings.logging.level
    logging.config.dictConfig(logging_config(log_level, json=settings.logging.json))
    try:
        app = create_app(settings)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    refusal = workers_refusal(settings)
    if refusal is not None:
        log.error("%s", refusal)
        return 2
    problem = _check_store(settings)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    workers = server_config.workers
    config = _uvicorn_config(app, settings)
    try:
        sockets = listening_sockets(
            server_config.host,
            server_config.port,
            server_config.listeners * workers,
            backlog=config.backlog,
        )
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", server_config.host, server_config.port, exc)
        return 1
    _tune_gc()
    try:
        if workers == 1:
            return _serve(config, app, settings, sockets)
        return supervise(
            worker_shares(sockets, workers),
            lambda share: _serve(_worker_config(app, settings), app, settings, share),
            stop_timeout=server_config.drain_timeout + 15,
        )
    finally:
        for sock in sockets:
            sock.close()


def _uvicorn_config(
    app: FastAPI, settings: Settings, headers: list[tuple[str, str]] | None = None
) -> uvicorn.Config:
    server_config, log_level = settings.server, settings.logging.level
    return uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level=log_level,
        log_config=logging_config(log_level, json=settings.logging.json),
        loop="uvloop",
        http=bounded_http_protocol(
            DEFAULT_MAX_HEAD_BYTES,
            head_timeout=server_config.head_timeout,
            body_timeout=server_config.body_timeout,
        ),
        lifespan="on",
        timeout_graceful_shutdown=int(server_config.drain_timeout) + 10,
        headers=headers,
    )


def _worker_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """A worker's config: every response says which process answered it."""
    return _uvicorn_config(app, settings, [(WORKER_HEADER, str(os.getpid()))])


def _serve(config: uvicorn.Config, app: FastAPI, settings: Settings, sockets: list[Any]) -> int:
    """Run one gateway process on ``sockets``; the exit code."""
    server = _GatewayServer(config, app, settings.server.drain_timeout)
    with _asyncio_declared():
        server.run(sockets=sockets)
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
