"""What every provider speaks: a :class:`ChatRequest` in, normalised :data:`Delta` values out.

A provider turns one upstream wire format (OpenAI-compatible SSE, Anthropic Messages SSE,
Ollama NDJSON, the offline demo) into the same small vocabulary, so jobs and routes never look
at a provider's JSON. Deltas are yielded in the order the upstream sent them; a provider's
stream ends normally only after the upstream's own end marker (``[DONE]``, ``message_stop``,
``"done": true``) and raises an :class:`~ssegate.providers.UpstreamError` for every other ending.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

__all__ = [
    "AnnotationDelta",
    "ChatRequest",
    "Delta",
    "Finish",
    "Provider",
    "ReasoningDelta",
    "RefusalDelta",
    "ResponseMeta",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of reasoning ("thinking") text, sent apart from the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """A piece of the model's refusal, sent apart from the answer (OpenAI's ``refusal``)."""

    text: str


@dataclass(frozen=True, slots=True)
class AnnotationDelta:
    """Annotations of the answer, as the upstream sent them (OpenAI's ``url_citation``)."""

    annotations: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What the upstream says about its response as a whole (OpenAI's names); sent when first
    seen and again only if it changes."""

    system_fingerprint: str | None = None
    service_tier: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The ``meta`` event payload: the fields the upstream sent."""
        fields = {"system_fingerprint": self.system_fingerprint, "service_tier": self.service_tier}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call, in OpenAI's incremental shape.

    The first delta of a call carries ``id`` and ``name``; later ones append to ``arguments``.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``tool_call`` event payload."""
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
        if self.name is not None:
            out["name"] = self.name
        out["arguments"] = self.arguments
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the upstream; the ``*_details`` breakdowns (cached, reasoning
    and audio tokens, in OpenAI's shape) as the upstream sent them, if it did."""

    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``usage`` event payload."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.prompt_tokens_details is not None:
            out["prompt_tokens_details"] = self.prompt_tokens_details
        if self.completion_tokens_details is not None:
            out["completion_tokens_details"] = self.completion_tokens_details
        return out


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the upstream stopped: ``stop``, ``length``, ``tool_calls``, ``content_filter``…

    Providers map their own vocabulary onto OpenAI's (Anthropic ``end_turn`` → ``stop``,
    ``max_tokens`` → ``length``, ``tool_use`` → ``tool_calls``).
    """

    reason: str


Delta: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | RefusalDelta
    | AnnotationDelta
    | ToolCallDelta
    | ResponseMeta
    | Usage
    | Finish
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One generation request, already validated by the gateway.

    ``messages`` are OpenAI-style dicts (``{"role", "content"}``, plus tool fields passed
    through); ``model`` is the upstream's model name.
    """

    messages: list[dict[str, Any]]
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """An LLM upstream. ``stream()`` is an async generator; consume it under ``aclosing()``.

    Closing the generator early (cancel, Stop) must close the upstream HTTP connection before
    ``aclose()`` returns.
    """

    name: str

    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Start the generation and yield its deltas; raise ``UpstreamError`` on any fault."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connection pool."""
        ...
