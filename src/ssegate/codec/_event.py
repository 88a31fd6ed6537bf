"""``ServerSentEvent``: one event, valid by construction."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerSentEvent"]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One Server-Sent Event.

    ``data`` is the payload (``None`` writes no ``data:`` line, e.g. a comment-only heartbeat or
    an ``id``/``retry``-only frame; the decoder always fills it). ``event`` is the type (the
    decoder reports ``"message"`` when the stream named none), ``id`` the event id, ``retry``
    the reconnection time in milliseconds, ``comment`` a comment written before the fields.

    Construction refuses anything that could inject another event or field on the wire: CR or
    LF in ``event`` or ``id``, NUL in ``id``, a ``retry`` that is not a non-negative integer.
    """

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if self.data is not None and not isinstance(self.data, str):
            raise TypeError(f"data must be str, not {type(self.data).__name__}")
        if self.event is not None:
            if not isinstance(self.event, str):
                raise TypeError(f"event must be str, not {type(self.event).__name__}")
            if "\r" in self.event or "\n" in self.event:
                raise ValueError("event must not contain CR or LF")
        if self.id is not None:
            if not isinstance(self.id, str):
                raise TypeError(f"id must be str, not {type(self.id).__name__}")
            if "\r" in self.id or "\n" in self.id:
                raise ValueError("id must not contain CR or LF")
            if "\0" in self.id:
                raise ValueError("id must not contain NUL")
        if self.retry is not None and (
            type(self.retry) is not int or self.retry < 0  # bool is an int: refuse it too
        ):
            raise ValueError(f"retry must be a non-negative integer, not {self.retry!r}")
        if self.comment is not None and not isinstance(self.comment, str):
            raise TypeError(f"comment must be str, not {type(self.comment).__name__}")
