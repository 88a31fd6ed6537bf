"""Encoding events to the ``text/event-stream`` wire format: the one framing path.

Lines end with a single LF. Multi-line ``data`` and ``comment`` are split on every line ending
(CRLF, LF, CR) into one line each, so a payload can never end an event early or add a field.
A lone surrogate (which no UTF-8 can carry) is written as U+FFFD.

:func:`frame` writes the shape that runs once per token (one line of data, maybe an id and an
event type) in one format; :func:`frame_fields` writes any other shape. Both
:class:`~ssegate.codec.ServerSentEvent` (which frames itself while it validates) and
:func:`encode_fields` (for callers that have the fields, not an event) go through them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._event import ServerSentEvent

__all__ = ["encode", "encode_comment", "encode_fields"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(text: str) -> bytes:
    # A lone surrogate can't be UTF-8; send U+FFFD as a browser's USVString conversion would,
    # instead of failing the whole stream.
    return _LONE_SURROGATE.sub("\ufffd", text).encode()


def frame(data: str, event: str | None, id: str | None) -> bytes | None:
    """The wire bytes of the usual event, or ``None`` when :func:`frame_fields` must write it.

    The usual event is one line of ``data`` (a ``str``), an ``event`` that is ``None`` or a
    ``str`` and an ``id`` that is ``None`` or a non-empty ``str``, none of them with a CR, LF or
    NUL. The checks that this takes are all that validating such fields takes, so a caller that
    gets bytes back needs no other check; on ``None`` it validates and takes the general path.
    """
    # One format per shape; LF looked for per field, CR and NUL once in the whole text.
    if id is not None and (type(id) is not str or not id or "\n" in id):
        return None
    if event is None:
        text = f"data: {data}\n\n" if id is None else f"id: {id}\ndata: {data}\n\n"
    elif type(event) is not str or "\n" in event:
        return None
    elif id is None:
        text = f"event: {event}\ndata: {data}\n\n"
    else:
        text = f"id: {id}\nevent: {event}\ndata: {data}\n\n"
    if "\n" in data or "\r" in text or "\0" in text:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _replace_surrogates(text)


def _lines(prefix: str, text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return f"{prefix}{text}\n"
    return "".join(f"{prefix}{line}\n" for line in _LINE_BREAK.split(text))


def frame_fields(
    data: str | None,
    event: str | None,
    id: str | None,
    retry: int | None,
    comment: str | None,
) -> bytes:
    """The wire bytes of any valid event's fields, ending with the blank line that dispatches it.

    Fields are written in the order comment, id, event, retry, data. The caller has validated
    them (:class:`~ssegate.codec.ServerSentEvent` does).
    """
    out = ""
    if comment is not None:
        out += _lines(": ", comment) if comment else ":\n"
    if id is not None:
        out += f"id: {id}\n" if id else "id\n"
    if event is not None:
        out += f"event: {event}\n"
    if retry is not None:
        out += f"retry: {retry}\n"
    if data is not None:
        out += _lines("data: ", data)
    out += "\n"
    try:
        return out.encode()
    except UnicodeEncodeError:
        return _replace_surrogates(out)


def encode(event: ServerSentEvent) -> bytes:
    """Encode ``event`` as UTF-8 bytes, ending with the blank line that dispatches it."""
    wire = event._wire  # the usual event was framed while it was validated
    if wire is not None:
        return wire
    return frame_fields(event.data, event.event, event.id, event.retry, event.comment)


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (used for heartbeats): ignored by every client."""
    validate(None, None, None, None, text)
    return frame_fields(None, None, None, None, text)


def encode_fields(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """Encode one event from its fields, without building a :class:`ServerSentEvent` first.

    The same bytes as ``encode(ServerSentEvent(data=data, event=event, id=str(id)))`` and the
    same refusals (``ValueError`` for CR or LF in ``event`` or ``id``, NUL in ``id``).
    """
    if id is not None and type(id) is not str:
        id = str(id)
    wire = frame(data, event, id) if type(data) is str else None
    if wire is None:
        validate(data, event, id, None, None)
        wire = frame_fields(data, event, id, None, None)
    return wire


def validate(data: object, event: object, id: object, retry: object, comment: object) -> None:
    """Refuse fields that could inject another event or field on the wire.

    ``TypeError`` for a field of the wrong type; ``ValueError`` for CR or LF in ``event`` or
    ``id``, NUL in ``id``, a ``retry`` that is not a non-negative integer.
    """
    if data is not None and not isinstance(data, str):
        raise TypeError(f"data must be str, not {type(data).__name__}")
    if event is not None:
        if not isinstance(event, str):
            raise TypeError(f"event must be str, not {type(event).__name__}")
        if "\r" in event or "\n" in event:
            raise ValueError("event must not contain CR or LF")
    if id is not None:
        if not isinstance(id, str):
            raise TypeError(f"id must be str, not {type(id).__name__}")
        if "\r" in id or "\n" in id:
            raise ValueError("id must not contain CR or LF")
        if "\0" in id:
            raise ValueError("id must not contain NUL")
    if retry is not None and (
        type(retry) is not int or retry < 0  # bool is an int: refuse it too
    ):
        raise ValueError(f"retry must be a non-negative integer, not {retry!r}")
    if comment is not None and not isinstance(comment, str):
        raise TypeError(f"comment must be str, not {type(comment).__name__}")
