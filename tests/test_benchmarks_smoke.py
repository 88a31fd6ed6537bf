"""The benchmark harness, with tiny counts: every peer serves every event intact and in order.

This runs the real thing — each server in its own process, the load generator checking every
event — but asserts nothing about speed. It also makes sure the checks can fail: a server that
drops or reorders one event is caught.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _scenarios as sc  # noqa: E402
from benchmarks._cli import Plan, run_plan  # noqa: E402
from benchmarks._loadgen import (  # noqa: E402
    Check,
    expected_payloads,
    request_bytes,
    run_streams,
)
from benchmarks._peers import STREAM_PEERS, make_payload  # noqa: E402

_NEEDS = {  # peers whose packages come with the `bench` extra, not with `test`
    "sse-starlette": "sse_starlette",
    "aiohttp-sse": "aiohttp_sse",
    "ssegate-granian": "granian",
    "fastapi-sse": "fastapi.sse",
}


def _installed(peer: str) -> bool:
    module = _NEEDS.get(peer)
    return module is None or importlib.util.find_spec(module) is not None


def _plan(peers: list[str], relay_peers: list[str], scenarios: tuple[str, ...]) -> Plan:
    # The server alone on one CPU, as in the real runs: some races only show when the server
    # cannot run beside its own helper threads (granian's runtime).
    cpus = os.sched_getaffinity(0)
    return Plan(
        sizes=sc.SMOKE,
        reps=1,
        peers=peers,
        relay_peers=relay_peers,
        scenarios=scenarios,
        server_cpu=min(cpus) if len(cpus) > 1 else None,
        load_cpu=None,
        log=lambda line: None,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("peer", list(STREAM_PEERS))
async def test_every_peer_delivers_every_event_intact_and_in_order(peer: str) -> None:
    if not _installed(peer):
        pytest.skip(f"{peer} is not installed (pip install -e '.[bench]')")
    records = await run_plan(_plan([peer], [], ("throughput", "latency")))
    by_scenario = {r["scenario"]: r for r in records}
    assert set(by_scenario) == {"throughput", "latency"}
    assert [r["error"] for r in records] == [None, None]
    ((connections, events),) = sc.SMOKE.throughput
    assert by_scenario["throughput"]["events"] == connections * events
    assert by_scenario["latency"]["p99_ms"] > 0  # stamped events were parsed and timed


@pytest.mark.anyio
async def test_idle_streams_are_held_and_measured() -> None:
    records = await run_plan(_plan(["ssegate"], [], ("idle",)))
    (record,) = records
    assert record["error"] is None
    assert record["held"] == record["connections"] == sc.SMOKE.idle_steps[-1]
    assert record["rss_mb"] > 0


@pytest.mark.anyio
@pytest.mark.parametrize("peer", list(sc.RELAY_PEERS))
async def test_every_relay_delivers_every_token_in_order_and_ends(peer: str) -> None:
    records = await run_plan(_plan([], [peer], ("relay",)))
    assert records, "nothing ran"
    assert [r["error"] for r in records] == [None] * len(records)
    assert all(r["tokens_per_s"] > 0 for r in records)


@pytest.mark.anyio
async def test_stop_closes_the_upstream_connection() -> None:
    (record,) = await run_plan(_plan([], [], ("stop",)))
    assert record["error"] is None
    assert record["samples"] == sc.SMOKE.stop_samples


# -- the checks themselves can fail ---------------------------------------------------------


class _BrokenServer(asyncio.Protocol):
    """Answers ``/stream`` with events 0..n-1, but one of them dropped or swapped (or, with
    ``fault = "none"``, all of them intact)."""

    fault = "drop"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        order = list(range(20))
        if self.fault == "drop":
            del order[7]
        elif self.fault == "swap":
            order[7], order[8] = order[8], order[7]
        payload = make_payload(32, False)
        body = "".join(f"id: {i}\ndata: {payload(i)}\n\n" for i in order).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
        self.transport.write(head % len(body) + body)


@pytest.fixture
async def broken_server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    fault = request.param

    def factory() -> _BrokenServer:
        server = _BrokenServer()
        server.fault = fault
        return server

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize("broken_server", ["drop", "swap"], indirect=True)
async def test_a_missing_or_reordered_event_is_caught(broken_server: int) -> None:
    port = broken_server
    check = Check("seq", 20, expected_payloads(20, 32))
    result = await run_streams(
        port, request_bytes("GET", "/stream", port=port), 2, check, timeout=10
    )
    assert not result.ok
    assert result.failed == 2
    assert "not intact or out of order" in result.errors[0]


# -- the load generator keeps its own garbage collector out of the measurement --------------


class _GcWitness(_BrokenServer):
    """Serves ``/stream`` intact and notes whether this process collects garbage meanwhile."""

    fault = "none"
    seen: list[bool]

    def data_received(self, data: bytes) -> None:
        self.seen.append(gc.isenabled())
        super().data_received(data)


@pytest.mark.anyio
async def test_the_load_generator_does_not_collect_garbage_during_a_run() -> None:
    loop = asyncio.get_running_loop()
    seen: list[bool] = []

    def factory() -> _GcWitness:
        witness = _GcWitness()
        witness.seen = seen
        return witness

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert gc.isenabled()
    try:
        check = Check("seq", 20, expected_payloads(20, 32))
        result = await run_streams(
            port, request_bytes("GET", "/stream", port=port), 3, check, timeout=10
        )
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result.errors
    assert seen == [False, False, False]  # every request arrived while collection was off
    assert gc.isenabled()  # and it is back on afterwards, with nothing left frozen
    assert gc.get_freeze_count() == 0
