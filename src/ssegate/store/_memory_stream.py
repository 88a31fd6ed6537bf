"""One stream of a :class:`~ssegate.store.MemoryStore`: its event log, waiters, cancel and lease.

The events live in one ring buffer of ``cap`` slots (event ``n`` lives in slot
``(n - 1) % cap``), so appending, trimming and reading any id are O(1) and the bound is exact.
Followers don't copy events: each keeps only the next id it wants and, once caught up, waits on
a waiter of its own (:mod:`ssegate._aio`: a future on asyncio, an ``anyio.Event`` elsewhere)
that the next append wakes.

This module knows nothing of the store's map of streams, its counters or its clock: the store
passes in the times and keeps the totals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio

from .._aio import Waiter, wait, wake
from ._base import StoredEvent, StreamInfo, StreamStatus

__all__ = ["MemoryStream"]


class MemoryStream:
    """One stream's mutable state; never leaves the memory store (``StreamInfo`` does)."""

    __slots__ = (
        "cancel_cause",
        "cancel_event",
        "cancel_requested",
        "cap",
        "cause",
        "created",
        "error",
        "expires_at",
        "finished_at",
        "gone",
        "id",
        "last_id",
        "lease_expires",
        "model",
        "owner",
        "provider",
        "ring",
        "status",
        "subscribers",
        "subscribers_changed",
        "usage",
        "waiters",
    )

    def __init__(
        self,
        stream_id: str,
        *,
        model: str,
        provider: str,
        owner: str | None,
        created: float,
        cap: int,
        lease_expires: float,
    ):
        self.id = stream_id
        self.model = model
        self.provider = provider
        self.owner = owner
        self.created = created
        self.status = StreamStatus.RUNNING
        self.finished_at: float | None = None
        self.expires_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.cause: str | None = None
        self.cancel_requested = False
        self.cancel_cause: str | None = None
        self.cancel_event = anyio.Event()
        self.lease_expires = lease_expires
        self.ring: list[StoredEvent] = []
        self.cap = cap
        self.last_id = 0
        # One waiter per caught-up follower, fired and dropped by the next append: an append
        # nobody waits for allocates nothing.
        self.waiters: list[Waiter] = []
        self.subscribers = 0
        self.subscribers_changed = anyio.Event()
        self.gone = False

    # -- the ring ------------------------------------------------------------------------

    def first_id(self) -> int:
        """The oldest kept id (1 while nothing was trimmed)."""
        return max(1, self.last_id - self.cap + 1)

    def at(self, event_id: int) -> StoredEvent:
        return self.ring[(event_id - 1) % self.cap]

    def events(self, first: int, last: int) -> list[StoredEvent]:
        """The kept events with ids ``first`` to ``last``, both included."""
        return [self.at(i) for i in range(first, last + 1)]

    def push(self, event: StoredEvent) -> bool:
        """Store ``event`` (its id is ``last_id + 1``); return whether the ring grew."""
        self.last_id = event.id
        if len(self.ring) < self.cap:
            self.ring.append(event)
            return True
        self.ring[(event.id - 1) % self.cap] = event
        return False

    # -- lifecycle -----------------------------------------------------------------------

    def mark_finished(
        self,
        status: StreamStatus,
        *,
        now: float,
        expires_at: float,
        usage: dict[str, Any] | None,
        error: dict[str, Any] | None,
        cause: str | None,
    ) -> None:
        """Record the terminal ``status`` (its event is already pushed) and its outcome."""
        self.status = status
        self.finished_at = now
        self.expires_at = expires_at
        self.usage = usage
        self.error = error
        self.cause = cause

    def request_cancel(self, cause: str) -> None:
        """Signal cancel with ``cause`` to the producer, unless it was signalled already."""
        if not self.cancel_requested:
            self.cancel_requested = True
            self.cancel_cause = cause
            self.cancel_event.set()

    def discard(self) -> int:
        """Mark the stream gone, free its events and wake everyone waiting on it.

        Returns how many events it held. A follower checks ``gone`` before reading the ring.
        """
        freed = len(self.ring)
        self.ring = []
        self.gone = True
        self.wake_followers()
        self.wake_watchers()
        return freed

    # -- waiters -------------------------------------------------------------------------

    def wake_followers(self) -> None:
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                wake(waiter)

    async def wait_for_append(self, new_waiter: Callable[[], Waiter]) -> None:
        """Wait on a fresh waiter until the next append (or removal) wakes it."""
        waiter = new_waiter()
        self.waiters.append(waiter)
        try:
            await wait(waiter)
        finally:
            if self.waiters:  # cancelled before an append fired it: unlist it
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)

    def wake_watchers(self) -> None:
        changed, self.subscribers_changed = self.subscribers_changed, anyio.Event()
        changed.set()

    # -- snapshot ------------------------------------------------------------------------

    def info(self) -> StreamInfo:
        cause = self.cause
        if cause is None and self.cancel_requested and self.status is StreamStatus.RUNNING:
            cause = self.cancel_cause
        return StreamInfo(
            id=self.id,
            status=self.status,
            model=self.model,
            provider=self.provider,
            owner=self.owner,
            created=self.created,
            finished_at=self.finished_at,
            last_event_id=self.last_id,
            usage=dict(self.usage) if self.usage is not None else None,
            error=dict(self.error) if self.error is not None else None,
            cancel_requested=self.cancel_requested,
            cause=cause,
            subscribers=self.subscribers,
        )
