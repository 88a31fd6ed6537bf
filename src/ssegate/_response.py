"""``EventSourceResponse``: an ASGI response that writes an async iterable of events.

The response sends its headers, then runs an :class:`~ssegate._event_stream.EventStream`
(the producer writes each item as it comes; the monitor listens for the client leaving and
keeps the heartbeat and the time limits: see that module for the design and where it departs
from the specs).

A :class:`~ssegate.ShutdownSignal` (passed in, or found in the lifespan state under
:data:`~ssegate.SHUTDOWN_STATE_KEY`) ends the stream cleanly when the server begins shutting
down: the body ends as a complete chunked body, so an ``EventSource`` reconnects (to another
instance) with its ``Last-Event-ID``. A ``HEAD`` request gets the headers and an empty body:
streaming on ``HEAD`` would never end.

When the stream ends early the content iterator is closed (``aclose()``, shielded, bounded by
``close_timeout``), so its ``finally`` blocks run.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._event_stream import FINAL, CloseReason, EventStream, EventStreamOptions, StreamItem
from ._shutdown import SHUTDOWN_STATE_KEY, ShutdownSignal

__all__ = [
    "CloseReason",
    "EventSourceResponse",
    "EventStreamOptions",
    "EventStreamStatistics",
    "StreamItem",
]

log = logging.getLogger("ssegate.response")


@dataclass(frozen=True, slots=True)
class EventStreamStatistics:
    """Counters of one response: items taken from the content, ``send()`` calls that carried
    body bytes, body bytes sent, and heartbeats."""

    events: int
    writes: int
    bytes_sent: int
    pings: int


class _Default(enum.Enum):
    TOKEN = 0


_DEFAULT = _Default.TOKEN
_DEFAULT_OPTIONS = EventStreamOptions()
_DEFAULT_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EventSourceResponse(Response):
    """Stream ``content`` to the client as ``text/event-stream``.

    ``content`` is an async iterable (or, run in a thread pool, a sync iterable) of
    :data:`StreamItem`. The response sends its headers at once, writes each item as it comes,
    sends heartbeats while the content is idle, notices a disconnect at once, and ends cleanly
    on server shutdown. ``options`` groups the settings; ``ping_interval``, ``retry``,
    ``send_timeout`` and ``max_duration`` override single fields of it. ``headers`` add to or
    replace the defaults (``Cache-Control: no-cache``, ``X-Accel-Buffering: no``). A response
    can be sent once.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterable[StreamItem] | Iterable[StreamItem],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        options: EventStreamOptions | None = None,
        ping_interval: float | _Default | None = _DEFAULT,
        retry: int | _Default | None = _DEFAULT,
        send_timeout: float | _Default | None = _DEFAULT,
        max_duration: float | _Default | None = _DEFAULT,
        shutdown: ShutdownSignal | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        base = options if options is not None else _DEFAULT_OPTIONS
        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("ping_interval", ping_interval),
                ("retry", retry),
                ("send_timeout", send_timeout),
                ("max_duration", max_duration),
            )
            if value is not _DEFAULT and value != getattr(base, name)
        }
        self.options = replace(base, **overrides) if overrides else base
        self.status_code = status_code
        self.background = background
        merged = dict(_DEFAULT_HEADERS)
        for name, value in (headers or {}).items():
            merged[name.lower()] = value
        self.init_headers(merged)
        self._content = content
        self._shutdown = shutdown
        self._used = False
        self._head_sent = False
        self._stream: EventStream | None = None

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the stream ended; ``None`` until it has."""
        if self._stream is not None:
            return self._stream.reason
        return CloseReason.COMPLETED if self._head_sent else None

    def statistics(self) -> EventStreamStatistics:
        """Counters of this response's stream so far (all zero before it starts)."""
        stream = self._stream
        if stream is None:
            return EventStreamStatistics(0, 0, 0, 0)
        return EventStreamStatistics(stream.events, stream.writes, stream.bytes_sent, stream.pings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._used:
            raise RuntimeError("an EventSourceResponse can be sent only once")
        self._used = True
        content = self._content
        iterator: AsyncIterator[StreamItem] = (
            aiter(content)
            if isinstance(content, AsyncIterable)
            else iterate_in_threadpool(iter(content))
        )
        try:
            if scope.get("method") == "HEAD":
                await send(self._start_message())
                await send(FINAL)
                self._head_sent = True
            else:
                stream = self._stream = EventStream(self.options, iterator, send)
                await stream.run(self._start_message, receive, self._shutdown_signal(scope))
        finally:
            await _aclose(iterator, self.options.close_timeout)
        if self.background is not None:
            await self.background()

    def _start_message(self) -> Message:
        return {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }

    def _shutdown_signal(self, scope: Scope) -> ShutdownSignal | None:
        if self._shutdown is not None:
            return self._shutdown
        state = scope.get("state")
        candidate = state.get(SHUTDOWN_STATE_KEY) if isinstance(state, dict) else None
        return candidate if isinstance(candidate, ShutdownSignal) else None


async def _aclose(iterator: object, limit: float) -> None:
    """Close the content iterator so its ``finally`` blocks run, even while being cancelled;
    a close that takes longer than ``limit`` seconds is abandoned with a warning."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(limit, shield=True) as scope:
        try:
            await aclose()
        except Exception:
            log.exception("closing the event stream's content iterator failed")
    if scope.cancelled_caught:
        log.warning("closing the event stream's content iterator took over %s s", limit)
