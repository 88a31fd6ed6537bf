"""Encoding events to the ``text/event-stream`` wire format.

Lines end with a single LF. Multi-line ``data`` and ``comment`` are split on every line ending
(CRLF, LF, CR) into one line each, so a payload can never end an event early or add a field.
A lone surrogate (which no UTF-8 can carry) is written as U+FFFD.
"""

from __future__ import annotations

import re

from ._event import ServerSentEvent

__all__ = ["encode", "encode_comment", "encode_fields"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lines(prefix: str, text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return f"{prefix}{text}\n"
    return "".join(f"{prefix}{line}\n" for line in _LINE_BREAK.split(text))


def encode(event: ServerSentEvent) -> bytes:
    """Encode ``event`` as UTF-8 bytes, ending with the blank line that dispatches it."""
    data = event.data
    if (
        data is not None
        and event.comment is None
        and event.retry is None
        and event.id
        and "\n" not in data
        and "\r" not in data
    ):
        # The common shape (id, maybe event, one line of data) in one format: this runs once
        # per token, and the general path below costs twice as much.
        name = event.event
        if name is None:
            out = f"id: {event.id}\ndata: {data}\n\n"
        else:
            out = f"id: {event.id}\nevent: {name}\ndata: {data}\n\n"
        try:
            return out.encode()
        except UnicodeEncodeError:
            return _LONE_SURROGATE.sub("\ufffd", out).encode()
    out = ""
    if event.comment is not None:
        out += _lines(": ", event.comment) if event.comment else ":\n"
    if event.id is not None:
        out += f"id: {event.id}\n" if event.id else "id\n"
    if event.event is not None:
        out += f"event: {event.event}\n"
    if event.retry is not None:
        out += f"retry: {event.retry}\n"
    if event.data is not None:
        out += _lines("data: ", event.data)
    out += "\n"
    try:
        return out.encode()
    except UnicodeEncodeError:
        # A lone surrogate can't be UTF-8; send U+FFFD as a browser's USVString conversion
        # would, instead of failing the whole stream.
        return _LONE_SURROGATE.sub("\ufffd", out).encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (used for heartbeats): ignored by every client."""
    return encode(ServerSentEvent(comment=text))


def encode_fields(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """Encode one event from its fields, without building a :class:`ServerSentEvent` first.

    The same bytes as ``encode(ServerSentEvent(data=data, event=event, id=str(id)))`` and the
    same refusals (``ValueError`` for CR or LF in ``event`` or ``id``, NUL in ``id``).
    """
    return encode(ServerSentEvent(data=data, event=event, id=None if id is None else str(id)))
