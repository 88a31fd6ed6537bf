"""Stored gateway events → Anthropic Messages API objects: the streamed events
(:class:`MessageEvents`) or one ``message`` gathered from a whole stream (:class:`MessageBody`).
No I/O here.

A stream is ``message_start``, then content blocks (``content_block_start``, its
``content_block_delta`` events, ``content_block_stop``): ``thinking`` for reasoning, ``text``
for the answer (and a refusal), ``tool_use`` for each tool call, whose input arrives as
``input_json_delta`` pieces; then ``message_delta`` (stop reason, usage) and ``message_stop``.
A fault or a cancel ends it with an ``error`` event. The gateway's finish reasons are mapped
back: ``stop`` → ``end_turn``, ``length`` → ``max_tokens``, ``tool_calls`` → ``tool_use``,
``content_filter`` → ``refusal``.

Every SSE event that completes the translation of stored event ``k`` carries ``id: k`` (a stored
event with no Anthropic counterpart, such as ``usage``, becomes a ``ping`` with its id, so the
ids rise by one): a client that lost the connection resumes with ``GET /v1/streams/{id}/events``
and ``Last-Event-ID: k`` (in the gateway's own event format).
"""

from __future__ import annotations

from typing import Any

import orjson

from ...store import StoredEvent, StreamInfo
from ._anthropic_errors import AnthropicError

__all__ = ["PING", "MessageBody", "MessageEvents", "event_data", "message_id", "stop_reason"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "pause_turn": "pause_turn",
    "refusal": "refusal",
}


def stop_reason(finish: object) -> str:
    """Anthropic's ``stop_reason`` for a gateway finish reason (``end_turn`` if unknown)."""
    return _STOP_REASONS.get(str(finish or "stop"), "end_turn")


def message_id(stream_id: str) -> str:
    """The message id of a gateway stream."""
    return f"msg_{stream_id}"


def event_data(event: StoredEvent) -> dict[str, Any]:
    """The event's data as a JSON object (``{}`` if it is some other JSON value)."""
    data = orjson.loads(event.data)
    return data if isinstance(data, dict) else {}


def _cancelled_error(data: dict[str, Any]) -> AnthropicError:
    cause = data.get("cause") or "client"
    message = f"The generation was cancelled ({cause})."
    if cause == "shutdown":
        return AnthropicError(529, message, retryable=True)
    return AnthropicError(409, message, retryable=False)


def _usage(usage: dict[str, Any] | None) -> tuple[int, int]:
    if usage is None:
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


PING = b'event: ping\ndata: {"type":"ping"}\n\n'


_TEXT_DELTA = (
    b"event: content_block_delta\nid: %d\n"
    b'data: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'
)


def _sse(name: bytes, payload: dict[str, Any], event_id: int | None = None) -> bytes:
    # orjson never writes a line break, so the data fits one ``data:`` line.
    head = b"event: " + name + b"\n"
    if event_id is not None:
        head += b"id: %d\n" % event_id
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class MessageEvents:
    """Stored gateway events → Anthropic SSE events (bytes)."""

    def __init__(self, message: str, model: str) -> None:
        self._id = message
        self._model = model
        self._index = -1  # the open content block's index (-1: none yet)
        self._open: str | None = None  # "text", "thinking" or "tool:<n>"
        self._tools: dict[int, int] = {}  # the gateway's tool call index → block index
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def error(self, error: AnthropicError) -> bytes:
        """The ``error`` event that ends the stream."""
        self.finished = True
        return error.event()

    def _start_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._stop_block()
        self._index += 1
        self._open = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(_sse(b"content_block_start", payload))
        return out

    def _stop_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        payload = {"type": "content_block_stop", "index": self._index}
        return [_sse(b"content_block_stop", payload)]

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return _sse(b"content_block_delta", payload)

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open != kind:
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            out = self._start_block(kind, block)
        if kind == "text":
            out.append(self._delta(self._index, {"type": "text_delta", "text": text}))
        else:
            out.append(self._delta(self._index, {"type": "thinking_delta", "thinking": text}))
        return out

    def _tool_call(self, data: dict[str, Any]) -> list[bytes]:
        position = int(data.get("index") or 0)
        out: list[bytes] = []
        index = self._tools.get(position)
        if index is None:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": data.get("id") or f"toolu_{self._id}_{position}",
                "name": data.get("name") or "",
                "input": {},
            }
            out = self._start_block(f"tool:{position}", block)
            index = self._tools[position] = self._index
        arguments = data.get("arguments") or ""
        if arguments:
            out.append(self._delta(index, {"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _start(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_sse(b"message_start", {"type": "message_start", "message": message})]

    def _done(self, data: dict[str, Any]) -> list[bytes]:
        self.finished = True
        out = self._stop_block()
        prompt, completion = _usage(self._usage)
        delta = {"stop_reason": stop_reason(data.get("finish_reason")), "stop_sequence": None}
        usage = {"input_tokens": prompt, "output_tokens": completion}
        out.append(
            _sse(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        out.append(_sse(b"message_stop", {"type": "message_stop"}))
        return out

    def _translate(self, event: StoredEvent) -> list[bytes]:
        kind = event.event
        if kind == "delta" or kind == "refusal":
            return self._text("text", event_data(event).get("text", ""))
        if kind == "reasoning":
            return self._text("thinking", event_data(event).get("text", ""))
        if kind == "tool_call":
            return self._tool_call(event_data(event))
        if kind == "start":
            return self._start()
        if kind == "usage":
            self._usage = event_data(event)
            return []
        if kind == "done":
            return self._done(event_data(event))
        if kind == "error":
            return [self.error(AnthropicError.from_gateway(event_data(event)))]
        if kind == "cancelled":
            return [self.error(_cancelled_error(event_data(event)))]
        return []  # meta, annotations, and event types this version does not know

    def translate(self, event: StoredEvent) -> bytes:
        """The SSE bytes for one stored event; the last SSE event carries its id (a stored
        event with nothing to say, such as ``usage``, is a ``ping`` with its id)."""
        if event.event == "delta" and self._open == "text":  # most events: made in one go
            text = orjson.dumps(event_data(event).get("text", ""))
            return b"".join((_TEXT_DELTA % (event.id, self._index), text, b"}}\n\n"))
        out = self._translate(event) or [PING]
        out[-1] = out[-1].replace(b"\ndata: ", b"\nid: %d\ndata: " % event.id, 1)
        return b"".join(out)


class MessageBody:
    """Gathers a stream's events into one ``message``."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None
        self._tools: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish: object = "stop"
        self.error: AnthropicError | None = None

    def _text(self, kind: str, text: str) -> None:
        if self._open != kind:
            self._open = kind
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self.blocks.append(block)
        self.blocks[-1][kind] += text

    def _tool_call(self, data: dict[str, Any]) -> None:
        position = int(data.get("index") or 0)
        call = self._tools.get(position)
        if call is None:
            call = {
                "id": data.get("id"),
                "name": data.get("name") or "",
                "position": position,
                "arguments": [],
            }
            self._tools[position] = call
            self._open = f"tool:{position}"
            self.blocks.append({"type": "tool_use", "call": call})
        call["arguments"].append(data.get("arguments") or "")

    def add(self, event: StoredEvent) -> None:
        kind = event.event
        if kind == "delta" or kind == "refusal":
            self._text("text", event_data(event).get("text", ""))
        elif kind == "reasoning":
            self._text("thinking", event_data(event).get("text", ""))
        elif kind == "tool_call":
            self._tool_call(event_data(event))
        elif kind == "usage":
            self.usage = event_data(event)
        elif kind == "done":
            self.finish = event_data(event).get("finish_reason")
        elif kind == "error":
            self.error = AnthropicError.from_gateway(event_data(event))
        elif kind == "cancelled":
            self.error = _cancelled_error(event_data(event))

    def _content(self, message: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for block in self.blocks:
            if block["type"] != "tool_use":
                content.append(block)
                continue
            call = block["call"]
            arguments = "".join(call["arguments"]) or "{}"
            try:
                parsed = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                parsed = None
            content.append(
                {
                    "type": "tool_use",
                    "id": call["id"] or f"toolu_{message}_{call['position']}",
                    "name": call["name"],
                    "input": parsed if isinstance(parsed, dict) else {},
                }
            )
        return content

    def body(self, info: StreamInfo, model: str) -> dict[str, Any]:
        prompt, completion = _usage(self.usage)
        message = message_id(info.id)
        return {
            "id": message,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._content(message),
            "stop_reason": stop_reason(self.finish),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
