"""The Redis store's writes: ``create``, ``append`` and ``finish``, and the producer's appends
in flight.

The instance that creates a stream is its producer: its appends get their ids at once and go
out with the writer's next batch, many as one script call, without waiting for Redis (see
:meth:`RedisWrites.append`); everything else waits for its script's reply.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import orjson

from ._base import (
    FINISH_INPUTS,
    TERMINAL_EVENTS,
    IllegalTransitionError,
    StoredEvent,
    StreamInfo,
    StreamStatus,
)
from ._errors import StoreError, StreamNotFoundError
from ._redis_pubsub import RedisHub
from ._redis_scripts import APPEND_KEEPS_LEASE
from ._redis_watch import Watch

__all__ = ["RedisWrites", "text"]

log = logging.getLogger("ssegate.store.redis")

#: The most appends of one stream in flight (unanswered by Redis) before its producer waits.
_APPEND_WINDOW = 256


def text(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisWrites(RedisHub):
    """The writing half of :class:`~ssegate.store.redis.RedisStore`."""

    _events: int  # events written by this instance (statistics)

    async def create(
        self, stream_id: str, *, model: str, provider: str, owner: str | None = None
    ) -> StreamInfo:
        """Create a running stream with a fresh lease; ``ValueError`` if the id exists."""
        meta, _, lease, _ = self._keys(stream_id)
        created = await self._run(
            "create",
            [meta, lease],
            [
                model,
                provider,
                owner or "",
                "1" if owner is not None else "0",
                self._lease_ms,
                self._keep_ms,
            ],
        )
        if created is None:
            raise ValueError("a stream with this id exists")
        # The producer watches its stream from the start: its events go through the watch,
        # and cancel notices reach it.
        await self._acquire(stream_id, data=False, local=True)
        return StreamInfo(
            id=stream_id,
            status=StreamStatus.RUNNING,
            model=model,
            provider=provider,
            owner=owner,
            created=float(created),
        )

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        """Append a non-terminal event with the next id; the lease then holds for at least
        two thirds of ``lease_ttl`` (the script renews it once a third has passed).

        The producer of a stream created here does not wait for Redis: its event gets the
        next id at once and goes out with the writer's next batch, so a producer appends many
        events per round trip and they reach Redis as one script call. Followers here see an
        event once Redis has it. The script checks that the id is the one Redis gives (one
        producer per stream); an append that fails fails the producer's next call, and
        reading the stream here waits until what is in flight is in Redis.
        """
        if event in TERMINAL_EVENTS:
            raise ValueError(f"{event!r} ends a stream: use finish()")
        if "\n" in data or "\r" in data:
            raise ValueError("event data must be one line")
        if "\n" in event or "\r" in event:
            raise ValueError("event type must not contain CR or LF")
        meta, events, lease, _ = self._keys(stream_id)
        _, data_channel = self._channels(stream_id)
        self._client()
        args: list[Any] = [self.config.max_events, self._lease_ms, self._keep_ms, data_channel]
        watch = self._watches.get(stream_id)
        if watch is not None and watch.local:
            return await self._append_behind(watch, [meta, events, lease], args, event, data)
        result = await self._writer.append([meta, events, lease], [*args, 0], event, data)
        stored = StoredEvent.build(self._check_id(result, "append"), event, data)
        self._events += 1
        if watch is not None:
            watch.lease_deadline = time.monotonic() + self.lease_ttl * APPEND_KEEPS_LEASE
            watch.push(stored)
        return stored

    async def _append_behind(
        self, watch: Watch, keys: list[bytes], args: list[Any], event: str, data: str
    ) -> StoredEvent:
        if watch.pending >= _APPEND_WINDOW:
            await self._flush(watch, _APPEND_WINDOW // 2)
        if watch.append_error is not None:
            raise watch.append_error
        stored = StoredEvent.build(watch.next_append, event, data)
        self._writer.append_nowait(keys, [*args, stored.id], event, data, self, (watch, stored))
        watch.next_append += 1
        watch.pending += 1
        self._events += 1
        return stored

    def appended(self, calls: list[Any]) -> None:
        """The writer's news of appends that :meth:`_append_behind` queued, in order: each
        event goes to its followers here, or its error waits for the producer's next call."""
        touched: dict[str, Watch] = {}
        deadline = time.monotonic() + self.lease_ttl * APPEND_KEEPS_LEASE
        for call in calls:
            watch, stored = call.context
            watch.pending -= 1
            touched[watch.sid] = watch
            error = call.error
            if error is None:
                try:
                    self._check_id(call.result, "append")
                except StoreError as exc:
                    error = exc
            if error is not None:
                if watch.append_error is None:
                    log.warning("stream %s: an append failed: %s", watch.sid, error)
                    watch.append_error = error
            elif not watch.gone:
                watch.lease_deadline = deadline
                watch.push(stored, wake=False)
        for watch in touched.values():
            watch.wake_events()
            if watch.flushed is not None and watch.pending <= watch.flushed_at:
                watch.flushed.set()
                watch.flushed = None

    async def _flush(self, watch: Watch, left: int = 0) -> None:
        """Until at most ``left`` appends for ``watch``'s stream are in flight (none: Redis
        has every event appended here)."""
        while watch.pending > left:
            if watch.flushed is None or watch.flushed_at > left:
                if watch.flushed is not None:
                    watch.flushed.set()  # its waiters look again, at their own bound
                watch.flushed = anyio.Event()
                watch.flushed_at = left
            await watch.flushed.wait()

    def _check_id(self, result: Any, action: str) -> int:
        value = int(result)
        if value == -1:
            raise StreamNotFoundError("no such stream")
        if value == -2:
            raise IllegalTransitionError(f"a finished stream cannot take {action}")
        if value == -3:
            raise StoreError(
                f"the stream's events went out of step ({action}): another writer appended"
            )
        return value

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
        """Append the terminal event and set the status (and the TTL) in one script."""
        if FINISH_INPUTS.get(status) is None:
            raise ValueError(f"{status.value} is not a terminal status")
        if "\n" in data or "\r" in data:
            raise ValueError("event data must be one line")
        meta, events, lease, subs = self._keys(stream_id)
        control, _ = self._channels(stream_id)
        # The highest id heard of here (for the producer: acknowledged by Redis): after a
        # failover that lost events, the terminal event comes after them, never in their place.
        seen = self._watches.get(stream_id)
        try:
            result = await self._run(
                "finish",
                [meta, events, lease, subs],
                [
                    status.value,
                    data,
                    self.config.max_events,
                    orjson.dumps(usage) if usage is not None else b"",
                    orjson.dumps(error) if error is not None else b"",
                    cause or "",
                    self._ttl_ms,
                    control,
                    seen.last_id if seen is not None else 0,
                ],
            )
            event_id = self._check_id(result, status.value)
            stored = StoredEvent.build(event_id, status.value, data)
            self._events += 1
            watch = self._watches.get(stream_id)
            if watch is not None:
                watch.push(stored)
            return stored
        finally:
            # Whatever the outcome, the producer is done with the stream: drop its hold
            # (taken in create()), or a producer whose finish failed would pin it forever.
            watch = self._watches.get(stream_id)
            if watch is not None and watch.local:
                watch.local = False
                watch.wake_events()  # its followers here watch the lease from now on
                self._produced -= 1
                with anyio.CancelScope(shield=True):
                    await self._release(watch)
