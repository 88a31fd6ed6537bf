"""Stored gateway events → the Vercel AI SDK's UI message stream: SSE ``data:`` lines, each one
JSON part (the ``ai`` package's ``UIMessageChunk``), then ``data: [DONE]``. No I/O here.

One stream is one assistant message, translated from its first event every time (a resume
replays it whole, and ``useChat``'s default transport rebuilds the message from the replay's
``start``), so the same events always give the same parts:

==================  ==============================================================================
gateway event       parts
==================  ==============================================================================
``start``           ``start`` (``messageId``: the stream id, or the message a request continues),
                    ``message-metadata`` (``streamId``, ``model``), ``start-step``
``delta``           ``text-start`` (when no text part is open), ``text-delta``
``reasoning``       ``reasoning-start`` (when none is open), ``reasoning-delta``
``tool_call``       ``tool-input-start`` (a new call), ``tool-input-delta`` (argument text); the
                    call's ``tool-input-available`` (or ``tool-input-error`` for arguments that
                    are not JSON) once another kind of event comes
``usage``           ``message-metadata`` (``usage``: ``inputTokens``, ``outputTokens``,
                    ``totalTokens``)
``done``            ``finish-step``, ``finish`` (``finishReason``), ``[DONE]``
``error``           ``finish-step``, ``error`` (``errorText``), ``finish`` (``error``), ``[DONE]``
``cancelled``       ``finish-step``, ``abort`` (``reason``: the cause), ``[DONE]``
==================  ==============================================================================

Open text and reasoning parts are ended (``text-end``, ``reasoning-end``) before any other kind
of part. The page's ``message.metadata`` gathers ``streamId``, ``model`` and ``usage`` (and
``errorCode`` after an error).
"""

from __future__ import annotations

from typing import Any

import orjson

from ...codec import ServerSentEvent, encode
from ...store import StoredEvent

__all__ = ["DONE", "UIParts", "part"]

#: The end of every UI message stream.
DONE = encode(ServerSentEvent(data="[DONE]"))

# The gateway's finish reasons (OpenAI's words) → the ai package's FinishReason.
_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
}


def part(payload: dict[str, Any]) -> bytes:
    """One UI message stream part on the wire."""
    return encode(ServerSentEvent(data=orjson.dumps(payload).decode()))


def _data(event: StoredEvent) -> dict[str, Any]:
    data = orjson.loads(event.data)
    return data if isinstance(data, dict) else {}


class _ToolCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.arguments: list[str] = []


class UIParts:
    """One stream's events → UI message stream parts, in order (see the module docstring)."""

    def __init__(self) -> None:
        self._open: tuple[str, str] | None = None  # ("text" | "reasoning", part id)
        self._count = 0
        self._calls: dict[int, _ToolCall] = {}
        self.finished = False

    def translate(self, event: StoredEvent) -> list[bytes]:
        """The parts for ``event`` (``[]`` for an event type this door does not show)."""
        kind = event.event
        data = _data(event)
        out: list[bytes] = []
        if kind != "tool_call":
            out += self._flush_calls()
        if kind == "start":
            out += self._start(data)
        elif kind == "delta":
            out += self._text("text", str(data.get("text", "")))
        elif kind == "reasoning":
            out += self._text("reasoning", str(data.get("text", "")))
        elif kind == "tool_call":
            out += self._tool_call(data)
        elif kind == "usage":
            out.append(_metadata({"usage": _usage(data)}))
        elif kind in ("done", "error", "cancelled"):
            out += self._end(kind, data)
        return out

    def error(self, message: str, code: str) -> list[bytes]:
        """End a stream that broke off (a store fault, or no terminal event) with an error."""
        if self.finished:
            return []
        return self._end("error", {"code": code, "message": message})

    # -- pieces --------------------------------------------------------------------------

    def _start(self, data: dict[str, Any]) -> list[bytes]:
        stream_id = str(data.get("stream_id", ""))
        message_id = data.get("ui_message_id") or stream_id
        return [
            part({"type": "start", "messageId": str(message_id)}),
            _metadata({"streamId": stream_id, "model": str(data.get("model", ""))}),
            part({"type": "start-step"}),
        ]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        kind, part_id = self._open
        self._open = None
        return [part({"type": f"{kind}-end", "id": part_id})]

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open[0] != kind:
            out += self._close()
            self._count += 1
            self._open = (kind, f"{kind}-{self._count}")
            out.append(part({"type": f"{kind}-start", "id": self._open[1]}))
        out.append(part({"type": f"{kind}-delta", "id": self._open[1], "delta": text}))
        return out

    def _tool_call(self, data: dict[str, Any]) -> list[bytes]:
        out = self._close()
        index = data.get("index", 0)
        index = index if isinstance(index, int) else 0
        call = self._calls.get(index)
        if call is None:
            call_id = data.get("id") or f"call_{index}"
            call = self._calls[index] = _ToolCall(str(call_id), str(data.get("name") or "tool"))
            out.append(
                part({"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name})
            )
        arguments = data.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            out.append(
                part(
                    {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": arguments}
                )
            )
        return out

    def _flush_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for call in self._calls.values():
            text = "".join(call.arguments)
            head = {"toolCallId": call.id, "toolName": call.name}
            try:
                arguments = orjson.loads(text or "{}")
            except orjson.JSONDecodeError:
                error = "the model's tool arguments are not JSON"
                out.append(
                    part({"type": "tool-input-error", **head, "input": text, "errorText": error})
                )
            else:
                out.append(part({"type": "tool-input-available", **head, "input": arguments}))
        self._calls.clear()
        return out

    def _end(self, kind: str, data: dict[str, Any]) -> list[bytes]:
        out = self._close()
        out += self._flush_calls()
        out.append(part({"type": "finish-step"}))
        if kind == "done":
            reason = _FINISH.get(str(data.get("finish_reason")), "other")
            out.append(part({"type": "finish", "finishReason": reason}))
        elif kind == "error":
            out.append(_metadata({"errorCode": str(data.get("code", "error"))}))
            message = str(data.get("message") or "the generation failed")
            out.append(part({"type": "error", "errorText": message}))
            out.append(part({"type": "finish", "finishReason": "error"}))
        else:
            out.append(part({"type": "abort", "reason": str(data.get("cause") or "cancelled")}))
        out.append(DONE)
        self.finished = True
        return out


def _metadata(metadata: dict[str, Any]) -> bytes:
    return part({"type": "message-metadata", "messageMetadata": metadata})


def _usage(data: dict[str, Any]) -> dict[str, int]:
    prompt = data.get("prompt_tokens")
    completion = data.get("completion_tokens")
    inputs = prompt if isinstance(prompt, int) else 0
    outputs = completion if isinstance(completion, int) else 0
    return {"inputTokens": inputs, "outputTokens": outputs, "totalTokens": inputs + outputs}
