"""Encoding events to the ``text/event-stream`` wire format.

Lines end with a single LF. Multi-line ``data`` and ``comment`` are split on every line ending
(CRLF, LF, CR) into one line each, so a payload can never end an event early or add a field.
"""

from __future__ import annotations

import re

from ._event import ServerSentEvent

__all__ = ["encode", "encode_comment"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(prefix: str, text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return f"{prefix}{text}\n"
    return "".join(f"{prefix}{line}\n" for line in _LINE_BREAK.split(text))


def encode(event: ServerSentEvent) -> bytes:
    """Encode ``event`` as UTF-8 bytes, ending with the blank line that dispatches it."""
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
    return (out + "\n").encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (used for heartbeats): ignored by every client."""
    return encode(ServerSentEvent(comment=text))
