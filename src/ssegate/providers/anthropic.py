"""The Anthropic Messages API provider (streaming).

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``. The
request is translated from OpenAI-style messages: ``system`` (and ``developer``) messages go to
the top-level ``system`` field; ``max_tokens`` (required by Anthropic) defaults to
``ProviderConfig.default_max_tokens``; OpenAI-style tools, assistant ``tool_calls`` and
``tool`` messages become ``tools``, ``tool_use`` and ``tool_result`` blocks.

The event stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming):
``message_start`` (input usage), ``content_block_start`` (a ``tool_use`` block starts a tool
call with its id and name), ``content_block_delta`` (``text_delta``, ``thinking_delta``,
``input_json_delta``), ``message_delta`` (``stop_reason``, cumulative ``output_tokens``),
``message_stop`` (the end marker), ``ping``, ``error``.

Where we differ from a plain reading of the docs:

* Usage and finish are yielded at ``message_stop``, so :class:`Finish` is the last delta.
  ``prompt_tokens`` counts cache reads and writes too, as OpenAI's does.
* ``stop_reason`` is mapped to OpenAI's vocabulary: ``end_turn``/``stop_sequence``/
  ``pause_turn`` → ``stop``, ``max_tokens``/``model_context_window_exceeded`` → ``length``,
  ``tool_use`` → ``tool_calls``, ``refusal`` → ``content_filter``; others pass through.
* Tool-call indexes count ``tool_use`` blocks (0, 1, …), not content blocks.
* Unknown event and delta types (``signature_delta``, ``citations_delta``, future ones) are
  skipped, as Anthropic's versioning policy asks; a known event with a broken shape raises
  :class:`~ssegate.providers.UpstreamProtocolError`.
* An ``error`` event becomes :class:`~ssegate.providers.UpstreamStreamError` with code
  ``upstream_<error type>``; ``overloaded_error``, ``api_error`` and ``rate_limit_error`` are
  retryable.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx
import orjson

from ._base import ChatRequest, Delta, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from ._config import ProviderConfig
from ._errors import UpstreamProtocolError
from ._http import HttpUpstream
from ._parsing import SseParser, loads_chunk, stream_error

__all__ = ["AnthropicProvider"]

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider:
    """Streams from Anthropic's Messages API (or a server that speaks it)."""

    name = "anthropic"

    def __init__(
        self, config: ProviderConfig | None = None, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.config = config or ProviderConfig(kind="anthropic")
        self._http = HttpUpstream(self.config, client)

    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Start the generation and yield its deltas; raise ``UpstreamError`` on any fault."""
        headers = {
            "accept": "text/event-stream",
            "anthropic-version": self.config.anthropic_version,
        }
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        body = build_body(request, self.config.default_max_tokens)
        return self._http.stream_deltas(
            "/v1/messages", body, headers, _AnthropicParser(self.config)
        )

    async def aclose(self) -> None:
        """Release the connection pool."""
        await self._http.aclose()


def build_body(request: ChatRequest, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API body for an OpenAI-style ``request``."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_plain_text(message.get("content")))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _plain_text(message.get("content")),
            }
            messages.append({"role": "user", "content": [result]})
        elif role == "assistant" and message.get("tool_calls"):
            messages.append({"role": "assistant", "content": _assistant_blocks(message)})
        else:
            messages.append({"role": role, "content": message.get("content", "")})
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or default_max_tokens,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(part for part in system if part)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    body.update(request.extra)
    body["stream"] = True
    return body


def _plain_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _plain_text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    return blocks


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return tool  # already in Anthropic's shape (or a server tool): pass it through
    out: dict[str, Any] = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


class _AnthropicParser(SseParser):
    terminator = "message_stop"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._prompt_tokens = 0
        self._output_tokens = 0
        self._usage_seen = False
        self._stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}

    def on_event(self, event: str, data: str) -> Iterator[Delta]:
        obj = loads_chunk(data, "upstream event")
        kind = obj.get("type", event)
        if kind == "content_block_delta":
            yield from self._block_delta(obj)
        elif kind == "content_block_start":
            yield from self._block_start(obj)
        elif kind == "message_start":
            message = _object(obj.get("message"), "message_start message")
            self._read_usage(message.get("usage"))
        elif kind == "message_delta":
            delta = _object(obj.get("delta"), "message_delta delta")
            reason = delta.get("stop_reason")
            if isinstance(reason, str):
                self._stop_reason = reason
            self._read_usage(obj.get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = obj.get("error")
            if isinstance(error, dict):
                raise stream_error(error.get("message"), error.get("type"), self.secrets)
            raise stream_error(error, None, self.secrets)
        # ping, content_block_stop and event types added later carry nothing for us.

    def _block_start(self, data: dict[str, Any]) -> Iterator[Delta]:
        block = _object(data.get("content_block"), "content_block_start block")
        index = data.get("index")
        if not isinstance(index, int):
            raise UpstreamProtocolError("upstream content block has no index")
        kind = block.get("type")
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise UpstreamProtocolError("upstream tool_use block lacks id or name")
            self._tool_index[index] = position = len(self._tool_index)
            yield ToolCallDelta(index=position, id=call_id, name=name)
        elif kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            yield TextDelta(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
            yield ReasoningDelta(block["thinking"])

    def _block_delta(self, data: dict[str, Any]) -> Iterator[Delta]:
        delta = _object(data.get("delta"), "content_block_delta delta")
        kind = delta.get("type")
        if kind == "text_delta":
            yield TextDelta(_string(delta.get("text"), "text_delta text"))
        elif kind == "thinking_delta":
            yield ReasoningDelta(_string(delta.get("thinking"), "thinking_delta thinking"))
        elif kind == "input_json_delta":
            partial = _string(delta.get("partial_json"), "input_json_delta partial_json")
            position = self._tool_index.get(data.get("index", -1))
            if position is None:
                raise UpstreamProtocolError("upstream input_json_delta outside a tool_use block")
            if partial:
                yield ToolCallDelta(index=position, arguments=partial)

    def _read_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        self._usage_seen = True
        inputs = [usage.get(key) for key in _INPUT_KEYS]
        if any(isinstance(n, int) for n in inputs):
            self._prompt_tokens = sum(n for n in inputs if isinstance(n, int))
        output = usage.get("output_tokens")
        if isinstance(output, int):
            self._output_tokens = output  # cumulative: the last one is the total

    def final(self) -> Iterator[Delta]:
        if self._usage_seen:
            yield Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._output_tokens)
        reason = self._stop_reason or "end_turn"
        yield Finish(_STOP_REASONS.get(reason, reason))


_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"upstream {what} is not an object")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise UpstreamProtocolError(f"upstream {what} is not a string")
    return value
