"""Reading an upstream's event stream fast: ``(event type, data bytes)`` pairs, no objects.

Upstreams send the plainest SSE there is — ``data: {json}`` and a blank line, LF line ends —
so :class:`UpstreamEvents` splits such a stream with ``bytes`` methods (in C) and hands each
event's type and its data as raw bytes (the JSON parser takes bytes). The result is exactly
what :class:`~ssegate.codec.Decoder` (WHATWG, "Interpreting an event stream") would report, as
bytes instead of ``str``: the data are the UTF-8 bytes of the stream, decoded by the caller
with ``errors="replace"`` (what the decoder does, since LF never sits inside a UTF-8
sequence). ``id`` and ``retry`` are not reported; no provider needs them.

Whatever the fast path does not handle it hands, from an event boundary on, to the real
:class:`~ssegate.codec.Decoder`, for the rest of the stream: a CR anywhere (CR and CRLF line
ends), a stream starting with ``0xEF`` (a BOM, maybe), and anything near the size bounds,
which the decoder counts in characters exactly as it does for the public API.
"""

from __future__ import annotations

from .._errors import SseProtocolError
from ..codec import Decoder
from ._errors import UpstreamProtocolError

__all__ = ["UpstreamEvents"]

#: One event: its type (``"message"`` when the stream named none) and its data's bytes.
Event = tuple[str, bytes]


class UpstreamEvents:
    """Incremental: ``feed(bytes)`` returns the events the bytes complete, in order."""

    __slots__ = ("_buffer", "_decoder", "_limit", "_max_event", "_max_line", "_started")

    def __init__(self, *, max_line_size: int, max_event_size: int) -> None:
        self._max_line = max_line_size
        self._max_event = max_event_size
        # Below this many bytes, no line or event can reach a bound (characters <= bytes).
        self._limit = min(max_line_size, max_event_size) - 2
        self._buffer = b""
        self._started = False
        self._decoder: Decoder | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Return the events ``data`` completes; :class:`UpstreamProtocolError` past a bound."""
        if self._decoder is not None:
            return self._decode(data)
        if not data:
            return []
        if not self._started:
            self._started = True
            if data[0] == 0xEF:  # maybe a BOM: the decoder drops exactly one
                self._decoder = self._new_decoder(prime=False)
                return self._decode(data)
        if b"\r" in data:
            return self._fall_back(data)
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            if len(buffer) > self._limit:
                return self._fall_back(data)
            self._buffer = buffer
            return []
        end += 2
        if len(buffer) - end > self._limit:
            return self._fall_back(data)  # the unfinished event may pass a bound
        events: list[Event] = []
        blocks = buffer[:end].split(b"\n\n")
        blocks.pop()  # what follows the last blank line: nothing
        start = 0
        for block in blocks:
            if len(block) > self._limit:
                self._buffer = buffer[start:]
                events += self._fall_back(b"")
                return events
            start += len(block) + 2
            if block[:6] == b"data: " and b"\n" not in block:
                events.append(("message", block[6:]))  # the usual event: one data line
            elif block:
                event = _block(block)
                if event is not None:
                    events.append(event)
        self._buffer = buffer[end:]
        return events

    def _fall_back(self, data: bytes) -> list[Event]:
        # The buffer starts at an event boundary: a fresh decoder, told the stream has
        # started (a blank line there changes nothing), reads on exactly where we stopped.
        self._decoder = self._new_decoder(prime=True)
        pending, self._buffer = self._buffer + data, b""
        return self._decode(pending)

    def _new_decoder(self, *, prime: bool) -> Decoder:
        decoder = Decoder(max_line_size=self._max_line, max_event_size=self._max_event)
        if prime:
            decoder.feed(b"\n")
        return decoder

    def _decode(self, data: bytes) -> list[Event]:
        assert self._decoder is not None
        try:
            decoded = self._decoder.feed(data)
        except SseProtocolError as exc:
            raise UpstreamProtocolError(f"upstream stream broke a bound: {exc}") from None
        return [(e.event or "message", (e.data or "").encode()) for e in decoded]


def _block(block: bytes) -> Event | None:
    """One event's lines (LF-separated, no blank line inside but maybe a leading one)."""
    data: list[bytes] = []
    event_type = b""
    for line in block.split(b"\n"):
        colon = line.find(b":")
        if colon == 0 or not line:
            continue  # a comment, or the blank line at the start
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event_type = value
    if not data:
        return None
    return (event_type.decode("utf-8", "replace") or "message", b"\n".join(data))
