"""LLM providers: one async iterator of normalised deltas per upstream wire format.

Every provider's ``stream(request)`` is an async generator of :data:`Delta` values
(:class:`TextDelta`, :class:`ReasoningDelta`, :class:`ToolCallDelta`, :class:`Usage`,
:class:`Finish`; OpenAI-compatible upstreams also :class:`RefusalDelta`,
:class:`AnnotationDelta` and :class:`ResponseMeta`). A stream that ends normally has seen
the upstream's own end marker and ends with exactly one :class:`Finish`, preceded by
:class:`Usage` when the upstream reported it.
Every other ending raises an :class:`UpstreamError` subclass with a stable ``code``
(see :mod:`ssegate.providers._http` for the table); httpx exceptions never escape.

Consume a stream under :func:`contextlib.aclosing`: closing it early closes the upstream TCP
connection before ``aclose()`` returns, so nobody pays for tokens nobody reads::

    provider = create_provider("openai", base_url="http://127.0.0.1:8000/v1", api_key=key)
    async with aclosing(provider.stream(ChatRequest(messages, model="gpt-4o-mini"))) as deltas:
        async for delta in deltas:
            ...
    await provider.aclose()

This package imports httpx; ``import ssegate`` does not import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from ._base import (
    AnnotationDelta,
    ChatRequest,
    Delta,
    Finish,
    Provider,
    ReasoningDelta,
    RefusalDelta,
    ResponseMeta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from ._config import PROVIDER_KINDS, ProviderConfig, redact
from ._errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeoutError,
)
from .anthropic import AnthropicProvider
from .demo import DEMO_MODEL, DemoProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider

__all__ = [
    "DEMO_MODEL",
    "PROVIDER_KINDS",
    "AnnotationDelta",
    "AnthropicProvider",
    "ChatRequest",
    "Delta",
    "DemoProvider",
    "Finish",
    "OllamaProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderConfig",
    "ReasoningDelta",
    "RefusalDelta",
    "ResponseMeta",
    "TextDelta",
    "ToolCallDelta",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "Usage",
    "create_provider",
    "redact",
]


def create_provider(
    kind: str | ProviderConfig, *, client: httpx.AsyncClient | None = None, **options: Any
) -> Provider:
    """Build the provider for ``kind`` (``openai``, ``anthropic``, ``ollama``, ``demo``).

    ``options`` are :class:`ProviderConfig` fields (``base_url``, ``api_key``,
    ``connect_timeout``, ``idle_timeout``, ``headers``, ``demo_rate``…); an unknown option
    raises ``TypeError``. ``kind`` may also be a ready :class:`ProviderConfig`, which
    ``options`` then override. ``client`` shares an httpx pool (the provider won't close it).
    """
    if isinstance(kind, ProviderConfig):
        config = dataclasses.replace(kind, **options) if options else kind
    else:
        config = ProviderConfig(kind=kind, **options)
    if config.kind == "openai":
        return OpenAIProvider(config, client=client)
    if config.kind == "anthropic":
        return AnthropicProvider(config, client=client)
    if config.kind == "ollama":
        return OllamaProvider(config, client=client)
    return DemoProvider(config.demo_rate)
