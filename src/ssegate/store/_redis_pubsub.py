"""The connections a :class:`~ssegate.store.redis.RedisStore` shares among all its streams.

:class:`RedisHub` holds the command pool, the one pub/sub connection (it reconnects by itself
with bounded back-off and resubscribes), the :class:`Watch` of every stream something in this
process waits on, and the renewal of this instance's subscriber leases. It also turns redis
and socket errors into :class:`~ssegate.store.StoreUnavailableError`: ``redis`` exceptions never
leave the store's modules. :class:`~ssegate.store.redis.RedisStore` builds the
:class:`~ssegate.store.Store` operations on it.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from ._base import TERMINAL_EVENTS, StoredEvent
from ._errors import StoreError, StoreUnavailableError, StreamNotFoundError
from ._redis_cluster import (
    ClusterScriptWriter,
    ShardListeners,
    connect_cluster,
)
from ._redis_keys import RedisStoreConfig, stream_channels, stream_keys
from ._redis_scripts import APPEND_KEEPS_LEASE, script_sources
from ._redis_watch import Watch
from ._redis_writer import ScriptWriter

__all__ = ["RedisHub"]

log = logging.getLogger("ssegate.store.redis")


#: Errors that say Redis can't serve now, not that the command is wrong: a full or loading
#: server, a replica, a cluster that is down or moving a slot.
_UNAVAILABLE = (
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.BusyLoadingError,
)
_UNAVAILABLE_REPLIES = ("OOM", "LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")

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
        self._redis: Redis | RedisCluster | None = None
        self._shards: ShardListeners | None = None  # on a cluster: a pub/sub per master
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
        writer = ClusterScriptWriter if cfg.cluster else ScriptWriter
        self._writer = writer(self._client, self._scripts, self._translate, timeout=cfg.op_timeout)

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
        if cfg.cluster:
            cluster = connect_cluster(cfg)
            self._redis = cluster
            self._shards = ShardListeners(
                cfg,
                cluster,
                self._own_channel,
                self._read_messages,
                lambda: list(self._by_channel),
                self._lost,
            )
        else:
            pool = BlockingConnectionPool.from_url(
                cfg.url,
                max_connections=cfg.max_connections,
                timeout=cfg.op_timeout,
                socket_timeout=cfg.op_timeout,
                # One retry on a fresh connection, only for connection errors: a pooled
                # connection made stale by a Redis restart. A timed-out command is not retried
                # (it may have run, and an append must not run twice).
                retry=Retry(
                    ExponentialBackoff(cap=0.05, base=0.01), 1, (redis_errors.ConnectionError,)
                ),
                **common,
            )
            self._redis = Redis(connection_pool=pool)
            # The pub/sub connection reconnects under our control (and resyncs), not
            # redis-py's.
            self._pubsub_pool = ConnectionPool.from_url(
                cfg.url, max_connections=4, retry=Retry(NoBackoff(), 0), **common
            )
        for name, source in script_sources(sharded=cfg.cluster).items():
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
        tg.start_soon(self._background, self._wake_lapsed, name="ssegate redis lapsed leases")
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
                if isinstance(self._redis, RedisCluster):
                    await self._redis.aclose()
                else:
                    await self._redis.aclose(close_connection_pool=True)
            except (redis_errors.RedisError, OSError, redis_errors.RedisClusterException):
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
            if isinstance(exc, _UNAVAILABLE) or any(c in str(exc) for c in _UNAVAILABLE_REPLIES):
                raise StoreUnavailableError(f"{what}: {exc}") from None
            raise StoreError(f"Redis refused a command: {exc}") from None
        except (redis_errors.RedisError, OSError, redis_errors.RedisClusterException) as exc:
            if self._closed:
                raise StoreUnavailableError("the store is closed") from None
            raise StoreUnavailableError(f"{what}: {exc or type(exc).__name__}") from None

    def _client(self) -> Redis | RedisCluster:
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
        todo = [c for c in channels if c not in watch.confirmed]
        if not todo:
            return
        try:
            if self._shards is not None:
                await self._shards.subscribe(todo)
            elif self._pubsub is not None:
                await self._pubsub.subscribe(*todo)
            # else the listener subscribes everything watched when it (re)connects
        except (redis_errors.RedisError, OSError):
            pass  # the listener notices the broken connection and resubscribes

    async def _release(self, watch: Watch) -> None:
        watch.refs -= 1
        if watch.refs > 0 or self._watches.get(watch.sid) is not watch:
            return
        del self._watches[watch.sid]
        channels = [c for c in watch.channels if self._by_channel.pop(c, None) is not None]
        if not channels or self._closed:
            return
        with anyio.move_on_after(1.0, shield=True):
            try:
                if self._shards is not None:
                    await self._shards.unsubscribe(channels)
                elif self._pubsub is not None:
                    await self._pubsub.unsubscribe(*channels)
            except (redis_errors.RedisError, OSError):
                pass

    def _lost(self) -> None:
        """The pub/sub connection went down: whatever it would have said may be missed."""
        if self._connected.is_set():
            self._connected = anyio.Event()
        for watch in list(self._watches.values()):
            watch.confirmed.clear()
            watch.epoch += 1
            watch.wake_all()

    async def _listen(self) -> None:
        if self._shards is not None:
            await self._shards.run(self._closed_event)
            return
        while not self._closed:
            assert self._pubsub_pool is not None
            pubsub = PubSub(self._pubsub_pool)
            try:
                await pubsub.subscribe(self._own_channel)
                self._pubsub = pubsub
                watched = list(self._by_channel)
                if watched:
                    await pubsub.subscribe(*watched)
                await self._read_messages(pubsub, self._own_channel)
            except (redis_errors.RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("redis store: pub/sub connection lost (%s); reconnecting", exc)
                elif self._listen_attempt == 0:
                    log.warning("redis store: cannot connect for pub/sub (%s); retrying", exc)
            finally:
                self._pubsub = None
                self._lost()
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

    async def _read_messages(self, pubsub: PubSub, own_channel: bytes) -> None:
        """Handle one pub/sub connection's messages until it fails; ``own_channel``'s
        confirmation says it is up. On a cluster the connection is one master's, and the
        messages are sharded ones (``smessage``, ``ssubscribe``)."""
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
            if kind in ("message", "smessage"):
                self._dispatch(channel, message["data"])
            elif kind == "sunsubscribe" and channel in self._by_channel:
                # Not asked for: the channel's slot moved to another master.
                raise redis_errors.ConnectionError("a watched channel's slot moved")
            elif kind in ("subscribe", "ssubscribe"):
                if channel == own_channel:
                    if self._listen_attempt:
                        log.info("redis store: pub/sub reconnected to %s", self.config.safe_url)
                    self._listen_attempt = 0
                    self._connected.set()
                    continue
                entry = self._by_channel.get(channel)
                if entry is None:
                    continue
                watch, _ = entry
                watch.confirmed.add(channel)
                # Whatever was published before this took effect was missed: waiters re-read.
                # A local producer's followers never need to (its events never come through
                # pub/sub; a lost connection bumps the epoch itself), which keeps them off
                # Redis entirely, even when a follower's subscribe raced the producer's.
                watch.wake_cancel()
                watch.wake_subs()
                if not watch.local:
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
        # A producer here caches its own events, in order, as Redis confirms them; an echo
        # may come first (the terminal event's, on the control channel, can overtake the
        # replies to the appends before it) and would leave a hole in the cache.
        if watch.local or watch.has(event_id):
            return
        if event not in TERMINAL_EVENTS:
            # An append keeps the lease: for two thirds of lease_ttl at least.
            watch.lease_deadline = time.monotonic() + self.lease_ttl * APPEND_KEEPS_LEASE
        watch.push(StoredEvent.build(event_id, event, data))

    async def _wake_lapsed(self) -> None:
        """Wake the followers of a producer here whose lease has lapsed (its job stopped
        renewing it): they wait without a timer per event, so this sweep is what lets them
        notice (within a quarter of ``lease_ttl``) and end with ``producer_lost``."""
        while True:
            await anyio.sleep(self.lease_ttl / 4)
            now = time.monotonic()
            for watch in list(self._watches.values()):
                if watch.local and watch.lease_deadline < now:
                    watch.wake_events()

    # -- subscriber leases ---------------------------------------------------------------

    async def _renew_subscribers(self) -> None:
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            entries = list(self._subscribers.items())
            if not entries or self._redis is None:
                continue
            calls = []
            for member, (sid, _, _) in entries:
                meta, _, _, subs = self._keys(sid)
                calls.append(("subscribe", [meta, subs], [member, self._lease_ms, ""]))
            failed = [r for r in await self._writer.call_many(calls) if isinstance(r, StoreError)]
            if failed:
                log.warning(
                    "redis store: %d subscriber leases not renewed: %s", len(failed), failed[0]
                )
