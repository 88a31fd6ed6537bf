"""Graceful shutdown of a real ``ssegate serve`` process on SIGTERM.

On SIGTERM the gateway turns unready and refuses new streams (503) while it still listens,
lets running generations finish for up to ``--drain-timeout``, cancels what is left (cause
``shutdown``), then ends open event streams cleanly at a resumable position and exits 0.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from instance_helpers import GatewayProcess, RedisServer, running_gateways, running_redis
from ssegate import Decoder
from ssegate.testing import MockUpstream

pytestmark = pytest.mark.anyio

Event = tuple[int | None, str, dict[str, Any]]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream() as upstream:
        yield upstream


def gateway(mock: MockUpstream, *extra: str) -> GatewayProcess:
    return GatewayProcess(
        "--provider", "openai", "--base-url", mock.url + "/v1", "--model", "mock", *extra
    )


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    decoder = Decoder()
    async for chunk in response.aiter_raw():
        for event in decoder.feed(chunk):
            yield int(event.id or 0), event.event or "message", json.loads(event.data or "null")


async def test_sigterm_lets_the_generation_finish_refuses_new_work_and_exits_0(
    mock: MockUpstream,
) -> None:
    # 40 tokens, 50 ms apart: about 2 s of generation after SIGTERM, well within the drain.
    with running_gateways(gateway(mock, "--drain-timeout", "20")) as (gw,):
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            got: list[Event] = []
            async with client.stream(
                "POST",
                "/v1/streams",
                json=ask("[[tokens:40]] [[interval_ms:50]]"),
                headers={"Accept": "text/event-stream"},
            ) as response:
                async for event in events(response):
                    got.append(event)
                    if len(got) == 3:
                        gw.signal(signal.SIGTERM)
                        signalled = time.monotonic()
                        # Still listening, but unready and refusing new streams.
                        ready = await client.get("/readyz")
                        assert ready.status_code == 503
                        assert ready.json()["checks"]["accepting"] is False
                        refused = await client.post("/v1/streams", json=ask("hi"))
                        assert refused.status_code == 503
                        assert refused.json()["error"]["code"] == "shutting_down"
                        assert refused.headers["retry-after"]
        # The running generation was not cut: every event up to done.
        assert [e[0] for e in got] == list(range(1, 44))
        assert got[-1][1:] == ("done", {"finish_reason": "stop"})
        code = await anyio.to_thread.run_sync(gw.wait, 20)
        assert code == 0, gw.log
        assert time.monotonic() - signalled < 20
        assert "draining 1 generation(s)" in gw.log


async def test_generations_past_the_drain_timeout_end_cancelled_and_the_exit_is_0(
    mock: MockUpstream,
) -> None:
    with running_gateways(gateway(mock, "--drain-timeout", "1")) as (gw,):
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            got: list[Event] = []
            async with client.stream(
                "POST",
                "/v1/streams",
                json=ask("[[tokens:5000]] [[interval_ms:20]]"),
                headers={"Accept": "text/event-stream"},
            ) as response:
                async for event in events(response):
                    got.append(event)
                    if len(got) == 3:
                        gw.signal(signal.SIGTERM)
                        signalled = time.monotonic()
        assert got[-1][1:] == ("cancelled", {"cause": "shutdown"})
        assert 1.0 <= time.monotonic() - signalled < 5
        assert [e[0] for e in got] == list(range(1, len(got) + 1))
        assert await anyio.to_thread.run_sync(gw.wait, 20) == 0, gw.log
    assert mock.requests[-1].cancelled  # the upstream request was closed, not left running


@pytest.mark.redis
async def test_followers_are_closed_resumably_and_resume_on_another_instance(
    mock: MockUpstream,
) -> None:
    with (
        running_redis() as redis,
        running_gateways(
            gateway(mock, "--store", redis.url), gateway(mock, "--store", redis.url)
        ) as (a, b),
    ):
        assert isinstance(redis, RedisServer)
        async with httpx.AsyncClient(timeout=10) as client:
            created = await client.post(
                b.url + "/v1/streams", json=ask("[[tokens:150]] [[interval_ms:10]]")
            )
            url = created.json()["events_url"]
            got: list[Event] = []
            # Follow on A, which is told to stop: it generates nothing, so it drains at once
            # and closes the stream cleanly (no terminal event) where the client is.
            async with client.stream("GET", a.url + url) as response:
                async for event in events(response):
                    got.append(event)
                    if len(got) == 5:
                        a.signal(signal.SIGTERM)
            assert got[-1][1] not in ("done", "error", "cancelled")
            assert await anyio.to_thread.run_sync(a.wait, 20) == 0, a.log
            # EventSource would now reconnect with Last-Event-ID — to B.
            headers = {"Last-Event-ID": str(got[-1][0])}
            async with client.stream("GET", b.url + url, headers=headers) as response:
                got += [event async for event in events(response)]
    assert [e[0] for e in got] == list(range(1, 154))
    assert got[-1][1] == "done"


async def test_a_drain_waits_for_the_followers_of_its_own_streams_only() -> None:
    # After the drain's generations are over, their followers here still have the last events
    # to write: the drain waits for the responses of those streams, not for any other.
    from ssegate.gateway._event_streams import EventStreamTracker, TrackedEventSourceResponse

    tracker = EventStreamTracker()
    last_events = {"local": anyio.Event(), "remote": anyio.Event()}

    async def body(name: str) -> AsyncIterator[str]:
        yield "first"
        await last_events[name].wait()
        yield "last"

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "GET", "headers": []}
    async with anyio.create_task_group() as tg:
        for name in last_events:
            response = TrackedEventSourceResponse(body(name), stream_id=name, tracker=tracker)
            tg.start_soon(response, scope, receive, send)
        await anyio.wait_all_tasks_blocked()
        assert sorted(r.stream_id for r in tracker.live()) == ["local", "remote"]
        with anyio.move_on_after(0.2) as waited:
            await tracker.until_closed({"local"})
        assert waited.cancelled_caught  # its follower has not written its last event yet
        last_events["local"].set()
        with anyio.fail_after(5):
            await tracker.until_closed({"local"})  # the remote stream's follower is still open
        assert [r.stream_id for r in tracker.live()] == ["remote"]
        tg.cancel_scope.cancel()
