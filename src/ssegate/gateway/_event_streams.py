"""The gateway's open event-stream responses: what they hold for slow clients, how they ended."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from .._response import CloseReason, EventSourceResponse

__all__ = ["EventStreamTracker", "TrackedEventSourceResponse"]


class EventStreamTracker:
    """The gateway's open event-stream responses: how many bytes they hold for slow clients,
    and how many ended for each :class:`CloseReason` (``send_timeout``: a client that stopped
    reading and was dropped)."""

    def __init__(self) -> None:
        self._live: set[TrackedEventSourceResponse] = set()
        self._changed: anyio.Event | None = None  # set when one closes (made by a waiter)
        self.closed: Counter[CloseReason] = Counter()
        #: Called with each response once it has ended (keep them quick).
        self.on_close: list[Callable[[EventSourceResponse], None]] = []

    def live(self) -> list[TrackedEventSourceResponse]:
        """The responses streaming now."""
        return list(self._live)

    async def until_closed(self, stream_ids: Collection[str]) -> None:
        """Until no response streams any of ``stream_ids`` (bound it with a timeout)."""
        while any(r.stream_id in stream_ids for r in self._live):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _opened(self, response: TrackedEventSourceResponse) -> None:
        self._live.add(response)

    def _closed(self, response: TrackedEventSourceResponse) -> None:
        self._live.discard(response)
        if response.close_reason is not None:
            self.closed[response.close_reason] += 1
        for callback in self.on_close:
            callback(response)
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class TrackedEventSourceResponse(EventSourceResponse):
    """An :class:`EventSourceResponse` of gateway stream ``stream_id`` that a
    :class:`EventStreamTracker` counts while open."""

    def __init__(
        self, *args: Any, stream_id: str, tracker: EventStreamTracker, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stream_id = stream_id
        self._tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._tracker._opened(self)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._tracker._closed(self)
