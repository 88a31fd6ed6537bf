"""Where a :class:`~ssegate.store.redis.RedisStore` keeps things: its config, and the keys and
channels of one stream.

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

An alias ``A`` (:meth:`~ssegate.store.Store.set_alias`, e.g. a chat id) is the string key
``P{A}:a`` holding its stream's id, with a TTL; hash-tagged by the alias, since it is looked up
before its stream is known.

Every instance also listens on ``P_instance:<random id>``, its own channel: the pub/sub
connection counts as up once that subscription is confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RedisStoreConfig", "alias_key", "stream_channels", "stream_keys"]


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    """Where and how a :class:`~ssegate.store.redis.RedisStore` keeps streams.

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


def stream_keys(key_prefix: str, sid: str) -> tuple[bytes, bytes, bytes, bytes]:
    """The keys of stream ``sid``: meta, events, lease, subscribers."""
    base = f"{key_prefix}{{{sid}}}".encode()
    return base + b":m", base + b":e", base + b":l", base + b":s"


def stream_channels(key_prefix: str, sid: str) -> tuple[bytes, bytes]:
    """The pub/sub channels of stream ``sid``: control, data."""
    base = f"{key_prefix}{{{sid}}}".encode()
    return base + b":c", base + b":d"


def alias_key(key_prefix: str, alias: str) -> bytes:
    """The key of alias ``alias``."""
    return f"{key_prefix}{{{alias}}}:a".encode()
