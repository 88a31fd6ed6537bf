"""An incremental, sans-IO ``text/event-stream`` decoder.

It follows the WHATWG HTML Standard, section 9.2.6 "Interpreting an event stream", to the letter:

* the stream is UTF-8 decoded with replacement (invalid bytes become U+FFFD, a character split
  across two ``feed()`` calls is joined), and one U+FEFF BOM is dropped at stream start only;
* lines end with CRLF, LF or CR, including a CRLF split across two feeds;
* ``data`` lines are joined with LF; an event with no ``data`` field is not dispatched;
* ``id`` with a NUL is ignored; the last event id persists across events and is reported on
  every dispatched event (``None`` while it is the empty string), and ``last_event_id`` is
  updated by every blank line, even one that dispatches nothing;
* ``retry`` is used only when its value is all ASCII digits; unknown fields are ignored;
* an event type of ``""`` is reported as ``"message"``;
* an event is returned by the ``feed()`` whose bytes complete its blank line, and an unterminated
  last event is never dispatched.

Where we add to the spec: lines and events are bounded (``max_line_size``, ``max_event_size``,
counted in characters); past a bound ``feed()`` raises :class:`SseProtocolError` instead of
growing without limit. The spec sets no bound.
"""

from __future__ import annotations

import codecs
import re

from .._errors import SseProtocolError
from ._event import ServerSentEvent, decoded_event

__all__ = ["Decoder"]

_EOL = re.compile(r"\r\n?|\n")
_DEFAULT_MAX = 4 * 1024 * 1024


class Decoder:
    """Turn ``text/event-stream`` bytes into :class:`ServerSentEvent` objects.

    ``feed(data)`` returns the events completed by ``data``; it never blocks and does no I/O.
    """

    __slots__ = (
        "_between",
        "_data",
        "_data_size",
        "_event_retry",
        "_event_type",
        "_id_buffer",
        "_max_event",
        "_max_line",
        "_partial",
        "_partial_size",
        "_skip_lf",
        "_started",
        "_utf8",
        "_utf8_empty",
        "last_event_id",
        "retry",
    )

    def __init__(
        self,
        *,
        max_line_size: int = _DEFAULT_MAX,
        max_event_size: int = _DEFAULT_MAX,
    ) -> None:
        self._max_line = max_line_size
        self._max_event = max_event_size
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._utf8_empty = True  # whether self._utf8 holds no bytes of a cut character
        self._started = False
        self._between = False  # see feed(); False until the first feed has read the BOM
        self._skip_lf = False
        self._partial: list[str] = []
        self._partial_size = 0
        self._data: list[str] = []
        self._data_size = 0
        self._event_type = ""
        self._event_retry: int | None = None
        self._id_buffer = ""
        #: The last event id string, as ``EventSource.lastEventId`` would report it.
        self.last_event_id: str = ""
        #: The reconnection time in milliseconds, once the stream has set one.
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode ``data`` and return every event that it completes, in order."""
        if self._utf8_empty and data[-1:] < b"\x80" and type(data) is bytes:
            # Nothing buffered and no character cut at the end: one decode is exact.
            text = data.decode("utf-8", "replace")
        else:
            text = self._utf8.decode(data)
            if data:
                # After an ASCII byte the incremental decoder holds nothing back.
                self._utf8_empty = data[-1:] < b"\x80"
        if not text:
            return []
        events: list[ServerSentEvent] = []
        if "\r" not in text:
            if not self._between:
                # A read that ended inside an event: finish that event the general way, and
                # the whole events after it may take the fast path.
                cut = text.find("\n\n") + 2
                if cut == 1:
                    self._text(text, events)
                    self._between = self._is_between()
                    return events
                self._text(text[:cut], events)
                self._between = self._is_between()
                text = text[cut:]
                if not text:
                    return events
            if self._between:
                # The fast path (LF line ends, between events): split whole events off at
                # their blank lines; what follows the last one goes the general way.
                blocks = text.split("\n\n")
                text = blocks.pop()  # "" or "\n" (a blank line: nothing to do) once all is read
                if blocks:
                    events += self._whole_events(blocks)
                if text == "" or text == "\n":
                    return events
        self._text(text, events)
        self._between = self._is_between()
        return events

    def _is_between(self) -> bool:
        """Whether nothing of the next event has been read (the fast path may be taken). A
        state only equal to that counts too (an id line equal to the last id)."""
        return (
            not self._partial
            and not self._skip_lf
            and not self._data
            and not self._event_type
            and self._event_retry is None
            and self._id_buffer == self.last_event_id
        )

    def _whole_events(self, blocks: list[str]) -> list[ServerSentEvent]:
        """The events of ``blocks``: each the lines of one event (LF-separated), a blank line
        maybe before them. The same as reading those lines one by one."""
        events: list[ServerSentEvent] = []
        for block in blocks:
            if block[:1] == "\n":
                block = block[1:]  # a blank line between events: nothing to dispatch
            if block[:6] == "data: " and "\n" not in block:
                # The usual event: one data line.
                if len(block) > self._max_line:
                    raise SseProtocolError(f"line longer than {self._max_line} characters")
                if len(block) - 5 > self._max_event:
                    raise SseProtocolError(f"event larger than {self._max_event} characters")
                events.append(decoded_event(block[6:], "message", self.last_event_id or None, None))
            elif block:
                for line in block.split("\n"):
                    if len(line) > self._max_line:
                        raise SseProtocolError(f"line longer than {self._max_line} characters")
                    self._line(line, events)
                self._dispatch(events)
        return events

    def _text(self, text: str, events: list[ServerSentEvent]) -> None:
        """The general path: any line ends, a line split across feeds, the BOM."""
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return
        pos = 0
        for match in _EOL.finditer(text):
            line = text[pos : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial.clear()
                self._partial_size = 0
            if len(line) > self._max_line:
                raise SseProtocolError(f"line longer than {self._max_line} characters")
            self._line(line, events)
            pos = match.end()
        if text[-1] == "\r":
            # The CR ended a line; an LF at the start of the next feed belongs to it.
            self._skip_lf = True
        elif pos < len(text):
            rest = text[pos:]
            self._partial_size += len(rest)
            if self._partial_size > self._max_line:
                raise SseProtocolError(f"line longer than {self._max_line} characters")
            self._partial.append(rest)

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        colon = line.find(":")
        if colon == 0:
            return  # a comment
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == " ":
                value = value[1:]
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_event:
                raise SseProtocolError(f"event larger than {self._max_event} characters")
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value and value.isascii() and value.isdigit():
                self.retry = self._event_retry = int(value)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        self.last_event_id = self._id_buffer
        if self._data:
            events.append(
                decoded_event(
                    "\n".join(self._data),
                    self._event_type or "message",
                    self._id_buffer or None,
                    self._event_retry,
                )
            )
            self._data = []
            self._data_size = 0
        self._event_type = ""
        self._event_retry = None
