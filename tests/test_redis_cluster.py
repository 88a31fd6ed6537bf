"""The Redis store on a real local Redis Cluster (three masters, three replicas): what differs
from one server. The store's contract runs against the cluster in test_store.py and the
multi-instance gateway tests in test_multi_instance.py."""

from __future__ import annotations

import secrets

import anyio
import pytest
from redis import Redis

from cluster_helpers import LocalCluster
from ssegate.gateway import Settings
from ssegate.store import StoreUnavailableError, StreamStatus
from ssegate.store._redis_keys import cluster_nodes, stream_channels, stream_keys
from ssegate.store.redis import RedisStore, RedisStoreConfig

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def _numsub(cluster: LocalCluster, command: str, channel: bytes) -> dict[int, int]:
    """``PUBSUB <command> channel`` on every node: port -> subscribers there."""
    counts = {}
    for node in cluster.live():
        with Redis(host="127.0.0.1", port=node.port) as client:
            reply = client.execute_command("PUBSUB", command, channel)
            counts[node.port] = int(reply[1])
    return counts


async def test_events_go_over_sharded_pub_sub_on_the_streams_own_shard(
    redis_cluster: LocalCluster,
) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_cluster.url, key_prefix=prefix)
    sid = "st_" + secrets.token_hex(4)
    async with RedisStore(config) as a, RedisStore(config) as b:
        await a.create(sid, model="m", provider="p")
        got: list[int] = []
        following = anyio.Event()

        async def follow() -> None:
            async for batch in b.follow_batches(sid):
                following.set()
                got.extend(e.id for e in batch)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await a.append(sid, "delta", "{}")
            with anyio.fail_after(5):
                await following.wait()
            _, data = stream_channels(prefix, sid)
            master = redis_cluster.master_of(stream_keys(prefix, sid)[0])
            sharded = await anyio.to_thread.run_sync(_numsub, redis_cluster, "SHARDNUMSUB", data)
            plain = await anyio.to_thread.run_sync(_numsub, redis_cluster, "NUMSUB", data)
            # B subscribed with SSUBSCRIBE on the master of the stream's slot, nowhere else,
            # and with no plain SUBSCRIBE anywhere.
            assert sharded[master.port] == 1
            assert sum(sharded.values()) == 1
            assert sum(plain.values()) == 0
            for _ in range(20):
                await a.append(sid, "delta", "{}")
            await a.finish(sid, StreamStatus.DONE, "{}")
        assert got == list(range(1, 23))


async def test_streams_spread_over_the_masters(redis_cluster: LocalCluster) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    async with RedisStore(RedisStoreConfig(url=redis_cluster.url, key_prefix=prefix)) as store:
        sids = [f"st_{n}_{secrets.token_hex(3)}" for n in range(12)]
        for sid in sids:
            await store.create(sid, model="m", provider="p")
            await store.append(sid, "delta", "{}")
        masters = {redis_cluster.master_of(stream_keys(prefix, sid)[0]).port for sid in sids}
        assert len(masters) == 3
        for sid in sids:
            assert [e.id for e in await store.read(sid)] == [1]


def test_a_cluster_url_names_every_node_and_hides_its_password() -> None:
    url = "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,node4"
    config = RedisStoreConfig(url=url)
    assert config.cluster
    assert "s3cret" not in config.safe_url
    assert cluster_nodes(url) == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
        ("::1", 7002),
        ("node4", 6379),
    ]
    assert RedisStoreConfig(url="rediss+cluster://a:1").cluster
    assert not RedisStoreConfig(url="redis://a:1/0").cluster
    with pytest.raises(ValueError, match="not a host:port"):
        RedisStoreConfig(url="redis+cluster://a:1,b:port")
    assert Settings.from_options(store="redis+cluster://a:1,b:2").store.url.endswith("b:2")


async def test_an_unreachable_cluster_fails_clearly_without_the_password() -> None:
    from instance_helpers import free_port

    url = f"redis+cluster://:s3cret@127.0.0.1:{free_port()}"
    config = RedisStoreConfig(url=url, connect_timeout=0.5, op_timeout=0.5)

    async def enter() -> None:
        async with RedisStore(config):
            pass

    with anyio.fail_after(20), pytest.raises(StoreUnavailableError) as caught:
        await enter()
    assert "s3cret" not in str(caught.value)


async def test_a_follower_keeps_streaming_when_its_shards_pub_sub_connection_drops(
    redis_cluster: LocalCluster,
) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    # A long lease: the follower can't fall back on its lease checks within the test.
    config = RedisStoreConfig(url=redis_cluster.url, key_prefix=prefix, lease_ttl=60)
    sid = "st_" + secrets.token_hex(4)
    _, data = stream_channels(prefix, sid)
    master = redis_cluster.master_of(stream_keys(prefix, sid)[0])

    def subscribed() -> int:
        return _numsub(redis_cluster, "SHARDNUMSUB", data)[master.port]

    def drop_pub_sub_connections() -> None:
        with Redis(host="127.0.0.1", port=master.port) as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    async def until_subscribed() -> None:
        # Another process's state: poll it, bounded.
        with anyio.fail_after(10):
            while await anyio.to_thread.run_sync(subscribed) != 1:
                await anyio.sleep(0.02)

    async with RedisStore(config) as a, RedisStore(config) as b:
        await a.create(sid, model="m", provider="p")
        got: list[int] = []

        async def follow() -> None:
            async for batch in b.follow_batches(sid):
                got.extend(e.id for e in batch)

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await a.append(sid, "delta", "{}")
                await until_subscribed()
                await anyio.to_thread.run_sync(drop_pub_sub_connections)
                # B reconnects to every master and subscribes what it watches again.
                await until_subscribed()
                for _ in range(20):
                    await a.append(sid, "delta", "{}")
                await a.finish(sid, StreamStatus.DONE, "{}")
        assert got == list(range(1, 23))


async def test_a_stream_goes_on_when_its_slot_moves_to_another_master(
    redis_cluster: LocalCluster,
) -> None:
    """Its keys move mid-stream: the writer's appends get ``ASK`` then ``MOVED`` from the old
    master, go again through redis-py's routing, and land on the new one; followers here and
    on another instance get every event once, in order."""
    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_cluster.url, key_prefix=prefix, lease_ttl=60)
    sid = "st_" + secrets.token_hex(4)
    meta = stream_keys(prefix, sid)[0]
    before = redis_cluster.master_of(meta)
    async with RedisStore(config) as a, RedisStore(config) as b:
        await a.create(sid, model="m", provider="p")
        got: dict[str, list[int]] = {"a": [], "b": []}

        async def follow(name: str, store: RedisStore) -> None:
            async for batch in store.follow_batches(sid):
                got[name].extend(e.id for e in batch)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, "a", a)
                tg.start_soon(follow, "b", b)
                for _ in range(5):
                    await a.append(sid, "delta", "{}")
                await a.read(sid)  # until Redis has them
                after = await anyio.to_thread.run_sync(redis_cluster.move_slot, meta)
                for _ in range(20):
                    await a.append(sid, "delta", "{}")
                await a.finish(sid, StreamStatus.DONE, "{}")
        assert after is not before
        assert redis_cluster.master_of(meta) is after
        assert got == {"a": list(range(1, 27)), "b": list(range(1, 27))}
        assert [e.id for e in await b.read(sid)] == list(range(1, 27))
