"""The benchmark harness, with tiny counts: every peer serves every event intact and in order.

This runs the real thing — each server in its own process, the load generator checking every
event — but asserts nothing about speed. It also makes sure the checks can fail: a server that
drops or reorders one event is caught.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _capacity as capacity  # noqa: E402
from benchmarks import _scenarios as sc  # noqa: E402
from benchmarks import per_event  # noqa: E402
from benchmarks._cli import Plan, run_plan  # noqa: E402
from benchmarks._loadgen import (  # noqa: E402
    Check,
    expected_payloads,
    fetch,
    request_bytes,
    run_streams,
)
from benchmarks._peers import APPS, STREAM_PEERS, make_payload  # noqa: E402
from benchmarks._procs import BASELINE_SUFFIX, baseline_available  # noqa: E402
from benchmarks._report import Report  # noqa: E402

_NEEDS = {  # peers whose packages come with the `bench` extra, not with `test`
    "sse-starlette": "sse_starlette",
    "aiohttp-sse": "aiohttp_sse",
    "ssegate-granian": "granian",
    "fastapi-sse": "fastapi.sse",
}


def _installed(peer: str) -> bool:
    if peer.endswith(BASELINE_SUFFIX):
        return baseline_available()
    module = _NEEDS.get(peer)
    return module is None or importlib.util.find_spec(module) is not None


def _skip_unless_installed(peer: str) -> None:
    if not _installed(peer):
        if peer.endswith(BASELINE_SUFFIX):
            pytest.skip("this checkout does not hold the pre-redesign commit (shallow clone)")
        pytest.skip(f"{peer} is not installed (pip install -e '.[bench]')")


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
    _skip_unless_installed(peer)
    records = await run_plan(_plan([peer], [], ("throughput", "latency")))
    kinds = [(r["scenario"], r.get("mode")) for r in records]
    assert kinds == [("throughput", "yield"), ("throughput", "burst"), ("latency", None)]
    assert [r["error"] for r in records] == [None, None, None]
    ((connections, events),) = sc.SMOKE.throughput
    ((burst_connections, burst_events),) = sc.SMOKE.burst
    assert records[0]["events"] == connections * events
    assert records[1]["events"] == burst_connections * burst_events
    assert records[2]["p99_ms"] > 0  # stamped events were parsed and timed


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["ssegate", f"ssegate{BASELINE_SUFFIX}"])
async def test_idle_streams_are_held_and_measured(peer: str) -> None:
    _skip_unless_installed(peer)
    records = await run_plan(_plan([peer], [], ("idle",)))
    (record,) = records
    assert record["error"] is None
    assert record["held"] == record["connections"] == sc.SMOKE.idle_steps[-1]
    assert record["rss_mb"] > 0


@pytest.mark.anyio
@pytest.mark.parametrize("peer", list(sc.RELAY_PEERS))
async def test_every_relay_delivers_every_token_in_order_and_ends(peer: str) -> None:
    _skip_unless_installed(peer)
    records = await run_plan(_plan([], [peer], ("relay",)))
    kinds = {(r["scenario"], r["upstream"]) for r in records}
    assert kinds == {
        ("relay_max", "http"),
        ("relay_max", "https"),
        ("relay_paced", "https"),
        ("relay_start", "http"),
    }
    assert [r["error"] for r in records] == [None] * len(records)
    assert all(r.get("tokens_per_s", 1) > 0 for r in records)
    (start,) = (r for r in records if r["scenario"] == "relay_start")
    assert start["failed"] == 0
    assert 0 < start["first_p50_ms"] <= start["first_p99_ms"]


@pytest.mark.anyio
async def test_the_https_upstream_is_served_over_tls() -> None:
    # The relays' https rows are only honest if the upstream really speaks TLS: a plain
    # connection to it gets no HTTP answer, a TLS one trusting the run's CA does.
    setup = sc.RelaySetup(
        "direct", server_cpu=None, load_cpu=None, store="memory", upstream="https"
    )
    async with setup:
        mock = setup.mock
        assert mock.ssl_context is not None
        reply = await fetch(mock.port, "GET", "/v1/models", ssl_context=mock.ssl_context)
        assert reply.status == 200
        with pytest.raises((ConnectionError, OSError, TimeoutError)):
            await fetch(mock.port, "GET", "/v1/models", timeout=2)


# -- at interval 0, every peer still yields to the loop once per event (but for a burst) -----


async def _interleaving(app: object, query: str) -> list[int]:
    """Serve two ``/stream`` requests at once in this loop; the order in which the two
    streams' body parts were sent (0 or 1 per part)."""
    order: list[int] = []

    async def one(k: int) -> None:
        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()  # never disconnects; the stream ends by itself
            raise AssertionError  # pragma: no cover

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                order.append(k)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/stream",
            "raw_path": b"/stream",
            "query_string": query.encode(),
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "root_path": "",
        }
        await app(scope, receive, send)  # type: ignore[operator]

    await asyncio.wait_for(asyncio.gather(one(0), one(1)), 10)
    return order


def _switches(order: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(order) if a != b)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("peer", "framework_turns"),
    [
        ("starlette", False),
        ("sse-starlette", False),
        ("ssegate", False),
        ("fastapi-sse", True),  # FastAPI's SSE takes a loop turn per event by itself
    ],
)
async def test_an_asgi_peer_yields_once_per_event_unless_asked_for_a_burst(
    peer: str, framework_turns: bool
) -> None:
    _skip_unless_installed(peer)
    app = APPS[peer]()
    paced = await _interleaving(app, "n=40&size=32")
    burst = await _interleaving(app, "n=40&size=32&burst=1")
    # A loop turn per event: the two streams take turns all along. A burst: each stream's
    # events go out without the other getting a turn in between.
    assert _switches(paced) >= 30, paced
    if not framework_turns:
        assert _switches(burst) <= 3, burst


@pytest.mark.anyio
@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_the_store_scenario_measures_memory_redis_and_a_cluster_in_one_run() -> None:
    records = await run_plan(_plan([], [], ("store",)))
    by = {(r["scenario"], r["peer"]): r for r in records}
    assert set(by) == {
        (scenario, store)
        for scenario in ("store_max", "store_paced")
        for store in ("memory", "redis", "cluster")
    }
    for record in records:
        assert record["error"] is None, record
    for store in ("memory", "redis", "cluster"):
        assert by[("store_max", store)]["tokens_per_s"] > 0
        assert by[("store_paced", store)]["p99_ms"] > 0
    # The bars judge the 100-stream rows: SMOKE's 3 streams, relabelled, stand in for them.
    as_100 = [{**r, "streams": 100} for r in records]
    bars = {bar: (measured, met) for bar, measured, met in Report(as_100, {}).bars()}
    for store in ("redis", "cluster"):
        rate = by[("store_max", store)]["tokens_per_s"]
        ratio = rate / by[("store_max", "memory")]["tokens_per_s"]
        assert bars[f"{store} store tok/s @100 ≥ 0.5× memory"] == (f"{ratio:.2f}×", ratio >= 0.5)
        p99 = by[("store_paced", store)]["p99_ms"] / by[("store_paced", "memory")]["p99_ms"]
        assert bars[f"{store} store paced p99 @100 ≤ 2× memory"] == (f"{p99:.2f}×", p99 <= 2.0)
    # And a store below both bars is judged so.
    slow = [
        {**r, "tokens_per_s": r["tokens_per_s"] * (1 if r["peer"] == "memory" else 0.4)}
        if r["scenario"] == "store_max"
        else {**r, "p99_ms": r["p99_ms"] * (1 if r["peer"] == "memory" else 3)}
        for r in as_100
    ]
    judged = {bar: met for bar, _, met in Report(slow, {}).bars()}
    rate = by[("store_max", "redis")]["tokens_per_s"] / by[("store_max", "memory")]["tokens_per_s"]
    if rate * 0.4 < 0.5:
        assert judged["redis store tok/s @100 ≥ 0.5× memory"] is False
    assert judged["redis store paced p99 @100 ≤ 2× memory"] is (
        3 * by[("store_paced", "redis")]["p99_ms"] / by[("store_paced", "memory")]["p99_ms"] <= 2.0
    )


@pytest.mark.anyio
async def test_stop_closes_the_upstream_connection() -> None:
    (record,) = await run_plan(_plan([], [], ("stop",)))
    assert record["error"] is None
    assert record["samples"] == sc.SMOKE.stop_samples


@pytest.mark.anyio
@pytest.mark.redis
@pytest.mark.timeout(30)
async def test_the_capacity_model_measures_every_unit_cost(tmp_path: Path) -> None:
    # docs/scaling.md sizes a deployment from these figures: each must be measured, not zero
    # because a counter was misread, and of a plausible size against what a token carries.
    data = await capacity.measure(capacity.QUICK)
    paced, wire, maxed = data["paced"], data["wire"], data["max"]
    assert [r["error"] for r in [paced, *maxed]] == [None] * (1 + len(maxed))
    text = paced["token_text_bytes"]
    assert 20 < text < 30  # the mock's stamped tokens
    for run in (paced["window"], paced["with_follower"], *maxed):
        assert run["tokens"] > 0
        # Every token is one XADD and one PUBLISH, inside one script call or fewer.
        assert 0.9 < run["calls_per_token"]["xadd"] < 1.2
        assert 0.9 < run["calls_per_token"]["publish"] < 1.2
        assert 0 < run["evalsha_per_token"] <= 1.2
        assert 2 < run["commands_per_token"] < 30
        # The token's text goes into Redis with its script call, and a reply comes back.
        assert text < run["bytes_in_per_token"] < 4096
        assert 0 < run["bytes_out_per_token"] < 4096
        assert run["redis_cpu_us_per_token"] > 0
        assert run["gateway_cpu_us_per_token"] > 0
        assert run["tokens_per_gateway_cpu_s"] > 0
    window = paced["window"]
    assert window["tokens"] == pytest.approx(paced["window_tokens_expected"], rel=0.5)
    assert 0 < window["gateway_cpu_share"] < 2
    follower = paced["with_follower"]
    assert follower["follower_messages_per_token"] == pytest.approx(1, rel=0.2)
    assert text < follower["follower_bytes_per_token"] < 1024
    assert all(r["tokens_per_s"] > 0 for r in maxed)
    # Redis holds every stored token's text, running and finished.
    assert paced["memory_running_per_stream"] > paced["tokens_so_far_per_stream"] * text
    assert paced["memory_finished_per_stream"] > paced["tokens_per_stream"] * text
    running, finished = paced["memory_usage_running"], paced["memory_usage_finished"]
    assert 0 < running["events"] < finished["events"]
    assert running["lease"] > 0 == finished["lease"]  # the lease goes when the stream ends
    assert paced["gateway_rss_mb"] > 0
    assert text < wire["client_event_bytes"] < wire["upstream_event_bytes"]
    # The report renders every figure and lands between the markers, prose kept.
    doc = tmp_path / "scaling.md"
    doc.write_text(
        f"# Scaling\n\nbefore\n\n{capacity.BEGIN}\nstale figures\n{capacity.END}\n\nafter\n"
    )
    meta = {
        "date": "today",
        "command": capacity.recorded_command(["--quick", "--docs", str(doc)]),
        "cpu_model": "cpu",
        "nproc": 2,
        "load_before": "0 0 0",
        "load_after": "0 0 0",
    }
    capacity.write_docs(doc, capacity.markdown(data, meta))
    written = doc.read_text()
    assert "stale figures" not in written
    assert written.startswith("# Scaling\n\nbefore\n\n")
    assert written.endswith("\n\nafter\n")
    assert "`python -m benchmarks._capacity --quick --docs scaling.md`" in written
    assert "nan" not in written
    assert "| 0 |" not in written


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


@pytest.mark.parametrize("case", sorted(per_event.RESPONSES))
def test_every_per_event_case_streams_every_event(case: str) -> None:
    # The per-event instruction counts measure these responses: each must really send the
    # events it is asked for (a case that ended early would look cheap).
    assert per_event.run_case(case, 300) == 300


def test_the_per_event_table_has_a_row_per_case() -> None:
    cases = [*per_event.RESPONSES, *per_event.PIECES]
    results = per_event.measure(cases, base=0, events=200, timed=True)
    table = per_event.table(results, timed=True)
    assert all(value > 0 for value in results.values())
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == cases
    assert "| `starlette` | " in table
    assert "1.00×" in table
