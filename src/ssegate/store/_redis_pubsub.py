"""The connections a :class:`~ssegate.store.redis.RedisStore` shares among all its streams.

:class:`RedisHub` holds the command pool, the one pub/sub connection (it reconnects by itself
with bounded back-off and resubscribes), the :class:`Watch` of every stream something in this
process waits on, and the renewal of this instance's subscriber leases. It also turns redis
and socket errors into :class:`~ssegate.store.StoreUnavailableError`: ``redis`` exceptions never
leave the store's modules. :class:`~ssegate.store.redis.RedisStore` builds the
:class:`~ssegate.store.Store` operations on it.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from ._base import TERMINAL_EVENTS, StoredEvent
from ._errors import StoreError, StoreUnavailableError, StreamNotFoundError
from ._redis_keys import RedisStoreConfig, stream_channels, stream_keys
from ._redis_scripts import SCRIPTS
from ._redis_writer import ScriptWriter

__all__ = ["RedisHub", "Watch"]

log = logging.getLogger("ssegate.store.redis")


# -- per-stream state in this process ---------------------------------------------------------


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


#: Seconds ``aclose`` waits for the writer to send what is queued.
_FLUSH_ON_CLOSE = 5.0


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisHub:
    """The connections, pub/sub watches and background loops of one store instance; enter it
    to connect (``StoreUnavailableError`` if Redis can't be reached)."""

    def __init__(self, config: RedisStoreConfig | None = None) -> None:
        self.config = config if config is not None else RedisStoreConfig()
        self.lease_ttl = self.config.lease_ttl
        cfg = self.config
        self._lease_ms = _ms(cfg.lease_ttl)
        # A running stream's keys outlive a dead producer by finished_ttl, then go.
        self._keep_ms = _ms(cfg.lease_ttl + cfg.finished_ttl)
        self._ttl_ms = _ms(cfg.finished_ttl)
        self._instance = secrets.token_hex(6)
        self._own_channel = f"{cfg.key_prefix}_instance:{self._instance}".encode()
        self._redis: Redis | None = None
        self._pubsub_pool: ConnectionPool | None = None
        self._pubsub: PubSub | None = None
        self._tg: TaskGroup | None = None
        self._bg_scopes: list[anyio.CancelScope] = []
        self._opened = False
        self._closed = False
        self._closed_event = anyio.Event()
        self._connected = anyio.Event()  # set while the pub/sub connection is up
        self._listen_attempt = 0
        self._watches: dict[str, Watch] = {}
        self._by_channel: dict[bytes, tuple[Watch, bool]] = {}  # channel -> (watch, is_data)
        self._subscribers: dict[str, tuple[str, bytes, bytes]] = {}  # member -> keys, channel
        self._produced = 0
        self._scripts: dict[str, Any] = {}
        # Every script call goes through one pipelined writer (see _redis_writer).
        self._writer = ScriptWriter(self._client, self._scripts, self._translate)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._opened:
            raise RuntimeError("a RedisStore can be entered once")
        self._opened = True
        cfg = self.config
        common: dict[str, Any] = {
            "socket_connect_timeout": cfg.connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": 0,
        }
        pool = BlockingConnectionPool.from_url(
            cfg.url,
            max_connections=cfg.max_connections,
            timeout=cfg.op_timeout,
            socket_timeout=cfg.op_timeout,
            # One retry on a fresh connection, only for connection errors: a pooled connection
            # made stale by a Redis restart. A timed-out command is not retried (it may have
            # run, and an append must not run twice).
            retry=Retry(
                ExponentialBackoff(cap=0.05, base=0.01), 1, (redis_errors.ConnectionError,)
            ),
            **common,
        )
        self._redis = Redis(connection_pool=pool)
        # The pub/sub connection reconnects under our control (and resyncs), not redis-py's.
        self._pubsub_pool = ConnectionPool.from_url(
            cfg.url, max_connections=4, retry=Retry(NoBackoff(), 0), **common
        )
        for name, source in SCRIPTS.items():
            self._scripts[name] = self._redis.register_script(source)
        try:
            with self._translate(f"cannot reach Redis at {cfg.safe_url}"):
                with anyio.fail_after(cfg.connect_timeout + cfg.op_timeout):
                    await self._redis.ping()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._disconnect()
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._background, self._writer.run, name="ssegate redis writer")
        tg.start_soon(self._background, self._listen, name="ssegate redis pub/sub")
        tg.start_soon(self._background, self._renew_subscribers, name="ssegate redis renewals")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Disconnect; waiting followers and waiters get ``StoreUnavailableError``."""
        if self._closed:
            return
        # Appends nobody awaited (a producer's, see RedisStore.append) go out first.
        with anyio.move_on_after(_FLUSH_ON_CLOSE, shield=True):
            await self._writer.drained()
        self._closed = True
        self._closed_event.set()
        for scope in self._bg_scopes:
            scope.cancel()
        self._writer.stop(StoreUnavailableError("the store is closed"))
        for watch in list(self._watches.values()):
            watch.wake_all()
        with anyio.CancelScope(shield=True):
            await self._disconnect()

    async def _disconnect(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose(close_connection_pool=True)
            except (redis_errors.RedisError, OSError):
                pass
        if self._pubsub_pool is not None:
            try:
                await self._pubsub_pool.disconnect()
            except (redis_errors.RedisError, OSError):
                pass

    async def _background(self, target: Any) -> None:
        """Run a background loop until :meth:`aclose`; its failure is logged, never raised
        (that would cancel the code running inside ``async with store``)."""
        with anyio.CancelScope() as scope:
            self._bg_scopes.append(scope)
            if self._closed:
                scope.cancel()
            try:
                await target()
            except Exception:
                log.exception("redis store: background task failed")

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _translate(self, what: str = "Redis is unavailable") -> Iterator[None]:
        """Turn redis and socket errors into ``StoreUnavailableError`` (``StoreError`` for a
        server-side error: a bug, a full Redis or a wrong server)."""
        try:
            yield
        except redis_errors.ResponseError as exc:
            if "OOM" in str(exc) or "LOADING" in str(exc) or "READONLY" in str(exc):
                raise StoreUnavailableError(f"{what}: {exc}") from None
            raise StoreError(f"Redis refused a command: {exc}") from None
        except (redis_errors.RedisError, OSError) as exc:
            if self._closed:
                raise StoreUnavailableError("the store is closed") from None
            raise StoreUnavailableError(f"{what}: {exc or type(exc).__name__}") from None

    def _client(self) -> Redis:
        if self._closed or self._redis is None:
            raise StoreUnavailableError(
                "the store is closed" if self._closed else "the store is not open"
            )
        return self._redis

    async def _run(self, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run a script in the writer's next batch (``StoreError`` as ``_translate`` says)."""
        self._client()
        return await self._writer.call(name, keys, args)

    def _keys(self, sid: str) -> tuple[bytes, bytes, bytes, bytes]:
        return stream_keys(self.config.key_prefix, sid)

    def _channels(self, sid: str) -> tuple[bytes, bytes]:
        return stream_channels(self.config.key_prefix, sid)

    def _gone_error(self) -> StoreError:
        if self._closed:
            return StoreUnavailableError("the store is closed")
        return StreamNotFoundError("no such stream")

    async def _pause(self, attempt: int) -> None:
        """Back off before retrying (50 ms doubling to 2 s); ends early if the store closes."""
        with anyio.move_on_after(min(2.0, 0.05 * 2**attempt)):
            await self._closed_event.wait()
        if self._closed:
            raise StoreUnavailableError("the store is closed")

    # -- watches (pub/sub) ---------------------------------------------------------------

    async def _acquire(self, sid: str, *, data: bool, local: bool = False) -> Watch:
        watch = self._watches.get(sid)
        if watch is None:
            watch = Watch(sid, self._channels(sid), self.config.cache_events)
            self._watches[sid] = watch
            self._by_channel[watch.channels[0]] = (watch, False)
        watch.refs += 1
        if local:
            watch.local = True
            watch.lease_deadline = time.monotonic() + self.lease_ttl
            self._produced += 1
        wanted = [watch.channels[0]]
        if data and not watch.local and watch.channels[1] not in self._by_channel:
            self._by_channel[watch.channels[1]] = (watch, True)
            wanted.append(watch.channels[1])
        await self._send_subscribe(wanted, watch)
        return watch

    async def _send_subscribe(self, channels: list[bytes], watch: Watch) -> None:
        pubsub = self._pubsub
        todo = [c for c in channels if c not in watch.confirmed]
        if pubsub is None or not todo:
            return  # the listener subscribes everything watched when it (re)connects
        try:
            await pubsub.subscribe(*todo)
        except (redis_errors.RedisError, OSError):
            pass  # the listener notices the broken connection and resubscribes

    async def _release(self, watch: Watch) -> None:
        watch.refs -= 1
        if watch.refs > 0 or self._watches.get(watch.sid) is not watch:
            return
        del self._watches[watch.sid]
        channels = [c for c in watch.channels if self._by_channel.pop(c, None) is not None]
        pubsub = self._pubsub
        if pubsub is not None and channels and not self._closed:
            with anyio.move_on_after(1.0, shield=True):
                try:
                    await pubsub.unsubscribe(*channels)
                except (redis_errors.RedisError, OSError):
                    pass

    async def _listen(self) -> None:
        while not self._closed:
            assert self._pubsub_pool is not None
            pubsub = PubSub(self._pubsub_pool)
            try:
                await pubsub.subscribe(self._own_channel)
                self._pubsub = pubsub
                watched = list(self._by_channel)
                if watched:
                    await pubsub.subscribe(*watched)
                await self._read_messages(pubsub)
            except (redis_errors.RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("redis store: pub/sub connection lost (%s); reconnecting", exc)
                elif self._listen_attempt == 0:
                    log.warning("redis store: cannot connect for pub/sub (%s); retrying", exc)
            finally:
                self._pubsub = None
                if self._connected.is_set():
                    self._connected = anyio.Event()
                for watch in list(self._watches.values()):
                    watch.confirmed.clear()
                    watch.epoch += 1
                    watch.wake_all()
                with anyio.CancelScope(shield=True):
                    try:
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed in redis >= 8
                    except (redis_errors.RedisError, OSError):
                        pass
            if self._closed:
                return
            with anyio.move_on_after(min(2.0, 0.05 * 2**self._listen_attempt)):
                await self._closed_event.wait()
            self._listen_attempt = min(self._listen_attempt + 1, 6)

    async def _read_messages(self, pubsub: PubSub) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self.config.heartbeat)
            if message is None:
                if pinged:
                    raise redis_errors.ConnectionError("the pub/sub connection went silent")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            channel = message.get("channel")
            if kind == "message":
                self._dispatch(channel, message["data"])
            elif kind == "subscribe":
                if channel == self._own_channel:
                    if self._listen_attempt:
                        log.info("redis store: pub/sub reconnected to %s", self.config.safe_url)
                    self._listen_attempt = 0
                    self._connected.set()
                    continue
                entry = self._by_channel.get(channel)
                if entry is None:
                    continue
                watch, _ = entry
                first = not watch.confirmed
                watch.confirmed.add(channel)
                # Whatever was published before this took effect was missed: waiters re-read.
                # A local producer's followers need no re-read at its first subscription (its
                # events never come through pub/sub), which keeps them off Redis entirely.
                watch.wake_cancel()
                watch.wake_subs()
                if not (first and watch.local):
                    watch.epoch += 1
                    watch.wake_events()

    def _dispatch(self, channel: Any, payload: Any) -> None:
        entry = self._by_channel.get(channel)
        if entry is None:
            return
        watch, is_data = entry
        if is_data:
            raw_id, event, data = bytes(payload).split(b"\n", 2)
            self._note_event(watch, int(raw_id), event.decode(), data.decode())
            return
        kind, _, rest = bytes(payload).partition(b"\n")
        if kind == b"f":
            raw_id, event, data = rest.split(b"\n", 2)
            self._note_event(watch, int(raw_id), event.decode(), data.decode())
        elif kind == b"c":
            if watch.cancel_cause is None:
                watch.cancel_cause = rest.decode()
            watch.wake_cancel()
        elif kind == b"s":
            watch.wake_subs()
        elif kind == b"x":
            watch.gone = True
            if rest and watch.cancel_cause is None:
                watch.cancel_cause = rest.decode()
            watch.wake_all()

    def _note_event(self, watch: Watch, event_id: int, event: str, data: str) -> None:
        if watch.has(event_id):
            return
        if event not in TERMINAL_EVENTS:
            watch.lease_deadline = time.monotonic() + self.lease_ttl  # an append renews it
        watch.push(StoredEvent.build(event_id, event, data))

    # -- subscriber leases ---------------------------------------------------------------

    async def _renew_subscribers(self) -> None:
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            entries = list(self._subscribers.items())
            if not entries or self._redis is None:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for member, (sid, _, _) in entries:
                        meta, _, _, subs = self._keys(sid)
                        await self._scripts["subscribe"](
                            keys=[meta, subs], args=[member, self._lease_ms, ""], client=pipe
                        )
                    await pipe.execute(raise_on_error=False)
            except (redis_errors.RedisError, OSError) as exc:
                log.warning("redis store: subscriber leases not renewed: %s", exc)
