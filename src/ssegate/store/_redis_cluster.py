"""What a :class:`~ssegate.store.redis.RedisStore` does differently on a Redis Cluster
(``redis+cluster://``, Redis ≥ 7 or Valkey): the client, the writer's pipeline, and sharded
pub/sub.

Every key and channel of a stream carries its ``{stream id}`` hash tag, so one stream lives on
one shard: its scripts run there, ``MULTI`` reads work, and its events are published there with
``SPUBLISH`` (see ``_redis_scripts.script_sources``), reaching only that shard's nodes instead
of every node of the cluster.

**Commands** go through redis-py's :class:`~redis.asyncio.cluster.RedisCluster`, which routes
each by its key's slot and follows ``MOVED``/``ASK`` and failovers (refreshing its slot map).
The writer's batches go out by hand, one request per master on a connection of the writer's
own, and fall back to that client's pipeline for what needs its routing
(:class:`ClusterScriptWriter`).

**Sharded pub/sub** does not: redis-py's asyncio ``ClusterPubSub`` polls its per-node
connections in turn, splitting the wait between them, so a message on one shard waits while
another is polled — up to the whole timeout, which is latency a relay can't have. Instead
(:class:`ShardListeners`) this module holds one plain pub/sub connection per master, read by a
task of its own, and subscribes each channel (``SSUBSCRIBE``) on the master that holds its
slot, from the client's slot map. Each connection also subscribes a channel of the instance's
own whose name hashes to one of that master's slots: its confirmation says the connection is
up. When any of them fails — its master died, or the server dropped a channel because its
slot moved (an unrequested ``sunsubscribe``) — the slot map is refreshed and every connection
is made again, resubscribing everything watched: the hub then has every follower re-read what
it may have missed from Redis, as after a reconnect on a single server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from ._redis_keys import RedisStoreConfig, cluster_nodes
from ._redis_writer import Command, ScriptWriter, untimed

__all__ = ["ClusterScriptWriter", "ShardListeners", "connect_cluster"]

log = logging.getLogger("ssegate.store.redis")


def _tls(config: RedisStoreConfig) -> bool:
    return urlsplit(config.url).scheme == "rediss+cluster"


def connect_cluster(config: RedisStoreConfig) -> RedisCluster:
    """The cluster client for ``config`` (it connects on first use)."""
    parts = urlsplit(config.url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(config.url)],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=_tls(config),
        max_connections=config.max_connections,  # per node
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.op_timeout,
        socket_keepalive=True,
        # A failover takes the cluster's node timeout to be noticed, then a vote: a few
        # seconds. Retry a command a few times with back-off rather than fail every stream at
        # once; a write that may have run already is caught by its script (an append checks
        # the id it expects).
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 4),
    )


class ClusterScriptWriter(ScriptWriter):
    """The writer of ``_redis_writer`` on a cluster: a batch is split by master, per the
    client's slot map, and each master's part is sent at once, by hand on the writer's own
    connection to it, as on a single server. Whatever that does not settle — a redirection
    (``MOVED``/``ASK``: the slot map is stale), ``TRYAGAIN``/``CLUSTERDOWN``, a failed
    connection — goes again through redis-py's cluster pipeline, which refreshes the slot map,
    follows redirections and retries through a failover (a script that may have run already
    is caught by its own checks: an append checks the id it expects). A master that fails
    fails only the calls of its own streams: the other shards' streams go on."""

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        client = self._client()
        assert isinstance(client, RedisCluster)
        shards: dict[str | None, tuple[ClusterNode | None, list[int]]] = {}
        for index, command in enumerate(commands):
            try:
                node = client.get_node_from_key(command.keys[0])  # type: ignore[arg-type]
            except redis_errors.RedisClusterException:  # the slot map is being refreshed
                node = None
            shards.setdefault(node.name if node is not None else None, (node, []))[1].append(index)
        replies: list[Any] = [None] * len(commands)

        async def send(node: ClusterNode | None, indexes: list[int]) -> None:
            got: list[Any] = [_NO_REPLY] * len(indexes)
            if node is not None:
                # The fast way: by hand, on the writer's own connection to that master.
                try:
                    got = await self._round_trip(
                        node.name,
                        lambda: untimed(node.connection_class, node.connection_kwargs),
                        [commands[index] for index in indexes],
                    )
                except (redis_errors.RedisError, OSError):
                    pass  # all of them again, redis-py's way
            redo = [k for k, reply in enumerate(got) if _redo(reply)]
            if redo:
                redone = await self._cluster_pipeline(client, [commands[indexes[k]] for k in redo])
                for k, reply in zip(redo, redone, strict=True):
                    got[k] = reply
            for index, reply in zip(indexes, got, strict=True):
                replies[index] = reply

        async with anyio.create_task_group() as group:
            for node, indexes in shards.values():
                group.start_soon(send, node, indexes)
        return replies

    async def _cluster_pipeline(self, client: RedisCluster, commands: list[Command]) -> list[Any]:
        """``commands`` through redis-py's cluster pipeline, which refreshes the slot map,
        follows ``MOVED``/``ASK`` and retries through a failover."""
        try:
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(
                        "EVALSHA",
                        self._scripts[command.name].sha,
                        len(command.keys),
                        *command.keys,
                        *command.args,
                    )
                got: list[Any] = await pipe.execute(raise_on_error=False)
                return got
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
            return [exc] * len(commands)


_NO_REPLY = object()  # the fast way failed before this command's reply


def _redo(reply: Any) -> bool:
    """Whether a reply of the fast way means "try redis-py's way": no reply (the connection
    failed), or the slot is elsewhere or in transit (then the script did not run)."""
    return reply is _NO_REPLY or isinstance(
        reply,
        redis_errors.AskError  # and MovedError
        | redis_errors.TryAgainError
        | redis_errors.ClusterDownError,
    )


class ShardListeners:
    """One pub/sub connection per master of the cluster (see the module docstring).

    ``read(pubsub, own)`` reads one connection's messages until it fails (the hub's reader);
    ``watched()`` lists the channels to subscribe; ``lost()`` is called whenever connections
    went down (subscriptions may have missed messages)."""

    def __init__(
        self,
        config: RedisStoreConfig,
        cluster: RedisCluster,
        base_channel: bytes,
        read: Callable[[PubSub, bytes], Awaitable[None]],
        watched: Callable[[], list[bytes]],
        lost: Callable[[], None],
    ) -> None:
        self._config = config
        self._cluster = cluster
        self._base_channel = base_channel
        self._read = read
        self._watched = watched
        self._lost = lost
        self._by_node: dict[str, PubSub] = {}  # node name -> its connection, while up

    async def run(self, closed: anyio.Event) -> None:
        """Listen on every master until cancelled; on a failure, refresh and start again."""
        attempt = 0
        while not closed.is_set():
            try:
                if attempt:
                    await self._cluster.nodes_manager.initialize()
                async with anyio.create_task_group() as tg:
                    for node in self._cluster.get_primaries():
                        tg.start_soon(self._listen_node, node)
            except Exception as exc:  # one connection's failure ends them all: resubscribe
                log.warning("redis store: sharded pub/sub lost (%s); reconnecting", exc)
            finally:
                self._by_node.clear()
                self._lost()
            with anyio.move_on_after(min(2.0, 0.05 * 2**attempt)):
                await closed.wait()
            attempt = min(attempt + 1, 6)

    def _own_channel(self, node: ClusterNode) -> bytes | None:
        """The instance's channel with a hash tag that puts it on ``node`` (``None`` if the
        slot map gives ``node`` no slot)."""
        # A master with a third of the slots takes ~3 tries; one with a single slot ~16,384
        # (that bound would miss it once in e^61).
        for n in range(1_000_000):
            channel = self._base_channel + b":{%d}" % n
            if self.node_of(channel) == node.name:
                return channel
        return None

    async def _listen_node(self, node: ClusterNode) -> None:
        own = self._own_channel(node)
        if own is None:
            return  # a master without slots has no channel of ours
        pool = self._pool(node)
        pubsub = PubSub(pool)
        try:
            await pubsub.ssubscribe(own)
            self._by_node[node.name] = pubsub
            # No await between publishing the connection and listing what is watched: a
            # channel watched later is subscribed by `subscribe` on this connection.
            mine = [c for c in self._watched() if self.node_of(c) == node.name]
            if mine:
                await pubsub.ssubscribe(*mine)
            await self._read(pubsub, own)
        finally:
            self._by_node.pop(node.name, None)
            with anyio.CancelScope(shield=True):
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                except (redis_errors.RedisError, OSError):
                    pass
                await pool.disconnect()

    def _pool(self, node: ClusterNode) -> ConnectionPool:
        parts = urlsplit(self._config.url)
        userinfo = parts.netloc.rpartition("@")[0]
        auth = f"{userinfo}@" if userinfo else ""
        host = f"[{node.host}]" if ":" in node.host else node.host
        scheme = "rediss" if _tls(self._config) else "redis"
        return ConnectionPool.from_url(
            f"{scheme}://{auth}{quote(host, safe='[]:')}:{node.port}/0",
            max_connections=2,
            retry=Retry(NoBackoff(), 0),  # reconnecting is run()'s job, with a fresh slot map
            socket_connect_timeout=self._config.connect_timeout,
            socket_keepalive=True,
            health_check_interval=0,
        )

    def node_of(self, channel: bytes) -> str | None:
        """The name of the master serving ``channel``'s slot, per the client's slot map."""
        try:
            node = self._cluster.get_node_from_key(channel)  # type: ignore[arg-type]
        except redis_errors.RedisClusterException:  # no slot map yet, or a slot no node serves
            return None
        return None if node is None else node.name

    def _group(self, channels: Iterable[bytes]) -> dict[str, list[bytes]]:
        groups: dict[str, list[bytes]] = {}
        for channel in channels:
            name = self.node_of(channel)
            if name is not None:
                groups.setdefault(name, []).append(channel)
        return groups

    async def subscribe(self, channels: list[bytes]) -> None:
        """``SSUBSCRIBE`` each channel on its master, where that connection is up (else it is
        subscribed when the connection is made)."""
        for name, mine in self._group(channels).items():
            pubsub = self._by_node.get(name)
            if pubsub is not None:
                await pubsub.ssubscribe(*mine)

    async def unsubscribe(self, channels: list[bytes]) -> None:
        for name, mine in self._group(channels).items():
            pubsub = self._by_node.get(name)
            if pubsub is not None:
                await pubsub.sunsubscribe(*mine)
