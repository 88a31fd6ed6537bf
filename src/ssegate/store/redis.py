"""The Redis store: streams shared by all gateway instances, on Redis Streams (Redis ≥ 6.2, Valkey).

Keys of stream ``S`` (``P`` is ``key_prefix``; ``{S}`` is a cluster hash tag, so one script's
keys share a slot):

===============  ================================================================================
``P{S}:m``       hash: status, model, provider, owner, created, finished_at, last_id, usage,
                 error, cause, cancel (the requested cancel's cause)
``P{S}:e``       Redis stream: event ``n`` is entry ``n-0`` with fields ``e`` (type), ``d`` (data);
                 capped with ``XADD MAXLEN ~ max_events`` (at least ``max_events`` are kept)
``P{S}:l``       the producer's lease: exists while the producer renews it (``SET PX``)
``P{S}:s``       sorted set of subscriber leases: member = one subscriber, score = its expiry
                 (ms, server clock); renewed by its instance, so a dead instance's subscribers
                 drop out after ``lease_ttl``
``P{S}:d``       pub/sub channel: every appended event, as ``id \\n type \\n data``
``P{S}:c``       pub/sub channel: ``f`` (the terminal event), ``c`` (cancel), ``s`` (subscribers
                 changed), ``x`` (deleted)
===============  ================================================================================

Every write is one Lua script, so it is atomic: ids come from ``HINCRBY last_id`` in the same
script as the ``XADD`` (two instances can never hand out one id twice), a finished stream takes
no event (the status is checked in the script), and ``finish`` appends the terminal event, sets
the status and the TTL in one step. Scripts read the server's clock (``TIME``), so instances'
clocks don't matter. Only commands of Redis ≤ 6.2 are used.

**Following without a connection per follower.** Each instance holds one pub/sub connection.
While something in the process waits on a stream (a follower, the producer's cancel watcher,
the abandon watcher), the instance subscribes to its channels and keeps a *watch*: the last
``cache_events`` events, each built into a :class:`StoredEvent` (and so encoded) once per
instance, shared by all its followers. A follower reads the backlog with ``XRANGE`` and then
waits on the watch; it reads Redis again only when the watch can't answer (it was resubscribed,
or the follower is behind the cache). Events appended by this same instance reach its local
followers directly, without the pub/sub round trip. A producer that dies is noticed by the
followers' lease check (``PTTL``), done only when the lease may have run out.

**Faults.** A command that fails (refused, reset, timed out, no pooled connection free) raises
:class:`~ssegate.StoreUnavailableError`; redis-py retries it once on a fresh connection, which
covers pooled connections made stale by a Redis restart. The pub/sub connection reconnects by
itself with bounded back-off (50 ms doubling to 2 s) and, once back, wakes every waiter so it
re-reads what it may have missed. Waiting for a cancel or for subscribers to leave survives an
outage (the producer must still hear a cancel once Redis is back); ``append``, ``finish``,
``follow`` and the rest fail fast, so in-flight generations end with an error instead of
holding their upstream requests open for an unknown time (see docs/deploy.md).

``redis`` exceptions never leave this module.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from .._errors import StoreError, StoreUnavailableError, StreamNotFoundError
from ._base import (
    FINISH_INPUTS,
    TERMINAL_EVENTS,
    IllegalTransitionError,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreStatistics,
    StreamGapError,
    StreamInfo,
    StreamStatus,
)

__all__ = ["RedisStore", "RedisStoreConfig"]

log = logging.getLogger("ssegate.store.redis")


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    """Where and how a :class:`RedisStore` keeps streams.

    ``url``: ``redis://[[user]:password@]host:port/db``, ``rediss://`` for TLS, or
    ``unix:///path?db=0``. ``key_prefix`` starts every key and channel (several deployments can
    share one Redis). ``max_events`` are kept per stream at least (``XADD MAXLEN ~``); a
    finished stream expires ``finished_ttl`` s after it ends; a producer's lease (and a
    subscriber's) lasts ``lease_ttl`` s. ``max_connections`` bounds the command pool (callers
    wait up to ``op_timeout`` for a free one); ``connect_timeout`` and ``op_timeout`` bound
    connecting and one command. ``cache_events`` recent events are kept per followed stream
    per instance. ``heartbeat``: after that many seconds without a message the pub/sub
    connection is pinged, and dropped if the next period stays silent too.
    """

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ssegate:"
    max_events: int = 100_000
    finished_ttl: float = 600.0
    lease_ttl: float = 10.0
    max_connections: int = 64
    connect_timeout: float = 2.0
    op_timeout: float = 5.0
    cache_events: int = 256
    heartbeat: float = 5.0

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1")
        for name in ("finished_ttl", "lease_ttl", "connect_timeout", "op_timeout", "heartbeat"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 2:
            raise ValueError("max_connections must be at least 2")
        if self.cache_events < 1:
            raise ValueError("cache_events must be at least 1")

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- scripts ---------------------------------------------------------------------------------
# Status codes: -1 = no such stream, -2 = the stream is finished. `TIME` before writes needs
# effects replication, the default since Redis 5; replicate_commands() is called where it
# exists for older or unusually configured servers (it is a no-op on 7+).

_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: meta, lease. ARGV: model, provider, owner, has_owner, lease_ms, keep_ms
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('TIME')
local created = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], 'status', 'running', 'model', ARGV[1], 'provider', ARGV[2],
  'created', created, 'last_id', 0)
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'owner', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return created
"""

# KEYS: meta, events, lease. ARGV: event, data, maxlen, lease_ms, keep_ms, data channel
_APPEND = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'running' then return -2 end
local id = redis.call('HINCRBY', KEYS[1], 'last_id', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'e', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[6], id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return id
"""

# KEYS: meta, events, lease, subs. ARGV: status, data, maxlen, usage, error, cause, ttl_ms,
# control channel
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'running' then return -2 end
local id = redis.call('HINCRBY', KEYS[1], 'last_id', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'e', ARGV[1], 'd', ARGV[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', ARGV[1],
  'finished_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'usage', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'cause', ARGV[6]) end
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[8], 'f\\n' .. id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return id
"""

# KEYS: meta, subs. Returns false, or {flat meta hash, live subscribers}.
_INFO = (
    _PRELUDE
    + """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
return {h, redis.call('ZCOUNT', KEYS[2], '(' .. now_ms(), '+inf')}
"""
)

# KEYS: meta. ARGV: cause, control channel
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'running' then return 0 end
if redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 'c\\n' .. ARGV[1])
end
return 1
"""

# KEYS: meta, events, lease, subs. ARGV: control channel
_DELETE = """
local h = redis.call('HMGET', KEYS[1], 'status', 'cancel')
if not h[1] then return 0 end
local cause = ''
if h[1] == 'running' then cause = h[2] or 'deleted' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[1], 'x\\n' .. cause)
return 1
"""

# KEYS: meta, events, lease. ARGV: lease_ms, keep_ms
_RENEW = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'running' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: meta, subs. ARGV: member, ttl_ms, control channel ('' = don't publish)
_SUBSCRIBE = (
    _PRELUDE
    + """
local keep = redis.call('PTTL', KEYS[1])
if keep == -2 then return -1 end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if keep > 0 then redis.call('PEXPIRE', KEYS[2], keep) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], 's') end
return 1
"""
)

# KEYS: subs. ARGV: member, control channel
_UNSUBSCRIBE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', ARGV[2], 's') end
return 1
"""

# KEYS: meta, subs. Returns false, or {live subscribers, ms until the next one expires or -1}.
_SUBSCRIBERS = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = now_ms()
local n = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local first = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if first[2] then wait = tonumber(first[2]) - now end
return {n, wait}
"""
)


# -- per-stream state in this process ---------------------------------------------------------


class _Watch:
    """What this process knows and waits for about one stream, while anything here waits."""

    __slots__ = (
        "cache",
        "cancel_cause",
        "cancel_changed",
        "channels",
        "confirmed",
        "epoch",
        "events_changed",
        "gone",
        "last_id",
        "lease_deadline",
        "local",
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
        # Bumped whenever notices may have been missed (a (re)subscription took effect):
        # followers then read Redis again.
        self.epoch = 0
        self.confirmed: set[bytes] = set()
        self.cancel_cause: str | None = None
        self.gone = False
        self.events_changed = anyio.Event()
        self.cancel_changed = anyio.Event()
        self.subs_changed = anyio.Event()

    def event(self, event_id: int) -> StoredEvent | None:
        cache = self.cache
        if cache:
            first = cache[0].id
            if first <= event_id <= cache[-1].id:
                return cache[event_id - first]
        return None

    def push(self, event: StoredEvent) -> None:
        cache = self.cache
        if cache and event.id <= cache[-1].id:
            return  # already known (our own event, echoed)
        if cache and event.id != cache[-1].id + 1:
            cache.clear()  # keep the ids consecutive; followers read the hole from Redis
        cache.append(event)
        if event.id > self.last_id:
            self.last_id = event.id
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_or_none(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else None


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore(Store):
    """A :class:`~ssegate.store.Store` in Redis, shared by every instance that uses the same
    Redis and ``key_prefix``. Use as ``async with RedisStore(config) as store:``; entering it
    connects (and raises :class:`~ssegate.StoreUnavailableError` if Redis can't be reached).
    """

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
        self._watches: dict[str, _Watch] = {}
        self._by_channel: dict[bytes, tuple[_Watch, bool]] = {}  # channel -> (watch, is_data)
        self._subscribers: dict[str, tuple[str, bytes, bytes]] = {}  # member -> keys, channel
        self._sub_seq = 0
        self._produced = 0
        self._events = 0
        self._followers = 0
        self._scripts: dict[str, Any] = {}

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
        for name, source in (
            ("create", _CREATE),
            ("append", _APPEND),
            ("finish", _FINISH),
            ("info", _INFO),
            ("cancel", _CANCEL),
            ("delete", _DELETE),
            ("renew", _RENEW),
            ("subscribe", _SUBSCRIBE),
            ("unsubscribe", _UNSUBSCRIBE),
            ("subscribers", _SUBSCRIBERS),
        ):
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
        self._closed = True
        self._closed_event.set()
        for scope in self._bg_scopes:
            scope.cancel()
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
        self._client()
        with self._translate():
            return await self._scripts[name](keys=keys, args=args)

    def _keys(self, sid: str) -> tuple[bytes, bytes, bytes, bytes]:
        base = f"{self.config.key_prefix}{{{sid}}}".encode()
        return base + b":m", base + b":e", base + b":l", base + b":s"

    def _channels(self, sid: str) -> tuple[bytes, bytes]:
        base = f"{self.config.key_prefix}{{{sid}}}".encode()
        return base + b":c", base + b":d"

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

    async def _acquire(self, sid: str, *, data: bool, local: bool = False) -> _Watch:
        watch = self._watches.get(sid)
        if watch is None:
            watch = _Watch(sid, self._channels(sid), self.config.cache_events)
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

    async def _send_subscribe(self, channels: list[bytes], watch: _Watch) -> None:
        pubsub = self._pubsub
        todo = [c for c in channels if c not in watch.confirmed]
        if pubsub is None or not todo:
            return  # the listener subscribes everything watched when it (re)connects
        try:
            await pubsub.subscribe(*todo)
        except (redis_errors.RedisError, OSError):
            pass  # the listener notices the broken connection and resubscribes

    async def _release(self, watch: _Watch) -> None:
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
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
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

    def _note_event(self, watch: _Watch, event_id: int, event: str, data: str) -> None:
        if watch.event(event_id) is not None:
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

    # -- Store ---------------------------------------------------------------------------

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
        """Append a non-terminal event with the next id; renews the lease."""
        if event in TERMINAL_EVENTS:
            raise ValueError(f"{event!r} ends a stream: use finish()")
        if "\n" in data or "\r" in data:
            raise ValueError("event data must be one line")
        if "\n" in event or "\r" in event:
            raise ValueError("event type must not contain CR or LF")
        meta, events, lease, _ = self._keys(stream_id)
        _, data_channel = self._channels(stream_id)
        result = await self._run(
            "append",
            [meta, events, lease],
            [event, data, self.config.max_events, self._lease_ms, self._keep_ms, data_channel],
        )
        stored = self._check_id(result, "append")
        stored_event = StoredEvent.build(stored, event, data)
        self._events += 1
        watch = self._watches.get(stream_id)
        if watch is not None:
            watch.lease_deadline = time.monotonic() + self.lease_ttl
            watch.push(stored_event)
        return stored_event

    def _check_id(self, result: Any, action: str) -> int:
        value = int(result)
        if value == -1:
            raise StreamNotFoundError("no such stream")
        if value == -2:
            raise IllegalTransitionError(f"a finished stream cannot take {action}")
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
                self._produced -= 1
                with anyio.CancelScope(shield=True):
                    await self._release(watch)

    async def get(self, stream_id: str) -> StreamInfo:
        """A snapshot of the stream's metadata and its live subscriber count."""
        meta, _, _, subs = self._keys(stream_id)
        result = await self._run("info", [meta, subs], [])
        if result is None:
            raise StreamNotFoundError("no such stream")
        flat, subscribers = result
        h = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        status = StreamStatus(_text(h["status"]))
        cause = _text(h["cause"]) if "cause" in h else None
        cancel = _text(h["cancel"]) if "cancel" in h else None
        if cause is None and cancel is not None and status is StreamStatus.RUNNING:
            cause = cancel
        return StreamInfo(
            id=stream_id,
            status=status,
            model=_text(h.get("model", b"")),
            provider=_text(h.get("provider", b"")),
            owner=_text(h["owner"]) if "owner" in h else None,
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
            StoredEvent.build(int(entry_id.split(b"-", 1)[0]), _text(f[b"e"]), _text(f[b"d"]))
            for entry_id, f in entries
        ]
        if found and found[0].id != after + 1:
            raise StreamGapError(stream_id, after=after, first_id=found[0].id)
        if not found and last > after:
            raise StreamGapError(stream_id, after=after, first_id=last + 1)
        return found, StreamStatus(_text(status)), last, int(pttl)

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

    async def follow(self, stream_id: str, after: int = 0) -> AsyncGenerator[StoredEvent, None]:
        """Yield events with id > ``after``, then live ones, until the terminal event."""
        if after < 0:
            raise ValueError("after must be >= 0")
        self._client()
        watch = await self._acquire(stream_id, data=True)
        self._followers += 1
        try:
            next_id = after + 1
            # A local producer's watch has seen every event: trust it. Otherwise read Redis.
            read_epoch = watch.epoch if watch.local else -1
            while True:
                cached = watch.event(next_id)
                if cached is not None:
                    yield cached
                    next_id += 1
                    if cached.event in TERMINAL_EVENTS:
                        return
                    continue
                if self._closed or watch.gone:
                    raise self._gone_error()
                changed = watch.events_changed
                if read_epoch != watch.epoch or next_id <= watch.last_id:
                    epoch = watch.epoch
                    events, status, last, pttl = await self._fetch(
                        stream_id, next_id - 1, self.config.cache_events
                    )
                    read_epoch = epoch
                    watch.last_id = max(watch.last_id, last)
                    if pttl > 0:
                        watch.lease_deadline = time.monotonic() + pttl / 1000
                    for event in events:
                        yield event
                        next_id = event.id + 1
                        if event.event in TERMINAL_EVENTS:
                            return
                    if events:
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
                with anyio.move_on_after(left):
                    await changed.wait()
        finally:
            self._followers -= 1
            with anyio.CancelScope(shield=True):
                await self._release(watch)

    async def _check_lease(self, watch: _Watch) -> None:
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
        if _text(status) != StreamStatus.RUNNING.value:
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
                    return _text(cause)
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
        return _text(status) == StreamStatus.RUNNING.value and bool(alive)

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
