"""Shared helpers for tests that run a real gateway in front of the real mock upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ssegate import Decoder, ServerSentEvent
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockUpstream, RunningServer, run_server


@dataclass
class Gateway:
    """A running gateway and the mock upstream behind it."""

    server: RunningServer
    mock: MockUpstream
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running_gateway(mock: MockUpstream | None = None, **settings: Any) -> Iterator[Gateway]:
    """A gateway on 127.0.0.1:0 whose provider is the mock upstream (OpenAI format)."""
    own_mock = mock is None
    upstream = mock or MockUpstream().start()
    try:
        settings.setdefault("provider", "openai")
        settings.setdefault("base_url", upstream.url + "/v1")
        settings.setdefault("model", "mock")
        config = Settings.from_options(**settings)
        with run_server(create_app(config)) as server:
            yield Gateway(server, upstream, config)
    finally:
        if own_mock:
            upstream.stop()


def ask(text: str, **extra: Any) -> dict[str, Any]:
    """A ``POST /v1/streams`` body with one user message."""
    return {"messages": [{"role": "user", "content": text}], **extra}


async def sse_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Decode a streaming httpx response with our own decoder."""
    decoder = Decoder()
    async for chunk in response.aiter_raw():
        for event in decoder.feed(chunk):
            yield event


async def collect(response: httpx.Response) -> list[ServerSentEvent]:
    """Every event of a response, to its end."""
    return [event async for event in sse_events(response)]


def payloads(events: list[ServerSentEvent]) -> list[tuple[int, str, dict[str, Any]]]:
    """``(id, type, data)`` triples of gateway events."""
    return [(int(e.id or 0), e.event or "", json.loads(e.data or "null")) for e in events]


def answer_text(events: list[ServerSentEvent]) -> str:
    """The concatenated ``delta`` texts."""
    return "".join(json.loads(e.data or "{}")["text"] for e in events if e.event == "delta")
