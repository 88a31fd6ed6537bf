"""Stored gateway events → OpenAI objects: ``chat.completion.chunk`` SSE events, one chunk per
event (:class:`Chunks`), or one ``chat.completion`` gathered from a whole stream
(:class:`Completion`). No I/O here."""

from __future__ import annotations

from typing import Any

import orjson

from ...codec import ServerSentEvent, encode
from ...store import StoredEvent, StreamInfo
from ._openai_errors import OpenAIError

__all__ = ["Chunks", "Completion", "event_data"]


def event_data(event: StoredEvent) -> dict[str, Any]:
    """The event's data as a JSON object (``{}`` if it is some other JSON value)."""
    data = orjson.loads(event.data)
    return data if isinstance(data, dict) else {}


def _tool_call(data: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"index": data.get("index", 0)}
    function: dict[str, Any] = {}
    if data.get("id") is not None:
        call["id"] = data["id"]
        call["type"] = "function"
    if data.get("name") is not None:
        function["name"] = data["name"]
    function["arguments"] = data.get("arguments", "")
    call["function"] = function
    return call


def _cancelled_error(data: dict[str, Any]) -> OpenAIError:
    cause = data.get("cause") or "client"
    message = f"The generation was cancelled ({cause})."
    retryable = cause == "shutdown"
    return OpenAIError(503 if retryable else 409, message, code="cancelled", retryable=retryable)


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


_DONE = encode(ServerSentEvent(data="[DONE]"))


class Chunks:
    """Stored gateway events → ``chat.completion.chunk`` SSE events (bytes)."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        self._head = head[:-1]
        # Every chunk is this prefix + delta + suffix: built once, not per token.
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._usage_null = b',"usage":null' if include_usage else b""
        self._include_usage = include_usage
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        tail = b',"logprobs":null,"finish_reason":' + orjson.dumps(finish) + b"}]"
        payload = self._prefix + orjson.dumps(delta) + tail + self._usage_null + b"}"
        return encode(ServerSentEvent(data=payload.decode()))

    def error(self, error: OpenAIError) -> bytes:
        """The in-stream error object that ends the stream."""
        self.finished = True
        return encode(ServerSentEvent(data=orjson.dumps({"error": error.to_dict()}).decode()))

    def translate(self, event: StoredEvent) -> list[bytes]:
        """The SSE bytes for one stored event (none for ``usage``, held for the end)."""
        kind = event.event
        if kind == "delta":
            return [self._chunk({"content": event_data(event).get("text", "")})]
        if kind == "reasoning":
            return [self._chunk({"reasoning_content": event_data(event).get("text", "")})]
        if kind == "tool_call":
            return [self._chunk({"tool_calls": [_tool_call(event_data(event))]})]
        if kind == "start":
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "usage":
            self._usage = event_data(event)
            return []
        if kind == "done":
            self.finished = True
            out = [self._chunk({}, str(event_data(event).get("finish_reason") or "stop"))]
            if self._include_usage and self._usage is not None:
                usage = orjson.dumps(_usage(self._usage))
                payload = self._head + b',"choices":[],"usage":' + usage + b"}"
                out.append(encode(ServerSentEvent(data=payload.decode())))
            out.append(_DONE)
            return out
        if kind == "error":
            return [self.error(OpenAIError.from_gateway(event_data(event)))]
        if kind == "cancelled":
            return [self.error(_cancelled_error(event_data(event)))]
        return []  # an event type this version does not know


class Completion:
    """Gathers a stream's events into one ``chat.completion``."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason = "stop"
        self.error: OpenAIError | None = None

    def add(self, event: StoredEvent) -> None:
        kind = event.event
        if kind == "delta":
            self.text.append(event_data(event).get("text", ""))
        elif kind == "reasoning":
            self.reasoning.append(event_data(event).get("text", ""))
        elif kind == "tool_call":
            data = event_data(event)
            call = self.tools.setdefault(
                int(data.get("index", 0)), {"id": None, "name": "", "arguments": []}
            )
            call["id"] = data.get("id") or call["id"]
            call["name"] = data.get("name") or call["name"]
            call["arguments"].append(data.get("arguments", ""))
        elif kind == "usage":
            self.usage = event_data(event)
        elif kind == "done":
            self.finish_reason = str(event_data(event).get("finish_reason") or "stop")
        elif kind == "error":
            self.error = OpenAIError.from_gateway(event_data(event))
        elif kind == "cancelled":
            self.error = _cancelled_error(event_data(event))

    def body(self, info: StreamInfo, model: str) -> dict[str, Any]:
        text = "".join(self.text)
        tool_calls = [
            {
                "id": call["id"] or f"call_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for index, call in sorted(self.tools.items())
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not tool_calls else None,
            "refusal": None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return {
            "id": f"chatcmpl-{info.id}",
            "object": "chat.completion",
            "created": int(info.created),
            "model": model,
            "choices": [choice],
            "usage": _usage(self.usage) if self.usage is not None else None,
        }
