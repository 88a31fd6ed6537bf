"""Stored gateway events → OpenAI Responses API objects: the typed stream events, numbered
``sequence_number`` 0, 1, 2…, and the ``response`` object as it stands. No I/O here.

The translation is a pure function of the stored events (the ``start`` event carries what the
response object repeats of its request), so every instance, at any time, numbers a stream's
Responses events the same way: resuming ``starting_after=N`` replays the stored stream from its
first event through a fresh :class:`ResponseEvents` and sends the events numbered above ``N``.
One stored event becomes zero or more Responses events (the first text delta opens a message
item and its content part before its ``response.output_text.delta``; ``done`` closes every open
part and item, then ``response.completed``), so sequence numbers are not the store's ids.

Where this departs from OpenAI's own stream:

* Reasoning text (DeepSeek's ``reasoning_content``, Anthropic's thinking) is sent as a reasoning
  item's summary (``response.reasoning_summary_text.delta``), the form clients display.
* A cancelled generation ends with ``response.failed`` whose response has status
  ``cancelled`` (the SDK's stream events have no ``response.cancelled``).
* Upstream faults become ``response.failed`` with ``error.code`` ``rate_limit_exceeded`` for an
  upstream 429 and ``server_error`` otherwise (the SDK's codes); the message says what failed.
* ``meta`` and ``annotations`` events have no Responses counterpart here and add no event.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...codec import ServerSentEvent, encode
from ...store import StoredEvent

__all__ = ["ResponseEvents", "event_data", "response_usage"]

Event = dict[str, Any]


def event_data(event: StoredEvent) -> dict[str, Any]:
    """The event's data as a JSON object (``{}`` if it is some other JSON value)."""
    data = orjson.loads(event.data)
    return data if isinstance(data, dict) else {}


def response_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A gateway ``usage`` payload as the Responses API's ``usage``."""
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)
        },
        "total_tokens": prompt + completion,
    }


def _error(data: dict[str, Any]) -> dict[str, Any]:
    code = str(data.get("code") or "internal")
    message = str(data.get("message") or code)
    mapped = "rate_limit_exceeded" if code == "upstream_rate_limited" else "server_error"
    return {"code": mapped, "message": f"{message} ({code})"}


class _Part:
    """One content part of a message: ``output_text`` or ``refusal``; ``wire`` is the SSE
    bytes of its text delta events up to the delta itself (built once, not per token)."""

    __slots__ = ("chunks", "kind", "wire")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chunks: list[str] = []
        self.wire = b""

    def to_dict(self) -> dict[str, Any]:
        text = "".join(self.chunks)
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Item:
    """One output item: a ``message``, a ``reasoning`` item or a ``function_call``."""

    __slots__ = ("call_id", "chunks", "id", "index", "kind", "name", "parts", "status", "tool")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.status = "in_progress"
        self.parts: list[_Part] = []  # message
        self.chunks: list[str] = []  # reasoning text, call arguments
        self.call_id = ""
        self.name = ""
        self.tool = -1  # the upstream's tool call index

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "status": self.status,
                "content": [p.to_dict() for p in self.parts],
            }
        if self.kind == "reasoning":
            text = "".join(self.chunks)
            summary = [{"type": "summary_text", "text": text}] if self.chunks else []
            return {"id": self.id, "type": "reasoning", "summary": summary, "status": self.status}
        return {
            "id": self.id,
            "type": "function_call",
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.chunks),
            "status": self.status,
        }


class ResponseEvents:
    """Stored gateway events → Responses stream events (dicts with ``sequence_number``)."""

    def __init__(self, response_id: str) -> None:
        self.id = response_id
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._usage: dict[str, Any] | None = None
        self._fields: dict[str, Any] = {}
        self.model = ""
        self.created = 0
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.finished = False
        self.started = False

    @property
    def next_sequence_number(self) -> int:
        """The number the next event gets."""
        return self._seq

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    # -- the response object ---------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        """The ``response`` object as it stands (``output`` holds open items too)."""
        echo = self._fields
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": self.status,
            "background": bool(echo.get("background")),
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "metadata": echo.get("metadata") or {},
            "model": self.model,
            "output": [item.to_dict() for item in self._items],
            "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
            "previous_response_id": None,
            "store": echo.get("store") is not False,
            "temperature": echo.get("temperature"),
            "text": {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice") or "auto",
            "tools": echo.get("tools") or [],
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": response_usage(self._usage) if self._usage is not None else None,
            "user": echo.get("user"),
        }

    def output_text(self) -> str:
        """All ``output_text`` of the response, joined (the SDK's ``output_text``)."""
        return "".join(
            "".join(p.chunks) for item in self._items for p in item.parts if p.kind == "output_text"
        )

    # -- items -----------------------------------------------------------------------------

    def _open_item(self, kind: str, prefix: str) -> tuple[_Item, list[Event]]:
        out = self._close()
        index = len(self._items)
        item = _Item(kind, f"{prefix}_{self.id}_{index}", index)
        self._items.append(item)
        self._open = item
        return item, out

    def _added(self, item: _Item) -> Event:
        added = "response.output_item.added"
        return self._event(added, output_index=item.index, item=item.to_dict())

    def _message_part(self, kind: str) -> tuple[_Item, _Part, list[Event]]:
        item = self._open
        out: list[Event] = []
        if item is None or item.kind != "message":
            item, out = self._open_item("message", "msg")
            out.append(self._added(item))
        part = item.parts[-1] if item.parts else None
        if part is None or part.kind != kind:
            if part is not None:
                out += self._close_part(item, part)
            part = _Part(kind)
            item.parts.append(part)
            if kind == "output_text":
                head = {
                    "type": "response.output_text.delta",
                    "item_id": item.id,
                    "output_index": item.index,
                    "content_index": len(item.parts) - 1,
                    "logprobs": [],
                }
                part.wire = b"event: response.output_text.delta\ndata: " + orjson.dumps(head)[:-1]
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=len(item.parts) - 1,
                    part=part.to_dict(),
                )
            )
        return item, part, out

    def _close_part(self, item: _Item, part: _Part) -> list[Event]:
        where = {"item_id": item.id, "output_index": item.index}
        index = item.parts.index(part)
        text = "".join(part.chunks)
        if part.kind == "refusal":
            done = self._event("response.refusal.done", **where, content_index=index, refusal=text)
        else:
            done = self._event(
                "response.output_text.done", **where, content_index=index, text=text, logprobs=[]
            )
        closed = self._event(
            "response.content_part.done", **where, content_index=index, part=part.to_dict()
        )
        return [done, closed]

    def _close(self, status: str = "completed") -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index}
        out: list[Event] = []
        if item.kind == "message" and item.parts:
            out += self._close_part(item, item.parts[-1])
        elif item.kind == "reasoning":
            text = "".join(item.chunks)
            part = {"type": "summary_text", "text": text}
            out.append(
                self._event(
                    "response.reasoning_summary_text.done", **where, summary_index=0, text=text
                )
            )
            out.append(
                self._event(
                    "response.reasoning_summary_part.done", **where, summary_index=0, part=part
                )
            )
        elif item.kind == "function_call":
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    arguments="".join(item.chunks),
                )
            )
        item.status = status
        out.append(
            self._event("response.output_item.done", output_index=item.index, item=item.to_dict())
        )
        return out

    # -- translation -----------------------------------------------------------------------

    def wire(self, event: StoredEvent, after: int) -> bytes:
        """The SSE bytes of the Responses events for one stored event, those numbered above
        ``after`` (a text delta inside an open text part, nearly every event, takes a path of
        its own: one ``orjson`` call and a concatenation)."""
        item = self._open
        if event.event == "delta" and item is not None and item.kind == "message":
            part = item.parts[-1] if item.parts else None
            if part is not None and part.kind == "output_text" and not self.finished:
                text = event_data(event).get("text", "")
                part.chunks.append(text)
                seq = self._seq
                self._seq += 1
                if seq <= after:
                    return b""
                tail = b',"sequence_number":%d}\n\n' % seq
                return part.wire + b',"delta":' + orjson.dumps(text) + tail
        return b"".join(
            encode(ServerSentEvent(data=orjson.dumps(e).decode(), event=e["type"]))
            for e in self.translate(event)
            if e["sequence_number"] > after
        )

    def translate(self, event: StoredEvent) -> list[Event]:
        """The Responses events for one stored event (maybe none)."""
        kind = event.event
        if self.finished:
            return []
        if kind == "delta":
            return self._text("output_text", event_data(event).get("text", ""))
        if kind == "refusal":
            return self._text("refusal", event_data(event).get("text", ""))
        if kind == "reasoning":
            return self._reasoning(event_data(event).get("text", ""))
        if kind == "tool_call":
            return self._tool_call(event_data(event))
        if kind == "start":
            return self._start(event_data(event))
        if kind == "usage":
            self._usage = event_data(event)
            return []
        if kind == "done":
            return self._done(str(event_data(event).get("finish_reason") or "stop"))
        if kind == "error":
            self.error = _error(event_data(event))
            return self._end("failed", "response.failed")
        if kind == "cancelled":
            return self._end("cancelled", "response.failed")
        return []  # meta, annotations, and types this version does not know

    def _start(self, data: dict[str, Any]) -> list[Event]:
        self.started = True
        self.model = str(data.get("model") or "")
        self.created = int(data.get("created") or 0)
        echo = data.get("responses")
        self._fields = echo if isinstance(echo, dict) else {}
        created = self._event("response.created", response=self.response())
        return [created, self._event("response.in_progress", response=self.response())]

    def _text(self, kind: str, text: str) -> list[Event]:
        item, part, out = self._message_part(kind)
        part.chunks.append(text)
        name = "response.refusal.delta" if kind == "refusal" else "response.output_text.delta"
        fields: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        out.append(
            self._event(
                name,
                item_id=item.id,
                output_index=item.index,
                content_index=len(item.parts) - 1,
                delta=text,
                **fields,
            )
        )
        return out

    def _reasoning(self, text: str) -> list[Event]:
        item = self._open
        out: list[Event] = []
        where: dict[str, Any]
        if item is None or item.kind != "reasoning":
            item, out = self._open_item("reasoning", "rs")
            out.append(self._added(item))
            where = {"item_id": item.id, "output_index": item.index}
            part = {"type": "summary_text", "text": ""}
            out.append(
                self._event(
                    "response.reasoning_summary_part.added", **where, summary_index=0, part=part
                )
            )
        where = {"item_id": item.id, "output_index": item.index}
        item.chunks.append(text)
        out.append(
            self._event(
                "response.reasoning_summary_text.delta", **where, summary_index=0, delta=text
            )
        )
        return out

    def _tool_call(self, data: dict[str, Any]) -> list[Event]:
        index = int(data.get("index") or 0)
        item = self._open
        out: list[Event] = []
        if item is None or item.kind != "function_call" or item.tool != index:
            item, out = self._open_item("function_call", "fc")
            item.tool = index
            item.call_id = str(data.get("id") or f"call_{self.id}_{item.index}")
            item.name = str(data.get("name") or "")
            out.append(self._added(item))
        elif data.get("name"):
            item.name = str(data["name"])
        arguments = str(data.get("arguments") or "")
        if arguments:
            item.chunks.append(arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=arguments,
                )
            )
        return out

    def _done(self, finish_reason: str) -> list[Event]:
        if finish_reason == "length":
            self.incomplete = {"reason": "max_output_tokens"}
        elif finish_reason == "content_filter":
            self.incomplete = {"reason": "content_filter"}
        if self.incomplete is not None:
            out = self._close("incomplete")
            return out + self._end("incomplete", "response.incomplete")
        return self._close() + self._end("completed", "response.completed")

    def _end(self, status: str, kind: str) -> list[Event]:
        self.finished = True
        self.status = status
        if self._open is not None:  # a failure: what was open stays unfinished
            self._open.status = "incomplete"
            self._open = None
        return [self._event(kind, response=self.response())]
