"""The stream store contract, run against every store implementation.

Every test in the first part takes the ``harness`` fixture and uses only the :class:`Store`
interface, so the memory store and the Redis store run the same suite: the memory store on
asyncio and trio, the Redis store (redis-py's asyncio client) on asyncio only. Time-based
bounds use tiny values: ``harness.advance`` moves the memory store's injected clock, and really
sleeps for Redis, whose keys expire on the server's clock. Tests of memory-only bounds come
last, on both backends."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import pytest

from ssegate import _aio
from ssegate.codec import Decoder
from ssegate.store import (
    IllegalTransitionError,
    MemoryStore,
    MemoryStoreConfig,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreFullError,
    StoreUnavailableError,
    StreamGapError,
    StreamNotFoundError,
    StreamStatus,
)

pytestmark = pytest.mark.anyio


# -- harness ---------------------------------------------------------------------------------


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    kind: str
    make: Callable[..., Awaitable[Store]]  # make(max_events=..., finished_ttl=..., lease_ttl=...)
    advance: Callable[[float], Awaitable[None]]  # let this much store time pass


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend, "asyncio" or "trio": every test runs on both (but see below)."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test runs on asyncio and on trio; the contract runs against the memory store on
    # both and against the Redis store on asyncio only (redis-py's client is asyncio's). One
    # parametrisation of the pair leaves out Redis on trio rather than skip it.
    if "store_kind" in metafunc.fixturenames:
        metafunc.parametrize(
            ("store_kind", "anyio_backend"),
            [
                ("memory", "asyncio"),
                ("memory", "trio"),
                pytest.param("redis", "asyncio", marks=pytest.mark.redis),
                pytest.param("cluster", "asyncio", marks=pytest.mark.redis),
            ],
            indirect=True,
        )
    elif "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_server").url
    if request.param == "cluster":
        return "redis", request.getfixturevalue("redis_cluster").url
    return request.param, None


@pytest.fixture
async def harness(store_kind: tuple[str, str | None], anyio_backend: str) -> AsyncIterator[Harness]:
    kind, url = store_kind
    async with AsyncExitStack() as stack:
        if kind == "memory":
            clock = FakeClock()

            async def make(**bounds: Any) -> Store:
                store = MemoryStore(MemoryStoreConfig(**bounds), clock=clock)
                return await stack.enter_async_context(store)

            async def advance(seconds: float) -> None:
                clock.now += seconds

            yield Harness(kind, make, advance)
        elif kind == "redis":
            from ssegate.store.redis import RedisStore, RedisStoreConfig

            async def make(**bounds: Any) -> Store:
                config = RedisStoreConfig(url=url, key_prefix=f"t{secrets.token_hex(4)}:", **bounds)
                return await stack.enter_async_context(RedisStore(config))

            yield Harness(kind, make, anyio.sleep)
        else:
            raise AssertionError(kind)


@pytest.fixture
async def store(harness: Harness) -> Store:
    return await harness.make()


# -- helpers ---------------------------------------------------------------------------------

_n = 0


async def new_stream(store: Store, **kwargs: Any) -> str:
    global _n
    _n += 1
    stream_id = f"st_test{_n}_{secrets.token_hex(4)}"
    kwargs.setdefault("model", "m")
    kwargs.setdefault("provider", "p")
    await store.create(stream_id, **kwargs)
    return stream_id


def payload(i: int) -> str:
    return orjson.dumps({"text": f"t{i}"}).decode()


async def fill(store: Store, stream_id: str, n: int, *, finish: bool = True) -> None:
    """Append ``n`` events in all, the last one ``done`` if ``finish``."""
    for i in range(1, n + (0 if finish else 1)):
        await store.append(stream_id, "delta", payload(i))
    if finish:
        await store.finish(stream_id, StreamStatus.DONE, '{"finish_reason":"stop"}')


async def collect(store: Store, stream_id: str, after: int = 0) -> list[StoredEvent]:
    """Follow the stream to its end (which must come: a hang is a failure, not a timeout)."""
    with anyio.fail_after(10):
        async with aclosing(store.follow(stream_id, after)) as events:
            return [event async for event in events]


# -- ids, read, follow -----------------------------------------------------------------------


async def test_create_reports_a_running_stream(harness: Harness) -> None:
    store = await harness.make()
    sid = await new_stream(store, model="demo", provider="demo", owner="key-1")
    info = await store.get(sid)
    assert (info.id, info.status, info.model, info.provider) == (sid, "running", "demo", "demo")
    assert info.owner == "key-1"
    assert info.last_event_id == 0
    assert info.finished_at is None
    assert info.created > 1_600_000_000  # unix seconds
    assert (info.usage, info.error, info.cancel_requested, info.subscribers) == (
        None,
        None,
        False,
        0,
    )
    as_json = info.to_dict()
    assert "owner" not in as_json
    assert as_json["status"] == "running"
    assert orjson.loads(orjson.dumps(as_json)) == as_json


async def test_ids_are_1_to_n_and_encoded_once(store: Store) -> None:
    sid = await new_stream(store)
    appended = [await store.append(sid, "delta", payload(i)) for i in range(1, 11)]
    final = await store.finish(
        sid, StreamStatus.DONE, '{"finish_reason":"stop"}', usage={"prompt_tokens": 1}
    )
    assert [e.id for e in appended] == list(range(1, 11))
    assert final.id == 11
    assert final.event == "done"
    assert appended[0].encoded == b'id: 1\nevent: delta\ndata: {"text":"t1"}\n\n'
    events = await store.read(sid)
    assert [e.id for e in events] == list(range(1, 12))
    assert [e.data for e in events][:10] == [payload(i) for i in range(1, 11)]
    decoded = Decoder().feed(b"".join(e.encoded for e in events))
    assert [(d.id, d.event, d.data) for d in decoded] == [
        (str(e.id), e.event, e.data) for e in events
    ]
    info = await store.get(sid)
    assert info.status is StreamStatus.DONE
    assert info.last_event_id == 11
    assert info.finished_at is not None
    assert info.usage == {"prompt_tokens": 1}


async def test_read_after_any_id_with_limit(store: Store) -> None:
    sid = await new_stream(store)
    await fill(store, sid, 20, finish=False)
    for after in range(22):
        assert [e.id for e in await store.read(sid, after)] == list(range(after + 1, 21))
    assert [e.id for e in await store.read(sid, 5, limit=3)] == [6, 7, 8]
    assert [e.id for e in await store.read(sid, 18, limit=10)] == [19, 20]
    assert await store.read(sid, 3, limit=0) == []
    with pytest.raises(ValueError, match="after"):
        await store.read(sid, -1)


async def test_resume_from_every_position_yields_exactly_the_rest(store: Store) -> None:
    sid = await new_stream(store)
    await fill(store, sid, 200)
    for k in range(200):
        events = await collect(store, sid, after=k)
        assert [e.id for e in events] == list(range(k + 1, 201)), k
        assert events[-1].event == "done"
    assert await collect(store, sid, after=200) == []


async def test_follow_waits_for_live_events_and_ends_after_terminal(store: Store) -> None:
    sid = await new_stream(store)
    await store.append(sid, "delta", payload(1))
    got: list[StoredEvent] = []
    ended = anyio.Event()
    send, receive = anyio.create_memory_object_stream[StoredEvent](10)

    async def follower() -> None:
        async with send, aclosing(store.follow(sid)) as events:
            async for event in events:
                got.append(event)
                await send.send(event)
        ended.set()

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(follower)
        with anyio.fail_after(5):
            assert (await receive.receive()).id == 1
        await store.append(sid, "delta", payload(2))
        with anyio.fail_after(5):
            assert (await receive.receive()).id == 2
        assert not ended.is_set()  # it waits for more: the stream is still running
        await store.finish(sid, StreamStatus.CANCELLED, "{}", cause="client")
        with anyio.fail_after(5):
            assert (await receive.receive()).event == "cancelled"
            await ended.wait()
    assert [(e.id, e.event) for e in got] == [(1, "delta"), (2, "delta"), (3, "cancelled")]
    assert (await store.get(sid)).cause == "client"


async def test_follow_batches_gives_what_piled_up_in_one_list(store: Store) -> None:
    sid = await new_stream(store)
    for i in range(1, 11):
        await store.append(sid, "delta", payload(i))
    batches: list[list[int]] = []
    async with aclosing(store.follow_batches(sid, 2, limit=5)) as stream:
        async for batch in stream:
            batches.append([e.id for e in batch])
            if len(batches) == 2:  # caught up: now one event at a time, as they come
                break
    assert batches == [[3, 4, 5, 6, 7], [8, 9, 10]]
    got: list[list[int]] = []
    writing = anyio.Event()  # the follower's client is slow: it is still writing a batch
    second = anyio.Event()

    async def follower() -> None:
        async with aclosing(store.follow_batches(sid, 10)) as stream:
            async for batch in stream:
                got.append([e.id for e in batch])
                if len(got) == 2:
                    second.set()
                    await writing.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        for i in range(11, 13):  # one at a time, the follower keeping up
            await anyio.wait_all_tasks_blocked()
            await store.append(sid, "delta", payload(i))
        with anyio.fail_after(5):
            await second.wait()
        for i in range(13, 16):  # while it writes, three more and the end pile up
            await store.append(sid, "delta", payload(i))
        await store.finish(sid, StreamStatus.DONE, "{}")
        writing.set()
    assert got == [[11], [12], [13, 14, 15, 16]]


async def test_many_followers_get_every_event_once_in_order(store: Store) -> None:
    sid = await new_stream(store)
    total = 300
    results: dict[int, list[int]] = {}
    started: dict[int, int] = {}

    async def follower(n: int, after: int) -> None:
        started[n] = after
        async with aclosing(store.follow(sid, after)) as events:
            results[n] = [event.id async for event in events]

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(follower, n, 0)
        for i in range(1, total):
            await store.append(sid, "delta", payload(i))
            if i % 50 == 0:  # late joiners, resuming from where the stream is
                tg.start_soon(follower, 100 + i, i)
                await anyio.wait_all_tasks_blocked()
        await store.finish(sid, StreamStatus.DONE, "{}")
    assert len(results) == 8 + 5
    for n, ids in results.items():
        assert ids == list(range(started[n] + 1, total + 1)), n


async def test_follow_of_a_finished_stream_from_its_end_yields_nothing(store: Store) -> None:
    sid = await new_stream(store)
    await fill(store, sid, 3)
    with anyio.fail_after(5):
        assert await collect(store, sid, after=3) == []
        assert await collect(store, sid, after=10) == []


# -- gaps --------------------------------------------------------------------------------------


async def test_gap_when_events_after_the_resume_point_were_trimmed(harness: Harness) -> None:
    store = await harness.make(max_events=10)
    sid = await new_stream(store)
    await fill(store, sid, 300)
    with pytest.raises(StreamGapError) as info:
        await collect(store, sid, after=0)
    gap = info.value
    assert gap.code == "gap"
    assert 1 < gap.first_id <= 300 - 10 + 1  # at least max_events are kept
    with pytest.raises(StreamGapError):
        await store.read(sid, 0)
    with pytest.raises(StreamGapError):
        await collect(store, sid, after=gap.first_id - 2)
    # From the oldest kept id on, nothing is missing.
    events = await collect(store, sid, after=gap.first_id - 1)
    assert [e.id for e in events] == list(range(gap.first_id, 301))
    assert [e.id for e in await store.read(sid, 290)] == list(range(291, 301))


async def test_gap_for_a_follower_that_falls_behind_the_cap(harness: Harness) -> None:
    store = await harness.make(max_events=10)
    sid = await new_stream(store)
    await store.append(sid, "delta", payload(1))
    async with aclosing(store.follow(sid)) as events:
        first = await events.__anext__()
        assert first.id == 1
        # The follower is parked meanwhile; more events than the store keeps (10) and than
        # the Redis store's instance caches for its followers (256), even with the ones it
        # still has in flight to Redis (up to 256) on top.
        await fill(store, sid, 1000, finish=False)
        with pytest.raises(StreamGapError) as info:
            await events.__anext__()
    assert info.value.after == 1


# -- illegal use --------------------------------------------------------------------------------


async def test_finished_streams_take_no_more_events(store: Store) -> None:
    sid = await new_stream(store)
    await store.finish(sid, StreamStatus.ERROR, '{"code":"x"}', error={"code": "x"})
    with pytest.raises(IllegalTransitionError):
        await store.append(sid, "delta", payload(1))
    with pytest.raises(IllegalTransitionError):
        await store.finish(sid, StreamStatus.DONE, "{}")
    info = await store.get(sid)
    assert (info.status, info.last_event_id, info.error) == ("error", 1, {"code": "x"})


async def test_terminal_events_go_through_finish_and_data_is_one_line(store: Store) -> None:
    sid = await new_stream(store)
    for event in ("done", "error", "cancelled"):
        with pytest.raises(ValueError, match="finish"):
            await store.append(sid, event, "{}")
    with pytest.raises(ValueError, match="terminal"):
        await store.finish(sid, StreamStatus.RUNNING, "{}")
    with pytest.raises(ValueError, match="one line"):
        await store.append(sid, "delta", '{"a":\n1}')
    with pytest.raises(ValueError, match="CR or LF"):
        await store.append(sid, "delta\nevent: x", "{}")
    assert (await store.get(sid)).last_event_id == 0


async def test_unknown_streams_are_not_found(store: Store) -> None:
    for call in (
        store.get("st_nope"),
        store.read("st_nope"),
        collect(store, "st_nope"),
        store.append("st_nope", "delta", "{}"),
        store.finish("st_nope", StreamStatus.DONE, "{}"),
        store.request_cancel("st_nope"),
        store.wait_cancel("st_nope"),
        store.producer_alive("st_nope"),
        store.renew_lease("st_nope"),
    ):
        with pytest.raises(StreamNotFoundError) as info:
            await call
        assert info.value.code == "not_found"
    with pytest.raises(StreamNotFoundError):
        async with store.subscriber("st_nope"):
            pass
    assert await store.delete("st_nope") is False


# -- TTL, delete, close --------------------------------------------------------------------


async def test_finished_streams_expire_after_the_ttl(harness: Harness) -> None:
    store = await harness.make(finished_ttl=0.2, lease_ttl=30)
    done = await new_stream(store)
    running = await new_stream(store)
    await fill(store, done, 3)
    await harness.advance(0.1)
    assert (await store.get(done)).status is StreamStatus.DONE
    await harness.advance(0.2)
    with pytest.raises(StreamNotFoundError):
        await store.get(done)
    with pytest.raises(StreamNotFoundError):
        await collect(store, done)
    with pytest.raises(StreamNotFoundError):
        await store.read(done)
    assert (await store.get(running)).status is StreamStatus.RUNNING  # only finished expire


async def test_delete_stops_followers_and_signals_cancel(store: Store) -> None:
    sid = await new_stream(store)
    await store.append(sid, "delta", payload(1))
    outcome: list[object] = []

    async def follower() -> None:
        try:
            await collect(store, sid)
        except StreamNotFoundError as exc:
            outcome.append(exc)

    async def canceller() -> None:
        outcome.append(await store.wait_cancel(sid))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            tg.start_soon(canceller)
            await anyio.wait_all_tasks_blocked()
            assert outcome == []
            assert await store.delete(sid) is True
    assert "deleted" in outcome
    assert any(isinstance(o, StreamNotFoundError) for o in outcome)
    with pytest.raises(StreamNotFoundError):
        await store.get(sid)
    assert await store.delete(sid) is False


async def test_close_releases_waiting_followers(harness: Harness) -> None:
    store = await harness.make()
    sid = await new_stream(store)
    errors: list[Exception] = []

    async def follower() -> None:
        try:
            await collect(store, sid)
        except StoreUnavailableError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            await store.aclose()
    assert len(errors) == 1
    with pytest.raises(StoreUnavailableError):
        await store.get(sid)


# -- cancel, subscribers, lease --------------------------------------------------------------


async def test_cancel_signal(store: Store) -> None:
    sid = await new_stream(store)
    causes: list[str] = []

    async def waiter() -> None:
        causes.append(await store.wait_cancel(sid))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert causes == []
            assert not (await store.get(sid)).cancel_requested
            assert await store.request_cancel(sid) is True
        assert causes == ["client"]
        info = await store.get(sid)
        assert info.cancel_requested
        assert info.cause == "client"
        assert info.status is StreamStatus.RUNNING  # the producer ends it, not the store
        assert await store.request_cancel(sid, "other") is True
        assert await store.wait_cancel(sid) == "client"  # at once; the first cause stays

        other = await new_stream(store)
        await store.request_cancel(other, "disconnect")
        assert await store.wait_cancel(other) == "disconnect"

        finished = await new_stream(store)
        await fill(store, finished, 2)
        assert await store.request_cancel(finished) is False
        assert not (await store.get(finished)).cancel_requested


async def test_subscriber_accounting(store: Store) -> None:
    sid = await new_stream(store)
    assert (await store.get(sid)).subscribers == 0
    async with store.subscriber(sid):
        assert (await store.get(sid)).subscribers == 1
        async with store.subscriber(sid):
            assert (await store.get(sid)).subscribers == 2
        assert (await store.get(sid)).subscribers == 1
    assert (await store.get(sid)).subscribers == 0
    with pytest.raises(RuntimeError):
        async with store.subscriber(sid):
            raise RuntimeError("a subscriber that fails still counts out")
    assert (await store.get(sid)).subscribers == 0


async def test_wait_abandoned_counts_grace_from_the_last_subscriber(store: Store) -> None:
    sid = await new_stream(store)
    grace = 0.1
    # Nobody ever subscribed: the grace clock runs from now.
    t0 = anyio.current_time()
    with anyio.fail_after(5):
        await store.wait_abandoned(sid, grace)
    assert anyio.current_time() - t0 >= grace

    async with store.subscriber(sid):
        with anyio.move_on_after(3 * grace) as scope:
            await store.wait_abandoned(sid, grace)
        assert scope.cancelled_caught  # never while someone is subscribed

    # A subscriber coming back within the grace period resets it.
    returned_at: list[float] = []

    async def watcher() -> None:
        await store.wait_abandoned(sid, grace)
        returned_at.append(anyio.current_time())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher)
            await anyio.sleep(grace / 2)
            async with store.subscriber(sid):
                await anyio.sleep(2 * grace)
                assert returned_at == []
            left = anyio.current_time()
    assert returned_at[0] - left >= grace


async def test_lease_expires_unless_renewed(harness: Harness) -> None:
    store = await harness.make(lease_ttl=0.2, finished_ttl=30)
    sid = await new_stream(store)
    assert await store.producer_alive(sid)
    await harness.advance(0.1)
    await store.renew_lease(sid)
    await harness.advance(0.15)
    assert await store.producer_alive(sid)  # renewed 0.15 s ago
    await store.append(sid, "delta", payload(1))  # appending renews too
    await harness.advance(0.15)
    assert await store.producer_alive(sid)
    await harness.advance(0.1)
    assert not await store.producer_alive(sid)
    with pytest.raises(ProducerLostError) as info:
        await collect(store, sid)
    assert info.value.code == "producer_lost"
    # A finished stream's followers don't care about the lease.
    await store.finish(sid, StreamStatus.DONE, "{}")
    assert [e.id for e in await collect(store, sid)] == [1, 2]
    assert not await store.producer_alive(sid)


# -- aliases (a front door's own name for a stream, e.g. a chat id) -------------------------


async def test_an_alias_points_at_the_last_stream_set(store: Store) -> None:
    first = await new_stream(store)
    second = await new_stream(store)
    assert await store.get_alias("chat:a") is None
    assert await store.set_alias("chat:a", first, ttl=60) is None
    assert await store.get_alias("chat:a") == first
    assert await store.set_alias("chat:a", second, ttl=60) == first  # the one it replaced
    assert await store.get_alias("chat:a") == second
    assert await store.get_alias("chat:b") is None  # names are apart
    await store.set_alias("chat:b", first, ttl=60)
    assert (await store.get_alias("chat:a"), await store.get_alias("chat:b")) == (second, first)


async def test_an_alias_ends_with_its_stream(harness: Harness) -> None:
    store = await harness.make(finished_ttl=0.2, lease_ttl=30)
    done = await new_stream(store)
    deleted = await new_stream(store)
    await store.set_alias("chat:done", done, ttl=60)
    await store.set_alias("chat:deleted", deleted, ttl=60)
    await fill(store, done, 2)
    assert await store.get_alias("chat:done") == done  # finished, still kept
    await store.delete(deleted)
    assert await store.get_alias("chat:deleted") is None
    await harness.advance(0.3)
    assert await store.get_alias("chat:done") is None  # expired with the stream
    # Setting an alias whose old stream is gone reports nothing replaced.
    fresh = await new_stream(store)
    assert await store.set_alias("chat:deleted", fresh, ttl=60) is None


async def test_an_alias_lasts_its_ttl_at_most(harness: Harness) -> None:
    store = await harness.make(lease_ttl=30)
    sid = await new_stream(store)
    await store.set_alias("chat:short", sid, ttl=0.2)
    await harness.advance(0.1)
    assert await store.get_alias("chat:short") == sid
    await harness.advance(0.2)
    assert await store.get_alias("chat:short") is None
    assert (await store.get(sid)).status is StreamStatus.RUNNING  # the stream lives on


async def test_an_alias_needs_a_kept_stream_and_a_name(store: Store) -> None:
    with pytest.raises(StreamNotFoundError):
        await store.set_alias("chat:x", "st_nope", ttl=60)
    assert await store.get_alias("chat:x") is None
    sid = await new_stream(store)
    with pytest.raises(ValueError, match="empty"):
        await store.set_alias("", sid, ttl=60)
    for ttl in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            await store.set_alias("chat:x", sid, ttl=ttl)


# -- memory store specifics -----------------------------------------------------------------


async def test_memory_ring_keeps_exactly_max_events() -> None:
    async with MemoryStore(MemoryStoreConfig(max_events=5)) as store:
        sid = await new_stream(store)
        await fill(store, sid, 12, finish=False)
        assert [e.id for e in await store.read(sid, 7)] == [8, 9, 10, 11, 12]
        with pytest.raises(StreamGapError) as info:
            await store.read(sid, 6)
        assert info.value.first_id == 8
        assert store.statistics().events == 5


async def test_memory_followers_wait_on_the_portable_path_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever the asyncio check answers, following works: here it answers "not asyncio".
    monkeypatch.setattr(_aio, "asyncio_loop", lambda: None)
    async with MemoryStore() as store:
        sid = await new_stream(store)
        got: list[int] = []

        async def follower() -> None:
            got.extend(e.id for e in await collect(store, sid))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            for i in range(1, 4):
                await anyio.wait_all_tasks_blocked()
                waiters = store._streams[sid].waiters
                assert len(waiters) == 1
                assert isinstance(waiters[0], anyio.Event)
                await store.append(sid, "delta", payload(i))
            await store.finish(sid, StreamStatus.DONE, "{}")
        assert got == [1, 2, 3, 4]


def test_stored_events_are_immutable_values() -> None:
    event = StoredEvent.build(3, "delta", '{"a":1}')
    assert event.encoded == b'id: 3\nevent: delta\ndata: {"a":1}\n\n'
    assert (event.id, event.event, event.data) == (3, "delta", '{"a":1}')
    assert event == StoredEvent.build(3, "delta", '{"a":1}')
    assert hash(event) == hash(StoredEvent.build(3, "delta", '{"a":1}'))
    assert event != StoredEvent.build(4, "delta", '{"a":1}')
    assert repr(event) == "StoredEvent(id=3, event='delta', data='{\"a\":1}')"
    for name in ("id", "event", "data", "encoded", "other"):
        with pytest.raises(AttributeError):
            setattr(event, name, 1)
    for bad in ("a\nb", "a\rb"):
        with pytest.raises(ValueError, match="one line"):
            StoredEvent.build(1, "delta", bad)
    with pytest.raises(ValueError, match="must not contain"):
        StoredEvent.build(1, "del\nta", "{}")


async def test_memory_followers_share_the_encoded_bytes() -> None:
    async with MemoryStore() as store:
        sid = await new_stream(store)
        await fill(store, sid, 3)
        a, b = await collect(store, sid), await collect(store, sid)
        assert all(x.encoded is y.encoded for x, y in zip(a, b, strict=True))


async def test_memory_full_store_evicts_finished_streams_before_refusing() -> None:
    clock = FakeClock()
    async with MemoryStore(MemoryStoreConfig(max_streams=3, finished_ttl=10), clock=clock) as s:
        first = await new_stream(s)
        await fill(s, first, 1)
        clock.now += 1
        second = await new_stream(s)
        await fill(s, second, 1)
        running = await new_stream(s)
        # Full: the oldest finished stream makes room, although its TTL has not passed.
        fourth = await new_stream(s)
        with pytest.raises(StreamNotFoundError):
            await s.get(first)
        assert (await s.get(second)).status is StreamStatus.DONE
        fifth = await new_stream(s)
        with pytest.raises(StreamNotFoundError):
            await s.get(second)
        # Full of running streams: refuse.
        with pytest.raises(StoreFullError) as info:
            await new_stream(s)
        assert info.value.retryable
        assert {(await s.get(x)).status for x in (running, fourth, fifth)} == {"running"}
        assert s.statistics().streams == 3
        # Finishing one and letting its TTL pass frees room through the sweep.
        await fill(s, fifth, 1)
        clock.now += 11
        await new_stream(s)
        assert s.statistics().streams == 3


async def test_memory_refuses_duplicate_ids_and_bad_config() -> None:
    async with MemoryStore() as store:
        await store.create("st_x", model="m", provider="p")
        with pytest.raises(ValueError, match="exists"):
            await store.create("st_x", model="m", provider="p")
    for bad in ({"max_streams": 0}, {"max_events": 0}, {"finished_ttl": 0}, {"lease_ttl": -1}):
        with pytest.raises(ValueError, match="must be"):
            MemoryStoreConfig(**bad)


async def test_memory_statistics() -> None:
    async with MemoryStore() as store:
        a = await new_stream(store)
        b = await new_stream(store)
        await fill(store, a, 4)
        await store.append(b, "delta", "{}")
        async with store.subscriber(b), aclosing(store.follow(b)) as events:
            assert (await events.__anext__()).id == 1
            stats = store.statistics()
            assert (stats.streams, stats.running, stats.events) == (2, 1, 5)
            assert (stats.subscribers, stats.followers) == (1, 1)
        stats = store.statistics()
        assert (stats.subscribers, stats.followers) == (0, 0)
        await store.delete(a)
        assert (store.statistics().streams, store.statistics().events) == (1, 1)


async def test_memory_aliases_stay_bounded() -> None:
    clock = FakeClock()
    async with MemoryStore(MemoryStoreConfig(max_streams=3, finished_ttl=1), clock=clock) as store:
        live = await new_stream(store)
        for n in range(2):
            gone = await new_stream(store)
            await store.set_alias(f"dead{n}", gone, ttl=60)
            await store.delete(gone)
        for n in range(10):  # many names for one live stream: the oldest make room
            await store.set_alias(f"live{n}", live, ttl=60)
        assert len(store._aliases) <= 2 * 3
        assert await store.get_alias("live9") == live
        assert await store.get_alias("dead0") is None
        assert await store.get_alias("live0") is None
