"""What one process knows and waits for about one stream of a
:class:`~ssegate.store.redis.RedisStore`: its :class:`Watch`."""

from __future__ import annotations

import itertools
import math
from collections import deque

import anyio

from ._base import StoredEvent
from ._errors import StoreError

__all__ = ["Watch"]


class Watch:
    """What this process knows and waits for about one stream, while anything here waits."""

    __slots__ = (
        "append_error",
        "cache",
        "cancel_cause",
        "cancel_changed",
        "channels",
        "confirmed",
        "epoch",
        "events_changed",
        "flushed",
        "flushed_at",
        "gone",
        "last_id",
        "lease_deadline",
        "local",
        "next_append",
        "pending",
        "refs",
        "sid",
        "subs_changed",
    )

    def __init__(self, sid: str, channels: tuple[bytes, bytes], cache: int) -> None:
        self.sid = sid
        self.channels = channels  # (control, data)
        self.refs = 0
        # Recent events with consecutive ids; a follower reads Redis for anything else.
        self.cache: deque[StoredEvent] = deque(maxlen=cache)
        self.last_id = 0  # the highest id this process has heard of
        self.lease_deadline = -math.inf  # monotonic time until which the lease surely holds
        # True while this process produces the stream: every event goes through this watch,
        # so a follower needs no Redis read to wait for the next one.
        self.local = False
        # The producer's appends in flight (see RedisStore.append): the id the next one gets,
        # how many Redis has not answered yet, the first that failed, and an event set when
        # at most `flushed_at` are left in flight (made by whoever waits for that).
        self.next_append = 1
        self.pending = 0
        self.append_error: StoreError | None = None
        self.flushed: anyio.Event | None = None
        self.flushed_at = 0  # `flushed` is set once at most this many are in flight
        # Bumped whenever notices may have been missed (a (re)subscription took effect):
        # followers then read Redis again.
        self.epoch = 0
        self.confirmed: set[bytes] = set()
        self.cancel_cause: str | None = None
        self.gone = False
        self.events_changed = anyio.Event()
        self.cancel_changed = anyio.Event()
        self.subs_changed = anyio.Event()

    def has(self, event_id: int) -> bool:
        """Whether event ``event_id`` is cached."""
        cache = self.cache
        return bool(cache) and cache[0].id <= event_id <= cache[-1].id

    def events(self, event_id: int, limit: int) -> list[StoredEvent]:
        """The cached events from ``event_id`` on, at most ``limit`` (none if it isn't cached)."""
        cache = self.cache
        if cache:
            first = cache[0].id
            if first <= event_id <= cache[-1].id:
                start = event_id - first
                return list(itertools.islice(cache, start, start + limit))
        return []

    def push(self, event: StoredEvent, *, wake: bool = True) -> None:
        """Cache ``event`` (and wake the followers, unless the caller will)."""
        cache = self.cache
        if cache and event.id <= cache[-1].id:
            return  # already known (our own event, echoed)
        if cache and event.id != cache[-1].id + 1:
            cache.clear()  # keep the ids consecutive; followers read the hole from Redis
        cache.append(event)
        if event.id > self.last_id:
            self.last_id = event.id
        if wake:
            self.wake_events()

    def wake_events(self) -> None:
        changed, self.events_changed = self.events_changed, anyio.Event()
        changed.set()

    def wake_cancel(self) -> None:
        changed, self.cancel_changed = self.cancel_changed, anyio.Event()
        changed.set()

    def wake_subs(self) -> None:
        changed, self.subs_changed = self.subs_changed, anyio.Event()
        changed.set()

    def wake_all(self) -> None:
        self.wake_events()
        self.wake_cancel()
        self.wake_subs()
