"""Reading what an upstream sends: lines, SSE events, JSON chunks, error objects and bodies.

The parsers here turn response bytes into deltas for
:meth:`~ssegate.providers._http.HttpUpstream.stream_deltas`; every fault in what the upstream
sent becomes an ``UpstreamError`` (never an httpx or JSON exception), its text redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import orjson

from .._errors import SseProtocolError
from ..codec import Decoder
from ._base import Delta, ReasoningDelta, TextDelta
from ._config import ProviderConfig, redact
from ._errors import UpstreamProtocolError, UpstreamStreamError

__all__ = [
    "LineSplitter",
    "SseParser",
    "StreamParser",
    "coalesce",
    "error_message",
    "loads_chunk",
    "sanitize_code",
    "stream_error",
]

# Stream error codes that mean "try again later".
_RETRYABLE_HINTS = ("overload", "rate_limit", "server_error", "api_error", "unavailable", "timeout")


class LineSplitter:
    """Split a byte stream into lines (LF or CRLF), refusing a line longer than ``max_line``."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete, non-blank lines that ``data`` finishes, without line endings."""
        self._buffer += data
        if b"\n" not in data:
            self._check()
            return []
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        self._check()
        out = []
        for line in lines:
            if len(line) > self._max:
                raise UpstreamProtocolError(f"upstream line longer than {self._max} bytes")
            line = line.rstrip(b"\r")
            if line.strip():
                out.append(bytes(line))
        return out

    def flush(self) -> bytes:
        """The unterminated rest of the stream (empty if the stream ended with a newline)."""
        rest = bytes(self._buffer).strip()
        self._buffer.clear()
        return rest

    def _check(self) -> None:
        if len(self._buffer) > self._max:
            raise UpstreamProtocolError(f"upstream line longer than {self._max} bytes")


def sanitize_code(raw: object) -> str:
    """A provider's error type or code as one of our codes: ``upstream_<snake_case>``.

    The prefix keeps a hostile upstream from impersonating our own codes (``gap``…).
    """
    text = re.sub(r"[^a-z0-9]+", "_", str(raw).lower()).strip("_")[:60]
    if not text:
        return "upstream_error"
    return text if text.startswith("upstream_") else f"upstream_{text}"


def stream_error(message: object, code: object, secrets: tuple[str, ...]) -> UpstreamStreamError:
    """The error for an error object found inside a 200 stream."""
    sane = sanitize_code(code) if code else "upstream_error"
    text = message if isinstance(message, str) and message else "upstream reported an error"
    retryable = any(hint in sane for hint in _RETRYABLE_HINTS)
    return UpstreamStreamError(
        redact(f"upstream error in stream: {text}", secrets), code=sane, retryable=retryable
    )


def loads_chunk(data: str | bytes, what: str) -> dict[str, Any]:
    """Parse one JSON chunk, which must be an object; else :class:`UpstreamProtocolError`.

    ``bytes`` are UTF-8, invalid sequences read as U+FFFD (what an SSE decoder does).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        try:
            if text is data:
                raise
            obj = orjson.loads(text)  # orjson refuses invalid UTF-8 that we replace
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                redact(f"malformed JSON in {what}: {text[:80]!r}")
            ) from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"unexpected {what}: not a JSON object")
    return obj


def error_message(body: bytes) -> str:
    """The upstream's own message from an error body (OpenAI, Anthropic, Ollama, FastAPI…)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        # An HTML error page from a proxy says nothing useful in a one-line message.
        return "" if text.startswith("<") else " ".join(text.split())[:200]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        for candidate in (err, obj.get("message"), obj.get("detail")):
            if isinstance(candidate, str):
                return candidate
    return ""


class StreamParser(Protocol):
    """Turns one upstream's response bytes into deltas, for :meth:`HttpUpstream.stream_deltas`."""

    #: The upstream's end marker, as named in the "ended early" message.
    terminator: str
    #: Whether the end marker was seen.
    done: bool

    def feed(self, data: bytes) -> Iterator[Delta]:
        """Yield the deltas ``data`` completes, in order; raise ``UpstreamError`` at a fault."""
        ...

    def end(self) -> Iterator[Delta]:
        """The body ended: yield what an unterminated last line holds."""
        ...

    def final(self) -> Iterator[Delta]:
        """After the end marker: yield the usage (if any) and the :class:`Finish`."""
        ...


class SseParser:
    """Base for SSE upstreams: reads events with :class:`~ssegate.codec.Decoder` (the WHATWG
    rules, bounded by ``max_event_size``) and hands each to :meth:`on_event`."""

    terminator = "end marker"

    def __init__(self, config: ProviderConfig) -> None:
        self.done = False
        self.secrets = config.secrets()
        self._decoder = Decoder(
            max_line_size=config.max_event_size, max_event_size=config.max_event_size
        )

    def feed(self, data: bytes) -> Iterator[Delta]:
        """Read ``data`` and hand each complete event to :meth:`on_event`."""
        try:
            events = self._decoder.feed(data)
        except SseProtocolError as exc:
            raise UpstreamProtocolError(f"upstream stream broke a bound: {exc}") from None
        for event in events:
            yield from self.on_event(event.event or "message", event.data or "")
            if self.done:
                return

    def on_event(self, event: str, data: str) -> Iterator[Delta]:
        """Yield the deltas of one upstream event: its type (``message`` when the upstream
        named none) and its data (subclasses)."""
        raise NotImplementedError

    def end(self) -> Iterator[Delta]:
        """An unterminated last SSE event is never dispatched (WHATWG): nothing to add."""
        return iter(())

    def final(self) -> Iterator[Delta]:
        """Subclasses yield usage and finish."""
        raise NotImplementedError


def coalesce(deltas: Iterable[Delta]) -> list[Delta]:
    """``deltas`` in order, each run of consecutive :class:`TextDelta` (or
    :class:`ReasoningDelta`) merged into one; every other delta is kept as it is."""
    out: list[Delta] = []
    run: list[str] = []  # the texts of the run that out[-1] started
    for delta in deltas:
        if isinstance(delta, (TextDelta, ReasoningDelta)):
            if run and type(out[-1]) is type(delta):
                run.append(delta.text)
                continue
            _end_run(out, run)
            run = [delta.text]
        else:
            _end_run(out, run)
            run = []
        out.append(delta)
    _end_run(out, run)
    return out


def _end_run(out: list[Delta], run: list[str]) -> None:
    if len(run) > 1:
        text = "".join(run)
        out[-1] = TextDelta(text) if isinstance(out[-1], TextDelta) else ReasoningDelta(text)
