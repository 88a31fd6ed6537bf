"""The Redis store across instances: two ``RedisStore`` objects on one real ``redis-server``
stand for two gateway processes. (The shared contract suite runs in ``test_store.py``.)"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing

import anyio
import pytest
from redis import Redis

from instance_helpers import RedisServer
from ssegate.store import (
    ProducerLostError,
    StoredEvent,
    StoreError,
    StoreUnavailableError,
    StreamNotFoundError,
    StreamStatus,
)
from ssegate.store._redis_keys import stream_channels, stream_keys
from ssegate.store.redis import RedisStore, RedisStoreConfig

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two instances sharing one key prefix (lease 0.5 s)."""
    config = RedisStoreConfig(
        url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:", lease_ttl=0.5
    )
    async with RedisStore(config) as a, RedisStore(config) as b:
        yield a, b


def sid() -> str:
    return "st_" + secrets.token_hex(8)


async def test_two_instances_never_hand_out_one_id_twice(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    stream = sid()
    # Created by a third instance, now gone: neither of the two is the stream's producer, so
    # each append waits for Redis (the producer's own appends don't; see below).
    async with RedisStore(a.config) as creator:
        await creator.create(stream, model="m", provider="p")
    ids: list[int] = []

    async def appender(store: RedisStore, tag: str) -> None:
        for i in range(100):
            ids.append((await store.append(stream, "delta", f'{{"{tag}":{i}}}')).id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(appender, a, "a")
        tg.start_soon(appender, b, "b")
    await b.finish(stream, StreamStatus.DONE, "{}")
    assert sorted(ids) == list(range(1, 201))
    assert [e.id for e in await b.read(stream)] == list(range(1, 202))
    assert (await a.get(stream)).last_event_id == 201


async def test_followers_on_another_instance_get_live_events_encoded_once(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    stream = sid()
    await a.create(stream, model="m", provider="p")
    await a.append(stream, "start", "{}")
    got: dict[int, list[StoredEvent]] = {0: [], 1: []}
    caught_up = {0: anyio.Event(), 1: anyio.Event()}

    async def follower(n: int) -> None:
        async with aclosing(b.follow(stream)) as events:
            async for event in events:
                got[n].append(event)
                caught_up[n].set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower, 0)
            tg.start_soon(follower, 1)
            await caught_up[0].wait()  # both read the backlog; the rest comes live
            await caught_up[1].wait()
            for i in range(50):
                await a.append(stream, "delta", f'{{"text":"t{i}"}}')
            await a.finish(stream, StreamStatus.DONE, '{"finish_reason":"stop"}')
    assert [e.id for e in got[0]] == list(range(1, 53))
    assert [e.id for e in got[1]] == list(range(1, 53))
    assert got[0][-1].event == "done"
    # Live events reached B once through pub/sub and were built (encoded) once there.
    shared = sum(x.encoded is y.encoded for x, y in zip(got[0][1:], got[1][1:], strict=True))
    assert shared >= 45
    assert b.statistics().followers == 0


async def test_cancel_from_another_instance_reaches_the_producer_at_once(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    stream = sid()
    await a.create(stream, model="m", provider="p")
    causes: list[str] = []
    heard = anyio.Event()

    async def producer_watch() -> None:
        causes.append(await a.wait_cancel(stream))
        heard.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer_watch)
        await anyio.wait_all_tasks_blocked()
        started = anyio.current_time()
        assert await b.request_cancel(stream, "client") is True
        with anyio.fail_after(0.5):
            await heard.wait()
    assert causes == ["client"]
    assert anyio.current_time() - started < 0.5


async def test_subscribers_of_a_dead_instance_expire_with_their_lease(
    redis_server: RedisServer,
) -> None:
    config = RedisStoreConfig(
        url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:", lease_ttl=0.6
    )
    async with RedisStore(config) as a, AsyncExitStack() as stack:
        b = await stack.enter_async_context(RedisStore(config))
        stream = sid()
        await a.create(stream, model="m", provider="p")
        await stack.enter_async_context(b.subscriber(stream))
        assert (await a.get(stream)).subscribers == 1
        await b.aclose()  # B "dies": its subscriber is never counted out
        started = anyio.current_time()
        with anyio.fail_after(5):
            await a.wait_abandoned(stream, 0.1)
        waited = anyio.current_time() - started
        assert 0.3 < waited < 0.6 + 0.1 + 0.5
        assert (await a.get(stream)).subscribers == 0


async def test_followers_elsewhere_notice_a_producer_that_stops(
    redis_server: RedisServer,
) -> None:
    config = RedisStoreConfig(
        url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:", lease_ttl=0.5
    )
    async with RedisStore(config) as b:
        stream = sid()
        async with RedisStore(config) as a:
            await a.create(stream, model="m", provider="p")
            await a.append(stream, "start", "{}")
        stopped = anyio.current_time()  # A is gone and renews nothing
        got: list[int] = []

        async def follow() -> None:
            with anyio.fail_after(5):
                async with aclosing(b.follow(stream)) as events:
                    async for event in events:
                        got.append(event.id)

        with pytest.raises(ProducerLostError):
            await follow()
        assert got == [1]
        assert anyio.current_time() - stopped < 0.5 + 0.3
        assert not await b.producer_alive(stream)


async def test_unreachable_redis_fails_clearly_without_leaking_the_password() -> None:
    port = RedisServer().port  # nothing listens there
    config = RedisStoreConfig(url=f"redis://:s3cret@127.0.0.1:{port}/0", connect_timeout=1)
    with pytest.raises(StoreUnavailableError) as info:
        async with RedisStore(config):
            pass
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in info.value.message
    assert "s3cret" not in info.value.message
    assert info.value.retryable


async def test_password_protected_redis() -> None:
    server = RedisServer(None, "--requirepass", "pw-1").start()
    try:
        good = RedisStoreConfig(url=f"redis://:pw-1@127.0.0.1:{server.port}/0")
        async with RedisStore(good) as store:
            stream = sid()
            await store.create(stream, model="m", provider="p")
            assert (await store.get(stream)).status is StreamStatus.RUNNING
        bad = RedisStoreConfig(url=f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailableError):
            async with RedisStore(bad):
                pass
    finally:
        server.stop()


async def test_the_store_rides_out_a_redis_restart() -> None:
    server = RedisServer().start()
    try:
        config = RedisStoreConfig(url=server.url, connect_timeout=0.5, lease_ttl=5)
        async with RedisStore(config) as store:
            stream = sid()
            await store.create(stream, model="m", provider="p")
            outcome: list[BaseException | str] = []
            ended = anyio.Event()

            async def producer_watch() -> None:
                try:
                    outcome.append(await store.wait_cancel(stream))
                except StreamNotFoundError as exc:
                    outcome.append(exc)
                ended.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(producer_watch)
                await anyio.wait_all_tasks_blocked()
                server.stop()
                started = anyio.current_time()
                with pytest.raises(StoreUnavailableError):
                    await store.create(sid(), model="m", provider="p")
                assert anyio.current_time() - started < 1.0  # fails fast: a 503, not a hang
                assert outcome == []  # the cancel watch waits for Redis to come back
                server.start()  # empty: the stream was lost with the restart
                with anyio.fail_after(10):
                    await ended.wait()
            assert isinstance(outcome[0], StreamNotFoundError)
            # Stale pooled connections are replaced: the store works again.
            fresh = sid()
            await store.create(fresh, model="m", provider="p")
            await store.append(fresh, "start", "{}")
            assert [e.id for e in await store.read(fresh)] == [1]
    finally:
        server.stop()


async def test_memory_per_stream(redis_server: RedisServer) -> None:
    """What a typical finished 500-event stream costs in Redis (docs/deploy.md quotes it)."""
    import redis.asyncio

    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_server.url, key_prefix=prefix)
    async with RedisStore(config) as store:
        stream = sid()
        await store.create(stream, model="gpt-4o-mini", provider="openai")
        await store.append(stream, "start", f'{{"stream_id":"{stream}","model":"gpt-4o-mini"}}')
        for i in range(497):
            await store.append(stream, "delta", f'{{"text":" word{i % 50}"}}')
        await store.append(stream, "usage", '{"prompt_tokens":25,"completion_tokens":497}')
        await store.finish(stream, StreamStatus.DONE, '{"finish_reason":"stop"}')
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        total = 0
        for suffix in (":m", ":e"):
            used = await client.memory_usage(f"{prefix}{{{stream}}}{suffix}", samples=0)
            total += int(used or 0)
    finally:
        await client.aclose()
    print(f"\nRedis memory for one finished 500-event stream: {total} bytes")
    assert 5_000 < total < 100_000


async def test_a_live_instance_keeps_renewing_its_subscribers(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    config = RedisStoreConfig(url=redis_server.url, key_prefix=redis_prefix, lease_ttl=0.3)
    async with RedisStore(config) as store:
        stream = sid()
        await store.create(stream, model="m", provider="p")
        async with store.subscriber(stream):
            with anyio.move_on_after(1.0) as scope:  # over three lease periods
                await store.wait_abandoned(stream, 0.1)
            assert scope.cancelled_caught  # still counted: renewed, not expired
            assert (await store.get(stream)).subscribers == 1
        assert (await store.get(stream)).subscribers == 0


# -- writes under load: one pipeline, coalesced appends, a small pool -------------------------


async def _evalsha_calls(url: str) -> int:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_appends_share_round_trips_and_keep_ids_in_order(
    redis_server: RedisServer,
) -> None:
    config = RedisStoreConfig(url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:")
    async with RedisStore(config) as store:
        streams = [sid() for _ in range(20)]
        for stream in streams:
            await store.create(stream, model="m", provider="p")
        before = await _evalsha_calls(redis_server.url)
        got: dict[str, list[tuple[int, str]]] = {s: [] for s in streams}

        async def producer(stream: str, tag: int) -> None:
            for i in range(20):
                data = f'{{"p":{tag},"i":{i}}}'
                got[stream].append(((await store.append(stream, "delta", data)).id, data))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for stream in streams:
                    for tag in range(5):  # five producers per stream, 100 in all
                        tg.start_soon(producer, stream, tag)
        calls = await _evalsha_calls(redis_server.url) - before
        for stream in streams:
            events = await store.read(stream)
            assert [e.id for e in events] == list(range(1, 101))
            # Each caller got the id its event has in Redis.
            assert sorted(got[stream]) == [(e.id, e.data) for e in events]
            for tag in range(5):  # one producer's events stay in its order
                mine = [e.data for e in events if f'"p":{tag},' in e.data]
                assert mine == [f'{{"p":{tag},"i":{i}}}' for i in range(20)]
    # 2000 appends, coalesced per stream per batch: far fewer script calls.
    assert calls < 1000, calls


async def test_a_small_pool_waits_instead_of_failing(redis_server: RedisServer) -> None:
    config = RedisStoreConfig(
        url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:", max_connections=2
    )
    async with RedisStore(config) as store:

        async def stream_one() -> None:
            stream = sid()
            await store.create(stream, model="m", provider="p")
            async with store.subscriber(stream):
                for i in range(20):
                    await store.append(stream, "delta", f'{{"i":{i}}}')
                    await store.read(stream, after=i)  # a pooled connection of its own
                await store.finish(stream, StreamStatus.DONE, "{}")
                assert [e.id for e in await store.read(stream)] == list(range(1, 22))
                assert (await store.get(stream)).subscribers == 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(stream_one)


async def test_appends_survive_a_flushed_script_cache(redis_server: RedisServer) -> None:
    import redis.asyncio

    config = RedisStoreConfig(url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:")
    async with RedisStore(config) as store:
        stream = sid()
        await store.create(stream, model="m", provider="p")
        await store.append(stream, "start", "{}")
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
        # NOSCRIPT: the writer loads the scripts and sends the calls again, once each.
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(store.append, stream, "delta", f'{{"i":{i}}}')
        await store.finish(stream, StreamStatus.DONE, "{}")
        assert [e.id for e in await store.read(stream)] == list(range(1, 8))


async def test_the_producer_appends_without_waiting_for_redis(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    stream = sid()
    await a.create(stream, model="m", provider="p")
    batches = a._writer.batches
    events = [await a.append(stream, "delta", f'{{"n":{i}}}') for i in range(1, 1001)]
    # Every id at once, in order, as Redis gives them; far fewer round trips than events.
    assert [e.id for e in events] == list(range(1, 1001))
    assert [e.id for e in await a.read(stream)] == list(range(1, 1001))  # what it wrote
    assert a._writer.batches - batches < 20
    done = await a.finish(stream, StreamStatus.DONE, "{}")
    assert done.id == 1001
    assert [(e.id, e.data) for e in await b.read(stream)] == [
        (e.id, e.data) for e in [*events, done]
    ]


async def test_followers_see_only_what_redis_has(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    stream = sid()
    await a.create(stream, model="m", provider="p")
    await a.append(stream, "delta", '{"n":1}')  # queued, not yet in Redis
    async with aclosing(a.follow_batches(stream)) as batches:
        first = await anext(batches)
        assert [e.id for e in first] == [1]
        assert [e.id for e in await b.read(stream)] == [1]  # in Redis by then


async def test_an_append_from_elsewhere_puts_the_producer_out_of_step(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    stream = sid()
    await a.create(stream, model="m", provider="p")
    await a.append(stream, "delta", '{"n":1}')
    await a.read(stream)  # in Redis by now
    assert (await b.append(stream, "delta", '{"from":"b"}')).id == 2  # a second writer
    await a.append(stream, "delta", '{"n":2}')  # a thinks this is 2: Redis refuses it
    await a.read(stream)
    with pytest.raises(StoreError, match="out of step"):
        await a.append(stream, "delta", '{"n":3}')
    assert [e.data for e in await b.read(stream)] == ['{"n":1}', '{"from":"b"}']


async def test_closing_sends_what_the_producer_appended(redis_server: RedisServer) -> None:
    config = RedisStoreConfig(url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:")
    stream = sid()
    async with RedisStore(config) as a:
        await a.create(stream, model="m", provider="p")
        for i in range(1, 301):
            await a.append(stream, "delta", f'{{"n":{i}}}')
    async with RedisStore(config) as b:
        assert [e.id for e in await b.read(stream)] == list(range(1, 301))


async def test_a_failed_append_fails_the_producers_next_call(redis_server: RedisServer) -> None:
    server = RedisServer().start()  # one of its own, to stop
    try:
        config = RedisStoreConfig(url=server.url, key_prefix=f"t{secrets.token_hex(4)}:")
        async with RedisStore(config) as a:
            stream = sid()
            await a.create(stream, model="m", provider="p")
            await a.append(stream, "delta", '{"n":1}')
            await a.read(stream)
            server.stop()

            async def append_until_it_fails() -> None:
                # The failure comes back with the batch, then fails the next call.
                with anyio.fail_after(10):
                    while True:
                        await a.append(stream, "delta", '{"n":2}')
                        await anyio.sleep(0.01)

            with pytest.raises(StoreUnavailableError):
                await append_until_it_fails()
    finally:
        server.stop()


async def test_an_append_refreshes_the_timers_first_and_then_once_a_third_of_the_lease_passed(
    redis_server: RedisServer,
) -> None:
    """The append script writes the lease and the keys' expiry with the stream's first event
    (the events key has an expiry from its start: a dead producer leaks nothing) and then
    only once a third of the lease has passed, not with every token."""
    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_server.url, key_prefix=prefix, lease_ttl=30)
    stream = sid()
    meta, events, lease, _ = stream_keys(prefix, stream)
    with Redis.from_url(redis_server.url) as admin:
        async with RedisStore(config) as store:
            await store.create(stream, model="m", provider="p")
            await store.append(stream, "delta", "{}")
            await store.read(stream)  # until Redis has it
            assert admin.pttl(events) > 30_000  # lease + finished_ttl, from the first event
            # Less than a third of the lease gone: the next append leaves the timers alone.
            admin.pexpire(lease, 25_000)
            admin.pexpire(meta, 26_000)
            admin.pexpire(events, 26_000)
            await store.append(stream, "delta", "{}")
            await store.read(stream)
            assert 0 < admin.pttl(lease) <= 25_000
            assert 0 < admin.pttl(events) <= 26_000
            # More than a third gone: the append renews the lease and both keys.
            admin.pexpire(lease, 15_000)
            await store.append(stream, "delta", "{}")
            assert [e.id for e in await store.read(stream)] == [1, 2, 3]
            assert admin.pttl(lease) > 25_000
            assert admin.pttl(meta) > 30_000
            assert admin.pttl(events) > 30_000


async def test_followers_of_a_producer_here_that_stops_renewing_get_producer_lost(
    redis_server: RedisServer,
) -> None:
    """Followers of a stream produced in this instance wait without a timer per event; if
    its producer stops renewing the lease (a stuck job), they still end with producer_lost."""
    config = RedisStoreConfig(
        url=redis_server.url, key_prefix=f"t{secrets.token_hex(4)}:", lease_ttl=0.4
    )
    async with RedisStore(config) as store:
        stream = sid()
        await store.create(stream, model="m", provider="p")
        await store.append(stream, "delta", "{}")
        got: list[int] = []

        async def follow() -> None:
            async with aclosing(store.follow(stream)) as events:
                async for event in events:
                    got.append(event.id)

        with anyio.fail_after(5), pytest.raises(ProducerLostError):
            await follow()
        assert got == [1]


async def test_a_redis_that_stops_answering_fails_a_write_after_op_timeout() -> None:
    """The writer's connection has no socket timeout of its own: its batch has one deadline,
    ``op_timeout``. A Redis that hangs (here: stopped) fails the write with a 503's error
    instead of holding every producer, and once it answers again the writer reconnects."""
    server = RedisServer().start()  # one of its own, to stop
    assert server.proc is not None
    try:
        config = RedisStoreConfig(url=server.url, op_timeout=0.5)
        async with RedisStore(config) as store:
            await store.create(sid(), model="m", provider="p")  # the writer is connected
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                started = anyio.current_time()
                with anyio.fail_after(10), pytest.raises(StoreUnavailableError):
                    await store.create(sid(), model="m", provider="p")
                assert 0.4 < anyio.current_time() - started < 3.0
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            stream = sid()
            with anyio.fail_after(10):
                await store.create(stream, model="m", provider="p")
                await store.append(stream, "delta", "{}")
                assert [e.id for e in await store.read(stream)] == [1]
    finally:
        server.stop()


async def test_a_local_producers_follower_reads_from_the_cache_whatever_pub_sub_echoes_first(
    redis_server: RedisServer,
) -> None:
    """The producer's own terminal event comes back on the control channel and can overtake
    the replies to the appends before it. Here such an echo (id 100) is published by hand
    before event 4 is appended: the follower must still get event 4 from this instance's
    cache — with the echo cached, the cache had a hole and every follower read Redis."""
    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_server.url, key_prefix=prefix)
    stream = sid()
    control, _ = stream_channels(prefix, stream)
    with Redis.from_url(redis_server.url) as admin:

        def xranges() -> int:
            stats = admin.info("commandstats").get("cmdstat_xrange", {})
            return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0

        async with RedisStore(config) as store:
            await store.create(stream, model="m", provider="p")
            seen: list[int] = []
            got = {n: anyio.Event() for n in (3, 4)}

            async def follow() -> None:
                async with aclosing(store.follow_batches(stream)) as batches:
                    async for batch in batches:
                        for event in batch:
                            seen.append(event.id)
                            if event.id in got:
                                got[event.id].set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                for n in range(3):
                    await store.append(stream, "delta", f"d{n}")
                with anyio.fail_after(5):
                    await got[3].wait()
                before = xranges()

                # The control channel carries messages in order: once the cancel that
                # follows the echo is seen, the echo has been handled.
                cause: list[str] = []

                async def watch_cancel() -> None:
                    cause.append(await store.wait_cancel(stream))

                tg.start_soon(watch_cancel)
                with anyio.fail_after(5):
                    while admin.pubsub_numsub(control)[0][1] < 1:
                        await anyio.sleep(0.01)  # another process's state: polled
                    admin.publish(control, b'f\n100\ndone\n"x"')
                    admin.publish(control, b"c\nprobe")
                    while not cause:
                        await anyio.sleep(0.01)  # the hub's task: no event of ours to await
                await store.append(stream, "delta", "d3")
                with anyio.fail_after(5):
                    await got[4].wait()
                assert seen == [1, 2, 3, 4]
                assert xranges() == before, "the follower read Redis instead of the cache"
                tg.cancel_scope.cancel()
