"""A Redis Cluster failover under running streams, end to end: two gateways on a local cluster
of their own (A produces, B follows over sharded pub/sub), the master of one stream's slot
killed mid-stream, its replica promoted.

What a client may see, and what the test holds the gateway to:

* each live stream of the failed shard either completes (``done``) or ends with an ``error``
  event that says ``retryable`` — never a cut-off body, never a stall;
* the events a client saw have consecutive ids, none doubled, and none is contradicted by what
  the store kept (the same id never means two different events);
* a resume from the last id a client saw, on the other instance, returns exactly the kept
  events after it — what a full replay from the store returns — or, if the client saw events
  the dead master acknowledged but had not replicated (Redis replication is asynchronous),
  ``409 invalid_last_event_id``, as docs/scaling.md says;
* the stream ends (finished or failed) within bounded time, it is not left ``running``;
* a stream on another shard, followed on B, streams on to its end, every event once: B
  reconnects every shard's pub/sub connection after the failure, resubscribes what it
  watches, and has its followers re-read what they may have missed.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from cluster_helpers import LocalCluster, running_cluster
from gateway_helpers import Gateway, ask, running_gateway, sse_events
from ssegate.store import StoreError, StreamGapError, StreamStatus
from ssegate.store._redis_keys import stream_keys
from ssegate.store.redis import RedisStore, RedisStoreConfig
from ssegate.testing import MockUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

PREFIX = "ssegate:"  # the gateways' default --redis-prefix
TOKENS = 150  # per stream, one every 25 ms: still running when the kill comes
PROMPT = f"[[tokens:{TOKENS}]] [[interval_ms:25]]"

#: (id, type, data, seconds since the test began reading).
Event = tuple[int, str, dict[str, Any], float]


async def read_events(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Any]:
    """``(id, type, data)`` of every event of a finished stream after ``Last-Event-ID``."""
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        return [
            (int(e.id or 0), e.event or "", json.loads(e.data or "null"))
            async for e in sse_events(response)
        ]


def numbered(seen: list[Event]) -> list[tuple[int, str, dict[str, Any]]]:
    """What a live reader saw, checked to end as the gateway promises (``done``, or an
    ``error`` that says retryable), without the last one if it had no id of its own (a
    reader's fault: the decoder keeps the previous id); ids consecutive from 1."""
    assert seen, "the reader got nothing"
    last_type, last_data = seen[-1][1:3]
    assert last_type in ("done", "error"), seen[-3:]
    if last_type == "error":
        assert last_data["retryable"] is True, last_data
    events = [e[:3] for e in seen]
    if len(events) > 1 and events[-1][0] == events[-2][0]:
        events.pop()  # the id-less error of a reader's fault
    assert [e[0] for e in events] == list(range(1, len(events) + 1)), [e[0] for e in seen]
    return events


async def create(client: httpx.AsyncClient, gateway: Gateway) -> dict[str, Any]:
    created = await client.post(
        gateway.url + "/v1/streams", json=ask(PROMPT, on_disconnect="continue")
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def master_port(cluster: LocalCluster, body: dict[str, Any]) -> int:
    return cluster.master_of(stream_keys(PREFIX, body["id"])[0]).port


async def test_a_master_killed_under_a_running_stream(mock: MockUpstream) -> None:
    with (
        running_cluster() as cluster,
        # A long lease: a follower must not give up on a producer while a shard fails over
        # (a couple of seconds with the cluster's 1 s node timeout).
        running_gateway(mock, store=cluster.url, lease_ttl=10, heartbeat=1) as a,
        running_gateway(mock, store=cluster.url, lease_ttl=10, heartbeat=1) as b,
    ):
        async with httpx.AsyncClient(timeout=20) as client:
            target = await create(client, a)
            key = stream_keys(PREFIX, target["id"])[0]
            old_master = await anyio.to_thread.run_sync(master_port, cluster, target)
            # A bystander on another shard (a third of the ids land on the same one).
            while True:
                bystander = await create(client, a)
                if await anyio.to_thread.run_sync(master_port, cluster, bystander) != old_master:
                    break
                await client.delete(a.url + bystander["status_url"])

            began = time.monotonic()
            seen: dict[str, list[Event]] = {"a": [], "b": [], "bystander": [], "bystander_a": []}
            enough = anyio.Event()

            async def follow(name: str, url: str) -> None:
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    async for e in sse_events(response):
                        data = json.loads(e.data or "{}")
                        at = time.monotonic() - began
                        seen[name].append((int(e.id or 0), e.event or "", data, at))
                        if min(len(s) for s in seen.values()) >= 10:
                            enough.set()

            with anyio.fail_after(25):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow, "a", a.url + target["events_url"])  # local follower
                    tg.start_soon(follow, "b", b.url + target["events_url"])  # over pub/sub
                    tg.start_soon(follow, "bystander", b.url + bystander["events_url"])
                    tg.start_soon(follow, "bystander_a", a.url + bystander["events_url"])
                    await enough.wait()
                    assert seen["b"][-1][1] == "delta"  # still running
                    # Blocks until the replica serves the slot: in a thread.
                    new_master = await anyio.to_thread.run_sync(cluster.fail_over_by_kill, key)
                    assert new_master.port != old_master

            # The stream ended (bounded): finished, or failed with a typed error.
            status_url = target["status_url"]
            with anyio.fail_after(15):
                while (info := (await client.get(b.url + status_url)).json())["status"] == (
                    "running"
                ):
                    await anyio.sleep(0.05)  # another server's state: poll it, bounded
            assert info["status"] in ("done", "error"), info
            if info["status"] == "error":
                assert info["error"]["retryable"] is True, info

            # What the store kept: a full replay (from either instance, the same). If the
            # dead master had acknowledged events its replica never got, the replay stops at
            # the hole with an (id-less) `gap` error, and the terminal event comes after
            # every id a client may have seen (test_events_a_failover_lost_... below).
            events_url = target["events_url"]
            kept = await read_events(client, a.url + events_url, {})
            assert kept == await read_events(client, b.url + events_url, {})
            hole = kept[-1][1] == "error" and kept[-1][2]["code"] == "gap"
            up_to_hole = kept[:-1] if hole else kept
            assert [e[0] for e in up_to_hole] == list(range(1, len(up_to_hole) + 1))
            assert kept[0][1] == "start"
            if not hole:
                assert kept[-1][1] in ("done", "error")
                assert info["last_event_id"] == len(kept)

            for name, other in (("a", b), ("b", a)):
                got = numbered(seen[name])
                # Nothing the client saw is contradicted by what the store kept.
                shared = min(len(got), len(up_to_hole))
                assert got[:shared] == up_to_hole[:shared], name
                last = got[-1][0]
                headers = {"Last-Event-ID": str(last)}
                if last < len(up_to_hole):
                    # Exactly the kept events after it, none doubled (then the hole, if any).
                    resumed = await read_events(client, other.url + events_url, headers)
                    assert got + resumed == kept, name
                elif last == info["last_event_id"]:
                    end = await client.get(other.url + events_url, headers=headers)
                    assert end.status_code == 204, name
                else:
                    # It saw events the failover lost: it is told of the hole or gets the end.
                    resumed = await read_events(client, other.url + events_url, headers)
                    assert resumed[-1][1] == "error", name
                    assert (
                        resumed[-1][2]["code"] == "gap" or resumed[-1][0] == (info["last_event_id"])
                    ), name

            # The bystander's shard did not fail: its followers got every event once, and the
            # one on B got its end promptly, not a lease period (10 s) after the one on A that
            # reads this instance's own appends: B subscribed again after the failure.
            for name in ("bystander", "bystander_a"):
                got = numbered(seen[name])
                assert [e[1] for e in got] == ["start"] + ["delta"] * TOKENS + ["usage", "done"]
                assert got == await read_events(client, a.url + bystander["events_url"], {})
            assert seen["bystander"][-1][3] - seen["bystander_a"][-1][3] < 3.0


async def test_events_a_failover_lost_never_get_another_meaning(
    redis_cluster: LocalCluster,
) -> None:
    """Replication is asynchronous: a master may acknowledge events and die before its replica
    has them. The stream then ends after the highest id its producer had acknowledged, with a
    hole where the lost events were, rather than giving a lost event's id to another event."""
    prefix = f"t{secrets.token_hex(4)}:"
    config = RedisStoreConfig(url=redis_cluster.url, key_prefix=prefix, lease_ttl=60)
    sid = "st_" + secrets.token_hex(4)
    meta, events, _, _ = stream_keys(prefix, sid)
    async with RedisStore(config) as a, RedisStore(config) as b:
        await a.create(sid, model="m", provider="p")
        for n in range(5):
            await a.append(sid, "delta", f'{{"n":{n}}}')
        assert [e.id for e in await a.read(sid)] == [1, 2, 3, 4, 5]  # acknowledged, all

        def lose_the_last_two() -> None:
            # What a promoted replica holds that missed the writes of events 4 and 5.
            with redis_cluster.client(redis_cluster.master_of(meta)) as client:
                kept = client.xrange(events, "-", "3-0")
                client.delete(events)  # XDEL would leave the stream's last id at 5
                for entry_id, fields in kept:
                    client.xadd(events, fields, id=entry_id)
                client.hset(meta, "last_id", 3)

        await anyio.to_thread.run_sync(lose_the_last_two)
        # The producer's next append is out of step with the store: it fails (on the call
        # after, as its appends don't wait for Redis), and the job ends the stream.
        await a.append(sid, "delta", "{}")
        await a.read(sid, 0, 1)  # until it is answered
        with pytest.raises(StoreError):
            await a.append(sid, "delta", "{}")
        end = await a.finish(sid, StreamStatus.ERROR, '{"code":"store_unavailable"}')
        assert end.id == 6  # after every event a client may have seen, none reused

        # A client that saw the lost events resumes to the end; one that saw fewer is told
        # of the hole; nobody gets an id twice with two meanings.
        assert [(e.id, e.event) for e in await b.read(sid, after=5)] == [(6, "error")]
        for after in (0, 3, 4):
            with pytest.raises(StreamGapError) as gap:
                await b.read(sid, after=after)
            assert (gap.value.after, gap.value.first_id) == (3 if after < 3 else after, 6)
        followed: list[int] = []

        async def follow() -> None:
            async for event in b.follow(sid, 0):
                followed.append(event.id)

        with pytest.raises(StreamGapError):
            await follow()
        assert followed == [1, 2, 3]
