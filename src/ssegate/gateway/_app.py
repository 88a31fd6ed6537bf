"""``create_app(settings)``: the gateway as one ASGI app, and ``run(settings)`` to serve it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .._jobs import JobManager
from .._response import SHUTDOWN_STATE_KEY
from .._serve import ShutdownAwareServer
from ..store import Store
from ..store.memory import MemoryStore, MemoryStoreConfig
from ._errors import install_error_handlers
from ._models import build_registry
from ._settings import Settings
from ._state import GatewayState
from .routes import learn_router, openai_router, ops_router, pages_router, streams_router

__all__ = ["create_app", "run"]

log = logging.getLogger("ssegate.gateway")


def _open_store(settings: Settings) -> Store:
    if settings.store == "memory":
        return MemoryStore(
            MemoryStoreConfig(
                max_streams=settings.max_streams,
                max_events=settings.max_events_per_stream,
                finished_ttl=settings.stream_ttl,
            )
        )
    raise ValueError(f"unknown store {settings.store!r}: use 'memory' or redis://host:port/db")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app for ``settings`` (defaults: demo model, memory store, loopback)."""
    settings = settings or Settings()
    models = build_registry(settings)  # fail fast on a bad provider configuration

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        store = _open_store(settings)
        async with store, JobManager(store) as jobs:
            state = GatewayState(settings=settings, models=models, store=store, jobs=jobs)
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
        version="0.1.0",
        summary="Resumable, cancellable LLM streams over Server-Sent Events.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if wildcard else list(settings.cors_origins),
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Accept"],
            expose_headers=["x-ssegate-stream-id", "Location", "Retry-After"],
            max_age=600,
        )
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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout) + 10,
    )
    server = _GatewayServer(config, app, settings.drain_timeout)
    server.run()
    return 0 if server.started else 1
