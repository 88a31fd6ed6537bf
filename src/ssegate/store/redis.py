"""The Redis store: streams shared by all gateway instances, on Redis Streams (Redis ≥ 6.2, Valkey).

It runs on asyncio only (anyio's asyncio backend included, not trio): it is built on redis-py's
asyncio client.

Keys and channels per stream (a hash with the metadata, a Redis stream with the events, the
producer's lease, a sorted set of subscriber leases, and two pub/sub channels) are laid out in
``ssegate.store._redis_keys``; the Lua scripts are in ``ssegate.store._redis_scripts`` and the
pub/sub machinery in ``ssegate.store._redis_pubsub``.

Every write is one Lua script, so it is atomic: ids come from ``HINCRBY last_id`` in the same
script as the ``XADD`` (two instances can never hand out one id twice), a finished stream takes
no event (the status is checked in the script), and ``finish`` appends the terminal event, sets
the status and the TTL in one step. Scripts read the server's clock (``TIME``), so instances'
clocks don't matter. Only commands of Redis ≤ 6.2 are used.

**Writes are batched** (``ssegate.store._redis_writer``): script calls queue up and one writer
sends them as a pipeline on one connection, the appends of one stream coalesced into one call
(ids still consecutive, in queue order). However many streams produce, writes hold one pooled
connection and a token costs a share of a round trip, not a round trip of its own.

**Following without a connection per follower.** Each instance holds one pub/sub connection.
While something in the process waits on a stream (a follower, the producer's cancel watcher,
the abandon watcher), the instance subscribes to its channels and keeps a *watch*: the last
``cache_events`` events, each built into a :class:`StoredEvent` (and so encoded) once per
instance, shared by all its followers. A follower reads the backlog with ``XRANGE`` and then
waits on the watch; it reads Redis again only when the watch can't answer (it was resubscribed,
or the follower is behind the cache). Events appended by this same instance reach its local
followers directly, without the pub/sub round trip. A producer that dies is noticed by the
followers' lease check (``PTTL``), done only when the lease may have run out.

**Faults.** A command that fails (refused, reset, timed out, no pooled connection free within
``op_timeout``) raises
:class:`~ssegate.store.StoreUnavailableError`; redis-py retries it once on a fresh connection, which
covers pooled connections made stale by a Redis restart. The pub/sub connection reconnects by
itself with bounded back-off (50 ms doubling to 2 s) and, once back, wakes every waiter so it
re-reads what it may have missed. Waiting for a cancel or for subscribers to leave survives an
outage (the producer must still hear a cancel once Redis is back); ``append``, ``finish``,
``follow`` and the rest fail fast, so in-flight generations end with an error instead of
holding their upstream requests open for an unknown time (see docs/deploy.md).

``redis`` exceptions never leave these modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson

from ._base import (
    FOLLOW_BATCH,
    TERMINAL_EVENTS,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreStatistics,
    StreamGapError,
    StreamInfo,
    StreamStatus,
)
from ._errors import StoreError, StoreUnavailableError, StreamNotFoundError
from ._redis_keys import RedisStoreConfig, alias_key
from ._redis_watch import Watch
from ._redis_writes import RedisWrites, text

__all__ = ["RedisStore", "RedisStoreConfig"]

log = logging.getLogger("ssegate.store.redis")


def _json_or_none(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else None


class RedisStore(RedisWrites, Store):
    """A :class:`~ssegate.store.Store` in Redis, shared by every instance that uses the same
    Redis and ``key_prefix``. Use as ``async with RedisStore(config) as store:``; entering it
    connects (and raises :class:`~ssegate.store.StoreUnavailableError` if Redis can't be reached).
    """

    def __init__(self, config: RedisStoreConfig | None = None) -> None:
        super().__init__(config)
        self._sub_seq = 0
        self._events = 0
        self._followers = 0

    # -- Store: reading (writing: RedisWrites) ------------------------------------------

    async def get(self, stream_id: str) -> StreamInfo:
        """A snapshot of the stream's metadata and its live subscriber count."""
        meta, _, _, subs = self._keys(stream_id)
        result = await self._run("info", [meta, subs], [])
        if result is None:
            raise StreamNotFoundError("no such stream")
        flat, subscribers = result
        h = {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        status = StreamStatus(text(h["status"]))
        cause = text(h["cause"]) if "cause" in h else None
        cancel = text(h["cancel"]) if "cancel" in h else None
        if cause is None and cancel is not None and status is StreamStatus.RUNNING:
            cause = cancel
        return StreamInfo(
            id=stream_id,
            status=status,
            model=text(h.get("model", b"")),
            provider=text(h.get("provider", b"")),
            owner=text(h["owner"]) if "owner" in h else None,
            created=float(h.get("created", 0)),
            finished_at=float(h["finished_at"]) if "finished_at" in h else None,
            last_event_id=int(h.get("last_id", 0)),
            usage=_json_or_none(h.get("usage")),
            error=_json_or_none(h.get("error")),
            cancel_requested=cancel is not None,
            cause=cause,
            subscribers=int(subscribers),
        )

    async def _fetch(
        self, stream_id: str, after: int, count: int
    ) -> tuple[list[StoredEvent], StreamStatus, int, int]:
        """Events after ``after`` (at most ``count``), status, last id and the lease's PTTL,
        read in one ``MULTI``; raises ``StreamNotFoundError`` and ``StreamGapError``."""
        watch = self._watches.get(stream_id)
        if watch is not None:
            await self._flush(watch)  # read what this process appended, too
        meta, events, lease, _ = self._keys(stream_id)
        client = self._client()
        with self._translate():
            async with client.pipeline(transaction=True) as pipe:
                pipe.xrange(events, f"{after + 1}-0", "+", count=max(1, count))
                pipe.hmget(meta, "status", "last_id")
                pipe.pttl(lease)
                entries, (status, last_id), pttl = await pipe.execute()
        if status is None:
            raise self._gone_error()
        last = int(last_id)
        found = [
            StoredEvent.build(int(entry_id.split(b"-", 1)[0]), text(f[b"e"]), text(f[b"d"]))
            for entry_id, f in entries
        ]
        if found and found[0].id != after + 1:
            raise StreamGapError(stream_id, after=after, first_id=found[0].id)
        if found and found[-1].id - found[0].id != len(found) - 1:
            # A hole: events a failover lost (see finish). Up to it; the next read raises.
            found = found[: next(n for n in range(1, len(found)) if found[n].id != after + 1 + n)]
        if not found and last > after:
            raise StreamGapError(stream_id, after=after, first_id=last + 1)
        return found, StreamStatus(text(status)), last, int(pttl)

    async def read(
        self, stream_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The kept events with id > ``after``, at most ``limit`` of them."""
        if after < 0:
            raise ValueError("after must be >= 0")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        if limit == 0:
            await self._fetch(stream_id, after, 1)  # not found and gap, as for any limit
            return []
        result: list[StoredEvent] = []
        while True:
            want = 1000 if limit is None else min(1000, limit - len(result))
            events, _, last, _ = await self._fetch(stream_id, after, want)
            result += events
            if not events or events[-1].id >= last or len(result) == limit:
                return result
            after = events[-1].id

    async def follow_batches(
        self, stream_id: str, after: int = 0, limit: int = FOLLOW_BATCH
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """See :meth:`Store.follow_batches`: from the instance's cache of recent events while
        it has the next one, else from Redis (``XRANGE``), else waiting for the next event."""
        if after < 0:
            raise ValueError("after must be >= 0")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._client()
        watch = await self._acquire(stream_id, data=True)
        self._followers += 1
        try:
            next_id = after + 1
            # A local producer's watch has seen every event: trust it. Otherwise read Redis.
            read_epoch = watch.epoch if watch.local else -1
            while True:
                cached = watch.events(next_id, limit)
                if cached:
                    next_id = cached[-1].id + 1
                    yield cached
                    if cached[-1].event in TERMINAL_EVENTS:
                        return
                    continue
                if self._closed or watch.gone:
                    raise self._gone_error()
                changed = watch.events_changed
                if read_epoch != watch.epoch or next_id <= watch.last_id:
                    epoch = watch.epoch
                    events, status, last, pttl = await self._fetch(
                        stream_id, next_id - 1, min(limit, self.config.cache_events)
                    )
                    read_epoch = epoch
                    watch.last_id = max(watch.last_id, last)
                    if pttl > 0:
                        watch.lease_deadline = time.monotonic() + pttl / 1000
                    if events:  # a terminal event can only be the last
                        next_id = events[-1].id + 1
                        yield events
                        if events[-1].event in TERMINAL_EVENTS:
                            return
                        continue
                    if status.is_terminal:
                        return
                    if pttl == -2:
                        raise ProducerLostError("the stream's producer stopped renewing its lease")
                    continue
                left = watch.lease_deadline - time.monotonic()
                if left <= 0:
                    await self._check_lease(watch)
                    continue
                if watch.local:
                    # The producer is here: no timer per event. Its finish wakes us, whatever
                    # its outcome, and so does the hub's sweep if its lease lapses.
                    await changed.wait()
                    continue
                with anyio.move_on_after(left):
                    await changed.wait()
        finally:
            self._followers -= 1
            with anyio.CancelScope(shield=True):
                await self._release(watch)

    async def _check_lease(self, watch: Watch) -> None:
        """The lease may have run out: read it. Raises ``ProducerLostError`` if it has (and
        the stream is still running), else moves the watch's deadline."""
        meta, _, lease, _ = self._keys(watch.sid)
        client = self._client()
        with self._translate():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hmget(meta, "status", "last_id")
                pipe.pttl(lease)
                (status, last_id), pttl = await pipe.execute()
        if status is None:
            raise self._gone_error()
        watch.last_id = max(watch.last_id, int(last_id))
        if text(status) != StreamStatus.RUNNING.value:
            watch.epoch += 1  # finished meanwhile: read the end from Redis
            return
        if pttl < 0:
            raise ProducerLostError("the stream's producer stopped renewing its lease")
        watch.lease_deadline = time.monotonic() + pttl / 1000

    async def request_cancel(self, stream_id: str, cause: str = "client") -> bool:
        """Record the cancel and publish it to the producer's instance."""
        meta, _, _, _ = self._keys(stream_id)
        control, _ = self._channels(stream_id)
        result = int(await self._run("cancel", [meta], [cause, control]))
        if result == -1:
            raise StreamNotFoundError("no such stream")
        return result == 1

    async def wait_cancel(self, stream_id: str) -> str:
        """Return the cause once cancel is requested; rides out Redis outages."""
        meta, _, _, _ = self._keys(stream_id)
        watch = await self._acquire(stream_id, data=False)
        try:
            attempt = 0
            while True:
                if watch.cancel_cause is not None:
                    return watch.cancel_cause
                if self._closed:
                    raise self._gone_error()
                changed = watch.cancel_changed
                try:
                    client = self._client()
                    with self._translate():
                        cause = await client.hget(meta, "cancel")
                        exists = cause is not None or bool(await client.exists(meta))
                except StoreUnavailableError:
                    await self._pause(attempt)
                    attempt += 1
                    continue
                attempt = 0
                if cause is not None:
                    return text(cause)
                if not exists:
                    if watch.cancel_cause is not None:
                        return watch.cancel_cause
                    raise StreamNotFoundError("no such stream")
                await changed.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(watch)

    @asynccontextmanager
    async def subscriber(self, stream_id: str) -> AsyncIterator[None]:
        """Count one subscriber in (an expiring entry this instance renews), then out."""
        meta, _, _, subs = self._keys(stream_id)
        control, _ = self._channels(stream_id)
        self._sub_seq += 1
        member = f"{self._instance}:{self._sub_seq}"
        result = int(await self._run("subscribe", [meta, subs], [member, self._lease_ms, control]))
        if result == -1:
            raise StreamNotFoundError("no such stream")
        self._subscribers[member] = (stream_id, subs, control)
        try:
            yield
        finally:
            del self._subscribers[member]
            if not self._closed:
                with anyio.move_on_after(self.config.op_timeout, shield=True):
                    try:
                        await self._run("unsubscribe", [subs], [member, control])
                    except StoreError as exc:  # it expires by itself after lease_ttl
                        log.warning("redis store: subscriber not counted out: %s", exc)

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        """Return once no subscriber, on any instance, has been counted for ``grace`` s."""
        meta, _, _, subs = self._keys(stream_id)
        watch = await self._acquire(stream_id, data=False)
        try:
            attempt = 0
            while True:
                if self._closed or watch.gone:
                    raise self._gone_error()
                changed = watch.subs_changed
                try:
                    result = await self._run("subscribers", [meta, subs], [])
                except StoreUnavailableError:
                    await self._pause(attempt)
                    attempt += 1
                    continue
                attempt = 0
                if result is None:
                    raise StreamNotFoundError("no such stream")
                count, next_expiry = int(result[0]), int(result[1])
                if count:
                    # Wake when one of them could expire (its instance may have died).
                    with anyio.move_on_after(max(next_expiry, 1) / 1000 + 0.01):
                        await changed.wait()
                    continue
                with anyio.move_on_after(grace) as scope:
                    await changed.wait()
                if scope.cancelled_caught:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(watch)

    async def renew_lease(self, stream_id: str) -> None:
        """Extend the producer's lease (and the running stream's keys) by ``lease_ttl``."""
        meta, events, lease, _ = self._keys(stream_id)
        result = int(
            await self._run("renew", [meta, events, lease], [self._lease_ms, self._keep_ms])
        )
        if result == -1:
            raise StreamNotFoundError("no such stream")
        watch = self._watches.get(stream_id)
        if watch is not None and watch.local:
            watch.lease_deadline = time.monotonic() + self.lease_ttl

    async def producer_alive(self, stream_id: str) -> bool:
        """Whether the stream is running and its lease key exists."""
        meta, _, lease, _ = self._keys(stream_id)
        client = self._client()
        with self._translate():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "status")
                pipe.exists(lease)
                status, alive = await pipe.execute()
        if status is None:
            raise StreamNotFoundError("no such stream")
        return text(status) == StreamStatus.RUNNING.value and bool(alive)

    async def delete(self, stream_id: str) -> bool:
        """Delete the stream's keys; a running one's producer hears cancel ``deleted``."""
        meta, events, lease, subs = self._keys(stream_id)
        control, _ = self._channels(stream_id)
        result = int(await self._run("delete", [meta, events, lease, subs], [control]))
        watch = self._watches.get(stream_id)
        if result and watch is not None:
            # Don't wait for our own notice to come back through Redis.
            watch.gone = True
            if watch.local and watch.cancel_cause is None:
                watch.cancel_cause = "deleted"
            if watch.local:
                watch.local = False
                self._produced -= 1
                await self._release(watch)
            watch.wake_all()
        return bool(result)

    def statistics(self) -> StoreStatistics:
        """What this instance sees: streams it watches, streams it produces, events it
        appended, its subscribers and followers (sum them over instances for the total)."""
        return StoreStatistics(
            streams=len(self._watches),
            running=self._produced,
            events=self._events,
            subscribers=len(self._subscribers),
            followers=self._followers,
        )

    # -- aliases ---------------------------------------------------------------------------

    async def _kept(self, stream_id: str) -> bool:
        meta, _, _, _ = self._keys(stream_id)
        client = self._client()
        with self._translate():
            return bool(await client.exists(meta))

    async def set_alias(self, alias: str, stream_id: str, *, ttl: float) -> str | None:
        """``SET P{alias}:a <stream id> PX ttl GET``, after checking the stream is kept."""
        if not alias:
            raise ValueError("an alias must not be empty")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        if not await self._kept(stream_id):
            raise StreamNotFoundError("no such stream")
        client = self._client()
        with self._translate():
            previous = await client.set(
                alias_key(self.config.key_prefix, alias),
                stream_id,
                px=max(1, round(ttl * 1000)),
                get=True,
            )
        if previous is None:
            return None
        previous_id = text(previous)
        return previous_id if await self._kept(previous_id) else None

    async def get_alias(self, alias: str) -> str | None:
        """``GET P{alias}:a``, ``None`` once its stream's keys are gone."""
        client = self._client()
        with self._translate():
            raw = await client.get(alias_key(self.config.key_prefix, alias))
        if raw is None:
            return None
        stream_id = text(raw)
        return stream_id if await self._kept(stream_id) else None
