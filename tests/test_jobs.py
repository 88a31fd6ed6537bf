"""Detached generations: provider deltas → stream events, cancel, on_disconnect, drain.

The providers here are small in-test async generators implementing the Provider protocol; the
real providers are tested against the mock upstream elsewhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import orjson
import pytest

from ssegate._jobs import JobManager, JobObserver, ShuttingDownError, new_stream_id
from ssegate.providers import (
    ChatRequest,
    Delta,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamHTTPError,
    Usage,
)
from ssegate.store import (
    MemoryStore,
    MemoryStoreConfig,
    Store,
    StoredEvent,
    StoreFullError,
    StoreUnavailableError,
    StreamNotFoundError,
    StreamStatus,
)

pytestmark = pytest.mark.anyio

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="upstream-model")


class ScriptedProvider:
    """Yields ``deltas``, then raises ``fail``, blocks forever (``hang``) or ends."""

    name = "scripted"

    def __init__(
        self, deltas: Sequence[Delta] = (), *, fail: BaseException | None = None, hang: bool = False
    ):
        self.deltas = deltas
        self.fail = fail
        self.hang = hang
        self.yielded = 0
        self.closed = anyio.Event()
        self.closed_at = 0.0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        try:
            for delta in self.deltas:
                yield delta
                self.yielded += 1
                await anyio.sleep(0)
            if self.fail is not None:
                raise self.fail
            if self.hang:
                await anyio.sleep_forever()
        finally:
            # Where a real provider closes its upstream response.
            self.closed_at = anyio.current_time()
            self.closed.set()

    async def aclose(self) -> None:
        pass


class FeedProvider(ScriptedProvider):
    """Yields whatever the test feeds it, one delta at a time; ends when ``end()`` is called."""

    name = "feed"

    def __init__(self) -> None:
        super().__init__()
        self._send, self._receive = anyio.create_memory_object_stream[Delta](16)

    async def feed(self, *deltas: Delta) -> None:
        for delta in deltas:
            await self._send.send(delta)

    def end(self) -> None:
        self._send.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        try:
            async for delta in self._receive:
                yield delta
        finally:
            self.closed_at = anyio.current_time()
            self.closed.set()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()


async def events_of(store: Store, stream_id: str) -> list[StoredEvent]:
    """The whole stream, waiting for its end."""
    with anyio.fail_after(10):
        async with aclosing(store.follow(stream_id)) as events:
            return [event async for event in events]


def shape(events: list[StoredEvent]) -> list[tuple[int, str, Any]]:
    return [(e.id, e.event, orjson.loads(e.data)) for e in events]


# -- the event sequence --------------------------------------------------------------------


async def test_deltas_become_the_protocol_event_sequence() -> None:
    provider = ScriptedProvider(
        [
            ReasoningDelta("thinking"),
            TextDelta("Hel"),
            TextDelta('lo "\n'),
            ToolCallDelta(0, id="call_1", name="lookup", arguments='{"q":'),
            ToolCallDelta(0, arguments='"x"}'),
            Finish("tool_calls"),
            Usage(prompt_tokens=7, completion_tokens=5),
        ]
    )
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, model_label="demo/model", owner="key-a")
        assert info.status is StreamStatus.RUNNING
        assert info.last_event_id == 1
        assert (info.model, info.provider, info.owner) == ("demo/model", "scripted", "key-a")
        events = await events_of(store, info.id)
        final = await store.get(info.id)
    assert shape(events) == [
        (1, "start", {"stream_id": info.id, "model": "demo/model", "created": int(info.created)}),
        (2, "reasoning", {"text": "thinking"}),
        (3, "delta", {"text": "Hel"}),
        (4, "delta", {"text": 'lo "\n'}),
        (5, "tool_call", {"index": 0, "id": "call_1", "name": "lookup", "arguments": '{"q":'}),
        (6, "tool_call", {"index": 0, "arguments": '"x"}'}),
        (7, "usage", {"prompt_tokens": 7, "completion_tokens": 5}),
        (8, "done", {"finish_reason": "tool_calls"}),
    ]
    assert all("\n" not in e.data for e in events)
    assert final.status is StreamStatus.DONE
    assert final.usage == {"prompt_tokens": 7, "completion_tokens": 5}
    assert final.cause is None
    assert provider.closed.is_set()


async def test_start_returns_at_once_and_the_job_runs_detached() -> None:
    provider = FeedProvider()
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST)
        assert info.model == "upstream-model"  # the label defaults to the request's model
        assert jobs.active() == 1
        assert (await store.get(info.id)).last_event_id == 1
        await provider.feed(TextDelta("a"), TextDelta("b"))
        provider.end()
        events = await events_of(store, info.id)
        await anyio.wait_all_tasks_blocked()
        assert jobs.active() == 0
    await provider.aclose()
    # No Finish and no Usage from the provider: done says "stop" and no usage event is made.
    assert [(e.event, e.data) for e in events[1:]] == [
        ("delta", '{"text":"a"}'),
        ("delta", '{"text":"b"}'),
        ("done", '{"finish_reason":"stop"}'),
    ]


async def test_stream_ids_are_unguessable() -> None:
    ids = {new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"st_[A-Za-z0-9_-]{22}", i) for i in ids)  # 22 base64 chars: 132 bits


# -- failures ------------------------------------------------------------------------------


async def test_upstream_error_ends_the_stream_with_its_wire_form() -> None:
    provider = ScriptedProvider([TextDelta("a")], fail=UpstreamHTTPError("slow down", status=429))
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST)
        events = await events_of(store, info.id)
        final = await store.get(info.id)
    error = {"code": "upstream_rate_limited", "message": "slow down", "retryable": True}
    assert shape(events)[1:] == [(2, "delta", {"text": "a"}), (3, "error", error)]
    assert final.status is StreamStatus.ERROR
    assert final.error == error


async def test_unexpected_exception_is_an_internal_error_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = ScriptedProvider([TextDelta("a")], fail=RuntimeError("secret detail"))
    caplog.set_level(logging.ERROR, logger="ssegate.jobs")
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST)
        events = await events_of(store, info.id)
        final = await store.get(info.id)
    assert events[-1].event == "error"
    assert orjson.loads(events[-1].data) == {
        "code": "internal",
        "message": "internal error",
        "retryable": False,
    }
    assert "secret detail" not in events[-1].data
    assert final.status is StreamStatus.ERROR
    logged = [r for r in caplog.records if r.exc_info]
    assert logged
    assert "secret detail" in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_store_full_refuses_the_start() -> None:
    async with (
        MemoryStore(MemoryStoreConfig(max_streams=1)) as store,
        JobManager(store) as jobs,
    ):
        blocker = ScriptedProvider(hang=True)
        await jobs.start(blocker, REQUEST, on_disconnect="continue")
        with pytest.raises(StoreFullError):
            await jobs.start(ScriptedProvider(), REQUEST)
        assert jobs.active() == 1


async def test_bad_options_are_refused() -> None:
    async with MemoryStore() as store, JobManager(store) as jobs:
        with pytest.raises(ValueError, match="on_disconnect"):
            await jobs.start(ScriptedProvider(), REQUEST, on_disconnect="ignore")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="grace"):
            await jobs.start(ScriptedProvider(), REQUEST, grace=-1)
        with pytest.raises(ValueError, match="max_duration"):
            await jobs.start(ScriptedProvider(), REQUEST, max_duration=0)
        assert store.statistics().streams == 0


# -- cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["jobs", "store"])
async def test_cancel_closes_the_provider_promptly(via: str) -> None:
    provider = ScriptedProvider([TextDelta("a")], hang=True)
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, on_disconnect="continue")
        while provider.yielded < 1:  # the delta is out; the provider now awaits upstream
            await anyio.wait_all_tasks_blocked()
        t0 = anyio.current_time()
        if via == "jobs":
            assert await jobs.cancel(info.id) is True
        else:  # what a DELETE on another instance does
            assert await store.request_cancel(info.id) is True
        with anyio.fail_after(5):
            await provider.closed.wait()
        assert provider.closed_at - t0 < 0.1
        events = await events_of(store, info.id)
        final = await store.get(info.id)
        assert await jobs.cancel(info.id) is False  # already finished
        with pytest.raises(StreamNotFoundError):
            await jobs.cancel("st_unknown")
    assert shape(events)[1:] == [(2, "delta", {"text": "a"}), (3, "cancelled", {"cause": "client"})]
    assert final.status is StreamStatus.CANCELLED
    assert final.cause == "client"
    assert final.cancel_requested


class SlowAppendStore(MemoryStore):
    """A store whose appends take a while, like a network round trip to Redis."""

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        await anyio.sleep(0.01)
        return await super().append(stream_id, event, data)


class EndlessProvider(ScriptedProvider):
    """Yields forever; closing it takes an await, as closing an HTTP response does."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = anyio.Event()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        try:
            while True:
                yield TextDelta("x")
                self.yielded += 1
                if self.yielded == 3:
                    self.busy.set()
        finally:
            await anyio.sleep(0.001)  # unshielded by the provider itself
            self.closed_at = anyio.current_time()
            self.closed.set()


async def test_cancel_while_the_provider_is_suspended_at_yield_still_closes_it() -> None:
    provider = EndlessProvider()
    async with SlowAppendStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, on_disconnect="continue")
        await provider.busy.wait()
        # The job is inside store.append now, the provider parked at its `yield`.
        t0 = anyio.current_time()
        await jobs.cancel(info.id)
        with anyio.fail_after(5):
            await provider.closed.wait()
        assert provider.closed_at - t0 < 0.1
        events = await events_of(store, info.id)
    assert events[-1].event == "cancelled"


class DeafStore(MemoryStore):
    """A store whose cancel channel is down (a Redis pub/sub outage)."""

    async def wait_cancel(self, stream_id: str) -> str:
        raise StoreUnavailableError("pub/sub is down")


async def test_a_local_cancel_works_without_the_store_cancel_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = ScriptedProvider(hang=True)
    async with DeafStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, on_disconnect="continue")
        await anyio.wait_all_tasks_blocked()
        assert await jobs.cancel(info.id) is True
        events = await events_of(store, info.id)
    assert events[-1].event == "cancelled"
    assert "pub/sub is down" in caplog.text


async def test_max_duration_ends_with_a_timeout_error() -> None:
    provider = ScriptedProvider([TextDelta("a")], hang=True)
    async with MemoryStore() as store, JobManager(store) as jobs:
        t0 = anyio.current_time()
        info = await jobs.start(provider, REQUEST, on_disconnect="continue", max_duration=0.1)
        events = await events_of(store, info.id)
        final = await store.get(info.id)
    assert anyio.current_time() - t0 >= 0.1
    assert provider.closed.is_set()
    assert events[-1].event == "error"
    assert orjson.loads(events[-1].data)["code"] == "timeout"
    assert (final.status, final.cause) == (StreamStatus.ERROR, "timeout")


# -- on_disconnect -------------------------------------------------------------------------


async def test_disconnect_policy_cancels_after_grace_without_subscriber() -> None:
    provider = ScriptedProvider(hang=True)
    grace = 0.2
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, grace=grace)
        t0 = anyio.current_time()
        with anyio.fail_after(5):
            await provider.closed.wait()
        assert (await events_of(store, info.id))[-1].event == "cancelled"
        final = await store.get(info.id)
    assert provider.closed_at - t0 >= grace * 0.95  # not before the grace period (timer slack)
    assert (final.status, final.cause) == (StreamStatus.CANCELLED, "disconnect")
    assert not final.cancel_requested  # no one asked; the policy did it


async def test_a_subscriber_and_a_quick_resubscribe_keep_the_generation() -> None:
    provider = ScriptedProvider(hang=True)
    grace = 0.15
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, grace=grace)
        async with store.subscriber(info.id):
            await anyio.sleep(3 * grace)
            assert not provider.closed.is_set()
        await anyio.sleep(grace / 3)  # a network blip
        async with store.subscriber(info.id):
            await anyio.sleep(3 * grace)
            assert not provider.closed.is_set()
            assert (await store.get(info.id)).status is StreamStatus.RUNNING
        left = anyio.current_time()
        with anyio.fail_after(5):
            await provider.closed.wait()
        assert provider.closed_at - left >= grace * 0.95
        await events_of(store, info.id)
        assert (await store.get(info.id)).cause == "disconnect"


async def test_continue_policy_generates_to_the_end_and_records_usage() -> None:
    provider = FeedProvider()
    async with MemoryStore() as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, on_disconnect="continue", grace=0.05)
        async with store.subscriber(info.id):
            pass
        await anyio.sleep(0.3)  # far past the grace period, nobody subscribed
        assert not provider.closed.is_set()
        await provider.feed(TextDelta("late"), Finish("length"), Usage(3, 9))
        provider.end()
        events = await events_of(store, info.id)
        final = await store.get(info.id)
    await provider.aclose()
    assert [e.event for e in events] == ["start", "delta", "usage", "done"]
    assert final.status is StreamStatus.DONE
    assert final.usage == {"prompt_tokens": 3, "completion_tokens": 9}


# -- lease, drain, shutdown, observer ------------------------------------------------------


async def test_the_job_renews_its_lease() -> None:
    provider = ScriptedProvider(hang=True)
    async with MemoryStore(MemoryStoreConfig(lease_ttl=0.09)) as store, JobManager(store) as jobs:
        info = await jobs.start(provider, REQUEST, on_disconnect="continue")
        await anyio.sleep(0.3)  # more than three lease lifetimes, no events appended
        assert await store.producer_alive(info.id)
        await jobs.cancel(info.id)


async def test_drain_waits_for_running_jobs_then_cancels_the_rest() -> None:
    quick, stuck = FeedProvider(), ScriptedProvider(hang=True)
    async with MemoryStore() as store, JobManager(store) as jobs:
        a = await jobs.start(quick, REQUEST, on_disconnect="continue")
        b = await jobs.start(stuck, REQUEST, on_disconnect="continue")
        cancelled: list[int] = []

        async def drain() -> None:
            cancelled.append(await jobs.drain(0.3))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(ShuttingDownError) as refused:
                await jobs.start(ScriptedProvider(), REQUEST)
            assert refused.value.retryable
            await quick.feed(TextDelta("x"))
            quick.end()  # finishes within the drain's grace
        assert cancelled == [1]
        assert jobs.active() == 0
        info_a, info_b = await store.get(a.id), await store.get(b.id)
    await quick.aclose()
    assert info_a.status is StreamStatus.DONE
    assert (info_b.status, info_b.cause) == (StreamStatus.CANCELLED, "shutdown")
    assert stuck.closed.is_set()


async def test_leaving_the_manager_cancels_what_still_runs() -> None:
    provider = ScriptedProvider(hang=True)
    async with MemoryStore() as store:
        async with JobManager(store) as jobs:
            info = await jobs.start(provider, REQUEST, on_disconnect="continue")
        final = await store.get(info.id)
        events = await store.read(info.id)
    assert provider.closed.is_set()
    assert (final.status, final.cause) == (StreamStatus.CANCELLED, "shutdown")
    assert events[-1].event == "cancelled"


class RecordingObserver(JobObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_start(self, info: Any) -> None:
        self.calls.append(("start", info.id))

    def on_first_token(self, stream_id: str, latency: float) -> None:
        assert latency >= 0
        self.calls.append(("first_token", stream_id))

    def on_finish(
        self, stream_id: str, status: Any, cause: Any, duration: float, usage: Any
    ) -> None:
        self.calls.append(("finish", stream_id, status, cause, usage))
        raise RuntimeError("observers can't break jobs")


async def test_observer_hears_start_first_token_and_finish() -> None:
    observer = RecordingObserver()
    provider = ScriptedProvider([TextDelta("a"), TextDelta("b"), Usage(1, 2)])
    async with MemoryStore() as store, JobManager(store, observer=observer) as jobs:
        info = await jobs.start(provider, REQUEST)
        await events_of(store, info.id)
        await anyio.wait_all_tasks_blocked()
    usage = {"prompt_tokens": 1, "completion_tokens": 2}
    assert observer.calls == [
        ("start", info.id),
        ("first_token", info.id),
        ("finish", info.id, StreamStatus.DONE, None, usage),
    ]
