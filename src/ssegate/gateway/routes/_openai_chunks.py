"""Stored gateway events → OpenAI objects: ``chat.completion.chunk`` SSE events, one chunk per
event (:class:`Chunks`), or one ``chat.completion`` gathered from a whole stream
(:class:`Completion`). No I/O here.

What the upstream said and OpenAI clients read passes through: ``refusal`` and ``annotations``
deltas, usage's ``*_tokens_details``, and (from the ``meta`` event) ``system_fingerprint`` and
``service_tier`` on every chunk after it and on the completion."""

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


_USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    out.update((k, usage[k]) for k in _USAGE_DETAILS if isinstance(usage.get(k), dict))
    return out


def _meta(data: dict[str, Any]) -> dict[str, str]:
    """``system_fingerprint`` and ``service_tier`` of a ``meta`` event, those that are set."""
    names = ("system_fingerprint", "service_tier")
    return {k: data[k] for k in names if isinstance(data.get(k), str)}


_DONE = encode(ServerSentEvent(data="[DONE]"))


class Chunks:
    """Stored gateway events → ``chat.completion.chunk`` SSE events (bytes)."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self._fields: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._set_head()
        self._usage_null = b',"usage":null' if include_usage else b""
        self._include_usage = include_usage
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def _set_head(self) -> None:
        self._head = orjson.dumps(self._fields)[:-1]
        # Every chunk is this prefix + delta + suffix: built once (and per ``meta``), not per
        # token.
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'

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
        if kind == "refusal":
            return [self._chunk({"refusal": event_data(event).get("text", "")})]
        if kind == "annotations":
            return [self._chunk({"annotations": event_data(event).get("annotations", [])})]
        if kind == "meta":
            self._fields.update(_meta(event_data(event)))
            self._set_head()
            return [self._chunk({})]  # a chunk still: chunk n stays event n, for resuming
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
        self.refusal: list[str] = []
        self.annotations: list[Any] = []
        self.meta: dict[str, str] = {}
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
        elif kind == "refusal":
            self.refusal.append(event_data(event).get("text", ""))
        elif kind == "annotations":
            self.annotations += event_data(event).get("annotations", [])
        elif kind == "meta":
            self.meta.update(_meta(event_data(event)))
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
        refusal = "".join(self.refusal) or None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not (tool_calls or refusal) else None,
            "refusal": refusal,
        }
        if self.annotations:
            message["annotations"] = self.annotations
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
            **self.meta,
        }
