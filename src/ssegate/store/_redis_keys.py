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

__all__ = [
    "RedisStoreConfig",
    "alias_key",
    "cluster_nodes",
    "stream_channels",
    "stream_keys",
]


@dataclass(frozen=True, slots=True)
class RedisStoreConfig:
    """Where and how a :class:`~ssegate.store.redis.RedisStore` keeps streams.

    ``url``: ``redis://[[user]:password@]host:port/db``, ``rediss://`` for TLS, or
    ``unix:///path?db=0``; a Redis Cluster (Redis ≥ 7, or Valkey) is
    ``redis+cluster://[[user]:password@]host:port[,host:port…]`` (``rediss+cluster://`` for
    TLS): any reachable node will do, the rest are discovered. ``key_prefix`` starts every key
    and channel (several deployments can share one Redis). ``max_events`` are kept per stream at
    least (``XADD MAXLEN ~``); a finished stream expires ``finished_ttl`` s after it ends; a
    producer's lease (and a subscriber's) lasts ``lease_ttl`` s. ``max_connections`` bounds the
    command pool (callers wait up to ``op_timeout`` for a free one); ``connect_timeout`` and
    ``op_timeout`` bound connecting and one command. ``cache_events`` recent events are kept per
    followed stream per instance. ``heartbeat``: after that many seconds without a message the
    pub/sub connection is pinged, and dropped if the next period stays silent too.
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
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
            raise ValueError(
                "url must start with redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://"
            )
        if self.cluster:
            cluster_nodes(self.url)  # raises ValueError for a bad host list
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
    def cluster(self) -> bool:
        """Whether ``url`` names a Redis Cluster."""
        return urlsplit(self.url).scheme.endswith("+cluster")

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        parts = urlsplit(self.url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if not at or ":" not in userinfo:
            return self.url
        user = userinfo.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs a ``redis+cluster://`` URL names (port 6379 if left out)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a host:port in the cluster URL: {item.strip()!r}")
        nodes.append((host, int(port)))
    return nodes


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
