"""The in-process store: the embedded default, for one gateway instance.

This module holds the store's map of streams, its bounds, expiry, eviction, aliases and
counters. One stream's ring of ``max_events`` events, its followers' waiters, cancel and lease
live in :mod:`ssegate.store._memory_stream`. Followers don't copy events, so a slow follower
costs no memory; if it falls behind the cap it gets :class:`StreamGapError`.

Expiry needs no background task: a finished stream's TTL is checked when the stream is looked
up, and ``create`` sweeps expired streams (oldest finish first, amortised O(1)). When the store
is full, ``create`` evicts the oldest finished stream before its TTL rather than refuse a new
generation; only a store full of *running* streams raises :class:`~ssegate.store.StoreFullError`.

The lease exists to mirror the Redis store: a producer in this process renews it (and every
``append`` does too), so it only lapses if a producer is stuck or forgot to finish its stream.

Not thread-safe: use it from the event loop that created it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from .._aio import waiter_factory
from ._base import (
    FINISH_INPUTS,
    FOLLOW_BATCH,
    TERMINAL_EVENTS,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreStatistics,
    StreamGapError,
    StreamInfo,
    StreamInput,
    StreamStatus,
)
from ._errors import StoreFullError, StoreUnavailableError, StreamNotFoundError
from ._memory_stream import MemoryStream

__all__ = ["MemoryStore", "MemoryStoreConfig"]


@dataclass(frozen=True, slots=True)
class MemoryStoreConfig:
    """Bounds of a :class:`MemoryStore`.

    ``max_streams`` streams at once; ``max_events`` kept per stream (older ones are trimmed);
    a finished stream is forgotten ``finished_ttl`` seconds after it ends; a producer's lease
    lasts ``lease_ttl`` seconds.
    """

    max_streams: int = 10_000
    max_events: int = 100_000
    finished_ttl: float = 600.0
    lease_ttl: float = 15.0

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")
        if not self.finished_ttl > 0:
            raise ValueError("finished_ttl must be positive")
        if not self.lease_ttl > 0:
            raise ValueError("lease_ttl must be positive")


class MemoryStore(Store):
    """A :class:`~ssegate.store.Store` in this process's memory, bounded by ``config``.

    ``clock`` (unix seconds, default ``time.time``) dates streams and drives TTL and lease
    expiry; tests inject a fake one instead of sleeping.
    """

    def __init__(
        self,
        config: MemoryStoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config if config is not None else MemoryStoreConfig()
        self.lease_ttl = self.config.lease_ttl
        self._clock = clock
        self._streams: dict[str, MemoryStream] = {}
        # Finished streams, oldest finish first: with one TTL for all, also expiry order.
        self._finished: OrderedDict[str, MemoryStream] = OrderedDict()
        self._closed = False
        self._running = 0
        self._events = 0
        self._subscribers = 0
        self._followers = 0
        # alias -> (stream id, expiry); dropped when read after its stream is gone, and
        # swept by set_alias once they outnumber what the streams can hold.
        self._aliases: dict[str, tuple[str, float]] = {}

    # -- lookup and expiry --------------------------------------------------------------

    def _lookup(self, stream_id: str) -> MemoryStream:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotFoundError("no such stream")
        if stream.expires_at is not None and self._clock() >= stream.expires_at:
            self._remove(stream)
            raise StreamNotFoundError("no such stream")
        return stream

    def _remove(self, stream: MemoryStream) -> None:
        del self._streams[stream.id]
        self._finished.pop(stream.id, None)
        if stream.status is StreamStatus.RUNNING:
            self._running -= 1
        self._events -= stream.discard()  # frees the ring now and wakes its waiters

    def _sweep(self) -> None:
        now = self._clock()
        while self._finished:
            stream = next(iter(self._finished.values()))
            if stream.expires_at is None or stream.expires_at > now:
                break
            self._remove(stream)

    def _gone_error(self) -> Exception:
        if self._closed:
            return StoreUnavailableError("the store is closed")
        return StreamNotFoundError("no such stream")

    # -- Store -------------------------------------------------------------------------

    async def create(
        self, stream_id: str, *, model: str, provider: str, owner: str | None = None
    ) -> StreamInfo:
        """Create a running stream; evicts expired, then the oldest finished, streams if full."""
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        self._sweep()
        if stream_id in self._streams:
            raise ValueError("a stream with this id exists")
        if len(self._streams) >= self.config.max_streams:
            if not self._finished:
                raise StoreFullError(
                    f"the store holds {self.config.max_streams} running streams, its limit"
                )
            self._remove(next(iter(self._finished.values())))
        now = self._clock()
        stream = MemoryStream(
            stream_id,
            model=model,
            provider=provider,
            owner=owner,
            created=now,
            cap=self.config.max_events,
            lease_expires=now + self.lease_ttl,
        )
        self._streams[stream_id] = stream
        self._running += 1
        return stream.info()

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        """Append a non-terminal event with the next id; renews the lease."""
        if event in TERMINAL_EVENTS:
            raise ValueError(f"{event!r} ends a stream: use finish()")
        stream = self._lookup(stream_id)
        if stream.status is not StreamStatus.RUNNING:
            stream.status.apply(StreamInput.APPEND)  # raises IllegalTransitionError
        stored = StoredEvent.build(stream.last_id + 1, event, data)
        if stream.push(stored):
            self._events += 1
        stream.lease_expires = self._clock() + self.lease_ttl
        stream.wake_followers()
        return stored

    async def finish(
        self,
        stream_id: str,
        status: StreamStatus,
        data: str,
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> StoredEvent:
        """Append the terminal event and set the status in one step."""
        stream_input = FINISH_INPUTS.get(status)
        if stream_input is None:
            raise ValueError(f"{status.value} is not a terminal status")
        stream = self._lookup(stream_id)
        new_status = stream.status.apply(stream_input)
        stored = StoredEvent.build(stream.last_id + 1, status.value, data)
        if stream.push(stored):
            self._events += 1
        now = self._clock()
        stream.mark_finished(
            new_status,
            now=now,
            expires_at=now + self.config.finished_ttl,
            usage=usage,
            error=error,
            cause=cause,
        )
        self._running -= 1
        self._finished[stream.id] = stream
        stream.wake_followers()
        return stored

    async def get(self, stream_id: str) -> StreamInfo:
        """A snapshot of the stream's metadata."""
        return self._lookup(stream_id).info()

    async def read(
        self, stream_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The kept events with id > ``after``, at most ``limit`` of them."""
        if after < 0:
            raise ValueError("after must be >= 0")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        stream = self._lookup(stream_id)
        first = stream.first_id()
        if after + 1 < first and stream.last_id > after:
            raise StreamGapError(stream.id, after=after, first_id=first)
        end = stream.last_id if limit is None else min(stream.last_id, after + limit)
        return stream.events(after + 1, end)

    async def follow_batches(
        self, stream_id: str, after: int = 0, limit: int = FOLLOW_BATCH
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """See :meth:`Store.follow_batches`: what the ring holds after the last one yielded,
        then what appends add while the follower waits."""
        if after < 0:
            raise ValueError("after must be >= 0")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        stream = self._lookup(stream_id)
        new_waiter = waiter_factory()  # a bare future on asyncio (see ssegate._aio)
        self._followers += 1
        try:
            next_id = after + 1
            while True:
                if next_id <= stream.last_id:
                    if stream.gone:  # deleted, evicted or expired under a slow follower
                        raise self._gone_error()
                    first = stream.first_id()
                    if next_id < first:
                        raise StreamGapError(stream.id, after=next_id - 1, first_id=first)
                    end = min(stream.last_id, next_id + limit - 1)
                    batch = stream.events(next_id, end)
                    next_id = end + 1
                    yield batch
                    continue
                if stream.status.is_terminal:
                    return
                if stream.gone:
                    raise self._gone_error()
                if stream.lease_expires <= self._clock():
                    raise ProducerLostError("the stream's producer stopped renewing its lease")
                await stream.wait_for_append(new_waiter)
        finally:
            self._followers -= 1

    async def request_cancel(self, stream_id: str, cause: str = "client") -> bool:
        """Signal cancel to the producer; ``False`` if the stream already finished."""
        stream = self._lookup(stream_id)
        if stream.status.is_terminal:
            return False
        stream.request_cancel(cause)
        return True

    async def wait_cancel(self, stream_id: str) -> str:
        """Return the cause once cancel is requested."""
        stream = self._lookup(stream_id)
        await stream.cancel_event.wait()
        if stream.cancel_cause is None:  # woken by aclose()
            raise self._gone_error()
        return stream.cancel_cause

    @asynccontextmanager
    async def subscriber(self, stream_id: str) -> AsyncIterator[None]:
        """Count one subscriber in for the block, then out."""
        stream = self._lookup(stream_id)
        stream.subscribers += 1
        self._subscribers += 1
        stream.wake_watchers()
        try:
            yield
        finally:
            stream.subscribers -= 1
            self._subscribers -= 1
            stream.wake_watchers()

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        """Return once nobody has been subscribed for ``grace`` seconds in a row."""
        stream = self._lookup(stream_id)
        while True:
            if stream.gone:
                raise self._gone_error()
            changed = stream.subscribers_changed
            if stream.subscribers:
                await changed.wait()
                continue
            with anyio.move_on_after(grace) as scope:
                await changed.wait()
            if scope.cancelled_caught:
                return

    async def renew_lease(self, stream_id: str) -> None:
        """Extend the producer's lease by ``lease_ttl`` from now."""
        stream = self._lookup(stream_id)
        stream.lease_expires = self._clock() + self.lease_ttl

    async def producer_alive(self, stream_id: str) -> bool:
        """Whether the stream is running and its lease is current."""
        stream = self._lookup(stream_id)
        return stream.status is StreamStatus.RUNNING and self._clock() < stream.lease_expires

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream now; a running one is asked to cancel (cause ``deleted``)."""
        try:
            stream = self._lookup(stream_id)
        except StreamNotFoundError:
            return False
        if stream.status is StreamStatus.RUNNING:
            stream.request_cancel("deleted")
        self._remove(stream)
        return True

    async def aclose(self) -> None:
        """Forget every stream; waiting followers and waiters get ``StoreUnavailableError``."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            self._remove(stream)
            stream.cancel_event.set()

    def statistics(self) -> StoreStatistics:
        """Streams held, running streams, kept events, subscribers and followers."""
        return StoreStatistics(
            streams=len(self._streams),
            running=self._running,
            events=self._events,
            subscribers=self._subscribers,
            followers=self._followers,
        )

    # -- aliases -------------------------------------------------------------------------

    def _alias_target(self, alias: str) -> str | None:
        """The stream of ``alias`` if it and its stream are still kept; drops it if not."""
        entry = self._aliases.get(alias)
        if entry is None:
            return None
        stream_id, expires_at = entry
        if self._clock() < expires_at:
            try:
                self._lookup(stream_id)
            except StreamNotFoundError:
                pass
            else:
                return stream_id
        del self._aliases[alias]
        return None

    async def set_alias(self, alias: str, stream_id: str, *, ttl: float) -> str | None:
        """Point ``alias`` at ``stream_id`` for as long as both are kept (at most ``ttl`` s)."""
        if not alias:
            raise ValueError("an alias must not be empty")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self._lookup(stream_id)  # not found, or the store is closed
        previous = self._alias_target(alias)
        self._aliases.pop(alias, None)  # re-inserted last: the dict stays in setting order
        if len(self._aliases) >= 2 * self.config.max_streams:
            for name in list(self._aliases):
                self._alias_target(name)  # drops the dead ones
            while len(self._aliases) >= 2 * self.config.max_streams:
                del self._aliases[next(iter(self._aliases))]  # many names for live streams
        self._aliases[alias] = (stream_id, self._clock() + ttl)
        return previous

    async def get_alias(self, alias: str) -> str | None:
        """The stream ``alias`` points at, or ``None``."""
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        return self._alias_target(alias)
