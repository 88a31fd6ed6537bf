"""The OpenAI-compatible Chat Completions provider (streaming).

``POST {base_url}/chat/completions`` with ``"stream": true`` and
``"stream_options": {"include_usage": true}``, read as SSE with our own decoder. It serves
OpenAI, DeepSeek, Qwen (DashScope compatible mode), Moonshot, vLLM, llama.cpp, LM Studio and
Ollama's ``/v1``.

What it reads from each chunk's ``choices[0].delta``: ``content``; ``reasoning_content``
(DeepSeek, Qwen, llama.cpp) or ``reasoning`` (vLLM, OpenRouter) as reasoning; ``refusal``;
``annotations``; ``tool_calls``; and ``choices[0].finish_reason``. A chunk with empty
``choices`` and a ``usage`` object is the usage chunk (servers that send usage on every chunk
are fine: the last one wins), its ``prompt_tokens_details``/``completion_tokens_details`` kept
as they are. A chunk's ``system_fingerprint`` and ``service_tier`` become a
:class:`ResponseMeta` when first seen or changed. The stream must end with ``data: [DONE]``.

Where we differ from a plain reading of the docs:

* Usage and the finish reason are yielded together at ``[DONE]`` (usage first), so
  :class:`Finish` is always the last delta even though OpenAI sends usage after the finish.
* A ``[DONE]`` without any ``finish_reason`` finishes with ``"stop"``.
* Only choice index 0 is read (``n`` > 1 is not supported).
* An ``{"error": {...}}`` object (or an ``event: error``) inside the 200 stream becomes
  :class:`~ssegate.providers.UpstreamStreamError` with code ``upstream_<error code or type>``.
* A JSON object with none of ``choices``, ``usage``, ``error`` is an unknown shape and
  raises :class:`~ssegate.providers.UpstreamProtocolError`, as does malformed JSON.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx

from ._base import (
    AnnotationDelta,
    ChatRequest,
    Delta,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    ResponseMeta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from ._config import ProviderConfig
from ._errors import UpstreamProtocolError
from ._http import HttpUpstream
from ._parsing import SseParser, loads_chunk, stream_error

__all__ = ["OpenAIProvider"]


class OpenAIProvider:
    """Streams from any OpenAI-compatible ``/chat/completions`` endpoint.

    ``client`` lets several providers share one httpx pool; the provider then does not close it.
    """

    name = "openai"

    def __init__(
        self, config: ProviderConfig | None = None, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.config = config or ProviderConfig(kind="openai")
        self._http = HttpUpstream(self.config, client)

    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Start the generation and yield its deltas; raise ``UpstreamError`` on any fault."""
        headers = {"accept": "text/event-stream"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return self._http.stream_deltas(
            "/chat/completions", build_body(request), headers, _OpenAIParser(self.config)
        )

    async def aclose(self) -> None:
        """Release the connection pool."""
        await self._http.aclose()


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for ``request``; ``request.extra`` is merged in last (streaming stays on)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = request.tools
    body.update(request.extra)
    body["stream"] = True
    return body


class _OpenAIParser(SseParser):
    terminator = "[DONE]"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._meta = ResponseMeta()

    def on_event(self, event: str, data: str) -> Iterator[Delta]:
        if "[DONE]" in data and data.strip() == "[DONE]":
            self.done = True
            return
        chunk = loads_chunk(data, "upstream chunk")
        error = chunk.get("error")
        if error or event == "error":
            raise _error(error if error else chunk, self.secrets)
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if choices is None and usage is None:
            raise UpstreamProtocolError(f"unknown upstream chunk shape (keys: {sorted(chunk)[:8]})")
        meta = ResponseMeta(
            _optional_text(chunk.get("system_fingerprint")),
            _optional_text(chunk.get("service_tier")),
        )
        if meta != self._meta and (meta.system_fingerprint or meta.service_tier):
            self._meta = meta
            yield meta
        if isinstance(usage, dict):
            self._usage = _usage(usage)
        elif usage is not None:
            raise UpstreamProtocolError("upstream usage is not an object")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise UpstreamProtocolError("upstream choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise UpstreamProtocolError("upstream choice is not an object")
            if choice.get("index", 0) != 0:
                continue
            yield from self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> Iterator[Delta]:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise UpstreamProtocolError("upstream delta is not an object")
        reasoning = delta.get("reasoning_content")
        if reasoning is None:
            reasoning = delta.get("reasoning")
        if reasoning:
            yield ReasoningDelta(_text(reasoning, "reasoning"))
        content = delta.get("content")
        if content:
            yield TextDelta(_text(content, "content"))
        refusal = delta.get("refusal")
        if refusal:
            yield RefusalDelta(_text(refusal, "refusal"))
        annotations = delta.get("annotations")
        if annotations:
            if not isinstance(annotations, list) or not all(
                isinstance(a, dict) for a in annotations
            ):
                raise UpstreamProtocolError("upstream annotations are not a list of objects")
            yield AnnotationDelta(annotations)
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise UpstreamProtocolError("upstream tool_calls is not a list")
            for position, call in enumerate(tool_calls):
                yield _tool_call(call, position)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = _text(finish, "finish_reason")

    def final(self) -> Iterator[Delta]:
        if self._usage is not None:
            yield self._usage
        yield Finish(self._finish or "stop")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise UpstreamProtocolError(f"upstream {what} is not a string")
    return value


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _details(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _usage(usage: dict[str, Any]) -> Usage:
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        raise UpstreamProtocolError("upstream usage counts are not integers")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        prompt_tokens_details=_details(usage.get("prompt_tokens_details")),
        completion_tokens_details=_details(usage.get("completion_tokens_details")),
    )


def _tool_call(call: object, position: int) -> ToolCallDelta:
    if not isinstance(call, dict):
        raise UpstreamProtocolError("upstream tool call is not an object")
    function = call.get("function") or {}
    if not isinstance(function, dict):
        raise UpstreamProtocolError("upstream tool call function is not an object")
    index = call.get("index", position)
    call_id = call.get("id")
    name = function.get("name")
    arguments = function.get("arguments") or ""
    if not isinstance(index, int) or not isinstance(arguments, str):
        raise UpstreamProtocolError("upstream tool call has a bad index or arguments")
    return ToolCallDelta(
        index=index,
        id=call_id if isinstance(call_id, str) else None,
        name=name if isinstance(name, str) else None,
        arguments=arguments,
    )


def _error(error: object, secrets: tuple[str, ...]) -> Exception:
    if isinstance(error, dict):
        code = error.get("code")
        if not isinstance(code, str):
            code = error.get("type")
        return stream_error(error.get("message"), code, secrets)
    return stream_error(error, None, secrets)
