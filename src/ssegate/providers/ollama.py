"""The native Ollama chat provider: ``POST {base_url}/api/chat``, an NDJSON stream.

Each line is a JSON object: ``message.content`` (answer), ``message.thinking`` (reasoning, for
thinking models), ``message.tool_calls`` (whole calls, arguments as an object); the last line
has ``"done": true`` with ``done_reason``, ``prompt_eval_count`` and ``eval_count``
(https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion).
Lines are split with a bounded splitter (``ProviderConfig.max_event_size``).

Where we differ from a plain reading of the docs:

* ``max_tokens`` and ``temperature`` go to ``options.num_predict`` / ``options.temperature``;
  assistant ``tool_calls`` arguments are sent as objects, as Ollama expects.
* A tool call arrives whole, so it becomes one :class:`ToolCallDelta` with ``id``, ``name``
  and the JSON-encoded ``arguments``; when Ollama sends no id, ``call_<index>`` is used.
* ``done_reason`` ``stop`` after tool calls is reported as ``tool_calls`` (as Ollama's own
  OpenAI-compatible API does); a missing reason is ``stop``.
* An ``{"error": "..."}`` line becomes :class:`~ssegate.providers.UpstreamStreamError`
  (``upstream_error``); a line with none of ``message``, ``done``, ``error`` is an unknown
  shape (:class:`~ssegate.providers.UpstreamProtocolError`).
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
from ._parsing import LineSplitter, loads_chunk, stream_error

__all__ = ["OllamaProvider"]


class OllamaProvider:
    """Streams from Ollama's native ``/api/chat``."""

    name = "ollama"

    def __init__(
        self, config: ProviderConfig | None = None, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.config = config or ProviderConfig(kind="ollama")
        self._http = HttpUpstream(self.config, client)

    def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        """Start the generation and yield its deltas; raise ``UpstreamError`` on any fault."""
        headers = {"accept": "application/x-ndjson"}
        if self.config.api_key:  # Ollama behind an authenticating proxy, or ollama.com
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return self._http.stream_deltas(
            "/api/chat", build_body(request), headers, _OllamaParser(self.config)
        )

    async def aclose(self) -> None:
        """Release the connection pool."""
        await self._http.aclose()


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI-style ``request``."""
    options: dict[str, Any] = {}
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
    }
    if options:
        body["options"] = options
    if request.tools:
        body["tools"] = request.tools
    body.update(request.extra)
    body["stream"] = True
    return body


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: Ollama takes a plain string
        out["content"] = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    elif content is None:
        out["content"] = ""
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        out["tool_calls"] = [_tool_call_out(call) for call in calls if isinstance(call, dict)]
    return out


def _tool_call_out(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            function["arguments"] = {}
    return {"function": function}


class _OllamaParser:
    terminator = '"done": true'

    def __init__(self, config: ProviderConfig) -> None:
        self.done = False
        self.secrets = config.secrets()
        self._lines = LineSplitter(config.max_event_size)
        self._usage: Usage | None = None
        self._reason = "stop"
        self._tool_calls = 0

    def feed(self, data: bytes) -> Iterator[Delta]:
        for line in self._lines.feed(data):
            yield from self._line(line)
            if self.done:
                return

    def end(self) -> Iterator[Delta]:
        rest = self._lines.flush()
        if rest:
            yield from self._line(rest)

    def _line(self, line: bytes) -> Iterator[Delta]:
        obj = loads_chunk(line, "upstream line")
        if "error" in obj:
            raise stream_error(obj["error"], None, self.secrets)
        message = obj.get("message")
        done = obj.get("done")
        if message is None and done is None:
            raise UpstreamProtocolError(f"unknown upstream line shape (keys: {sorted(obj)[:8]})")
        if message is not None:
            if not isinstance(message, dict):
                raise UpstreamProtocolError("upstream message is not an object")
            yield from self._message(message)
        if done is True:
            self.done = True
            prompt, completion = obj.get("prompt_eval_count"), obj.get("eval_count")
            if prompt is not None or completion is not None:
                # Ollama leaves prompt_eval_count out when the whole prompt was cached.
                prompt, completion = prompt or 0, completion or 0
                if not isinstance(prompt, int) or not isinstance(completion, int):
                    raise UpstreamProtocolError("upstream token counts are not integers")
                self._usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
            reason = obj.get("done_reason")
            if isinstance(reason, str) and reason:
                self._reason = reason

    def _message(self, message: dict[str, Any]) -> Iterator[Delta]:
        thinking = message.get("thinking")
        if thinking:
            yield ReasoningDelta(_string(thinking, "thinking"))
        content = message.get("content")
        if content:
            yield TextDelta(_string(content, "content"))
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise UpstreamProtocolError("upstream tool_calls is not a list")
            for call in calls:
                yield self._tool_call(call)

    def _tool_call(self, call: object) -> ToolCallDelta:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise UpstreamProtocolError("upstream tool call has no function object")
        name = function.get("name")
        if not isinstance(name, str):
            raise UpstreamProtocolError("upstream tool call has no name")
        arguments = function.get("arguments", {})
        index = self._tool_calls
        self._tool_calls += 1
        call_id = call.get("id")
        return ToolCallDelta(
            index=index,
            id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
            name=name,
            arguments=arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
        )

    def final(self) -> Iterator[Delta]:
        if self._usage is not None:
            yield self._usage
        reason = self._reason
        if reason == "stop" and self._tool_calls:
            reason = "tool_calls"
        yield Finish(reason)


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise UpstreamProtocolError(f"upstream {what} is not a string")
    return value
