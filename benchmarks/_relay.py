"""The relay a user writes from the seed: FastAPI + httpx, re-yielding the upstream's chunks.

``POST /v1/chat/completions`` opens a streaming request to the upstream (its URL in the
``BENCH_UPSTREAM`` environment variable, e.g. ``http://127.0.0.1:9000/v1``) and re-yields
every chunk through a ``StreamingResponse``. The httpx pool gets the same 1,000 connections
as ssegate's providers, so neither side is throttled by its pool.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse


def relay_app() -> FastAPI:
    """The plain relay app."""
    upstream = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9000/v1")
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(base_url=upstream, timeout=60, limits=limits) as client:
            clients["upstream"] = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        client = clients["upstream"]

        async def relay() -> AsyncIterator[bytes]:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for chunk in response.aiter_bytes():
                    yield chunk

        return StreamingResponse(relay(), media_type="text/event-stream")

    @app.get("/ready", response_class=PlainTextResponse)
    async def ready() -> str:
        return "ok"

    return app


def relay_target() -> Any:
    """The factory uvicorn imports."""
    return relay_app()
