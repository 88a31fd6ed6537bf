"""``ssegate serve --workers N``: several processes on one port, one Redis store between them.

Every gateway is a real ``python -m ssegate serve --workers 2`` subprocess with a real
``redis-server`` behind it, and the mock upstream (a real HTTP server in this process) records
what each worker did to its upstream request. Each worker names itself in ``X-Ssegate-Worker``;
a client with a single keep-alive connection stays on the worker that accepted it, which is how
these tests send one request to worker A and the next to worker B.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from instance_helpers import GatewayProcess, RedisServer, running_gateways
from ssegate import Decoder
from ssegate.gateway._workers import worker_shares
from ssegate.server import listening_sockets
from ssegate.testing import MockRequest, MockUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

HEADER = "x-ssegate-worker"
Event = tuple[int | None, str, dict[str, Any]]


def workers_gateway(mock: MockUpstream, redis: RedisServer, *extra: str) -> GatewayProcess:
    return GatewayProcess(
        "--workers",
        "2",
        "--listeners",
        "4",
        "--provider",
        "openai",
        "--base-url",
        mock.url + "/v1",
        "--model",
        "mock",
        "--store",
        redis.url,
        "--redis-prefix",
        f"w{secrets.token_hex(4)}:",
        *extra,
    )


@contextmanager
def running_workers(gw: GatewayProcess) -> Iterator[GatewayProcess]:
    """Start ``gw``; at the end, stop it (SIGTERM, at most 60 s) and SIGKILL any worker left.

    A worker outliving its parent keeps the gateway's output pipe open, and closing a pipe
    another thread still reads blocks: a test whose workers failed to stop must fail, not hang.
    """
    with running_gateways(gw):
        assert gw.proc is not None
        try:
            yield gw
        finally:
            if gw.alive():
                gw.signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    gw.proc.wait(60)
            forked = re.search(r"workers serving, pids ([\d ]+)", gw.log)
            for pid in map(int, forked.group(1).split() if forked else ()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, mock_upstream: MockUpstream) -> Iterator[GatewayProcess]:
    """One two-worker gateway for the module's cross-worker tests."""
    with running_workers(workers_gateway(mock_upstream, redis_server)) as gw:
        yield gw


@asynccontextmanager
async def one_client_per_worker(url: str) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """Two clients, each holding one keep-alive connection to a different worker, by pid.

    New connections land on either worker (the kernel spreads them over the sockets): open
    them one by one, at most 200, until both workers have answered.
    """
    pinned: dict[int, httpx.AsyncClient] = {}
    try:
        for _ in range(200):
            client = httpx.AsyncClient(
                base_url=url, timeout=10, limits=httpx.Limits(max_connections=1)
            )
            answer = await client.get("/healthz")
            assert answer.status_code == 200
            pid = int(answer.headers[HEADER])
            if pid in pinned:
                await client.aclose()
                continue
            pinned[pid] = client
            if len(pinned) == 2:
                break
        assert len(pinned) == 2, f"200 connections all reached worker(s) {list(pinned)}"
        yield pinned
    finally:
        for client in pinned.values():
            await client.aclose()


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def nonce() -> str:
    return "n" + secrets.token_hex(4)


def request_with(mock: MockUpstream, word: str) -> MockRequest:
    matches = [r for r in mock.requests if word in json.dumps(r.json)]
    assert len(matches) == 1, [r.json for r in mock.requests]
    return matches[0]


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    decoder = Decoder()
    async for chunk in response.aiter_raw():
        for event in decoder.feed(chunk):
            yield (
                int(event.id) if event.id else None,
                event.event or "message",
                json.loads(event.data or "null"),
            )


def parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def exits_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has exited, or does within ``seconds`` (a pidfd turns readable
    when it exits: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


async def test_both_workers_answer_on_the_one_port_as_children_of_the_command(
    gateway: GatewayProcess,
) -> None:
    async with one_client_per_worker(gateway.url) as clients:
        assert gateway.proc is not None
        for pid, client in clients.items():
            assert pid != gateway.proc.pid
            assert parent_of(pid) == gateway.proc.pid
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert int(ready.headers[HEADER]) == pid  # still the same connection and worker


async def test_a_stream_started_on_one_worker_resumes_on_the_other_exactly(
    gateway: GatewayProcess, mock: MockUpstream
) -> None:
    word = nonce()
    async with one_client_per_worker(gateway.url) as clients:
        (a, on_a), (b, on_b) = clients.items()
        created = await on_a.post(
            "/v1/streams", json=ask(f"{word} [[tokens:50]] [[interval_ms:10]]")
        )
        assert created.status_code == 201, created.text
        assert int(created.headers[HEADER]) == a  # generated on A
        events_url = created.json()["events_url"]
        got: list[Event] = []
        async with on_a.stream("GET", events_url) as response:
            assert int(response.headers[HEADER]) == a
            async for event in events(response):
                got.append(event)
                if len(got) == 7:
                    break
        last = str(got[-1][0])
        async with on_b.stream("GET", events_url, headers={"Last-Event-ID": last}) as response:
            assert response.status_code == 200
            assert int(response.headers[HEADER]) == b
            got += [event async for event in events(response)]
    ids = [e[0] for e in got]
    assert ids == list(range(1, 54)), ids  # start, 50 deltas, usage, done: none lost or doubled
    assert [e[1] for e in got] == ["start"] + ["delta"] * 50 + ["usage", "done"]
    assert "".join(e[2]["text"] for e in got if e[1] == "delta") == request_with(mock, word).text


async def test_delete_on_one_worker_stops_the_other_workers_upstream_request_within_500_ms(
    gateway: GatewayProcess, mock: MockUpstream
) -> None:
    word = nonce()
    async with one_client_per_worker(gateway.url) as clients:
        (a, on_a), (b, on_b) = clients.items()
        got: list[Event] = []
        async with on_a.stream(
            "POST",
            "/v1/streams",
            json=ask(f"{word} [[tokens:2000]] [[interval_ms:20]]"),
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert int(response.headers[HEADER]) == a
            stream_id = response.headers["x-ssegate-stream-id"]
            async for event in events(response):
                got.append(event)
                if event[1] == "delta" and len(got) == 3:
                    record = request_with(mock, word)
                    asked_at = time.time()
                    deleted = await on_b.delete(f"/v1/streams/{stream_id}")
                    assert int(deleted.headers[HEADER]) == b
                    assert deleted.status_code == 200, deleted.text
                    assert deleted.json()["status"] == "cancelled"
        assert got[-1][1:] == ("cancelled", {"cause": "client"})
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(record.closed.wait)
    assert record.cancelled
    assert record.closed_at is not None
    assert record.closed_at - asked_at < 0.5
    assert record.tokens_sent < 2000


async def test_sigterm_drains_every_worker_and_exits_0_leaving_no_process(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    with running_workers(workers_gateway(mock, redis_server, "--drain-timeout", "20")) as gw:
        assert gw.proc is not None
        async with one_client_per_worker(gw.url) as clients:
            (a, on_a), (b, _) = clients.items()
            got: list[Event] = []
            async with on_a.stream(
                "POST",
                "/v1/streams",
                json=ask("[[tokens:30]] [[interval_ms:30]]"),
                headers={"Accept": "text/event-stream"},
            ) as response:
                async for event in events(response):
                    got.append(event)
                    if len(got) == 3:
                        gw.signal(signal.SIGTERM)
        # The generation running on worker A was let finish.
        assert [e[0] for e in got] == list(range(1, 34))
        assert got[-1][1:] == ("done", {"finish_reason": "stop"})
        code = await anyio.to_thread.run_sync(gw.wait, 30)
        assert code == 0, gw.log
        assert exits_within(a, 0), gw.log
        assert exits_within(b, 0), gw.log
        assert "stopping 2 worker(s): SIGTERM" in gw.log
        assert "exited unasked" not in gw.log


async def test_a_worker_that_dies_is_reported_and_the_command_exits_1(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    with running_workers(workers_gateway(mock, redis_server)) as gw:
        async with one_client_per_worker(gw.url) as clients:
            a, b = clients
        os.kill(a, signal.SIGKILL)
        code = await anyio.to_thread.run_sync(gw.wait, 30)
        assert code == 1, gw.log
        assert f"(pid {a}) exited unasked: killed by SIGKILL" in gw.log
        assert exits_within(b, 0), gw.log  # the other worker was stopped, not left behind


def test_the_memory_store_with_two_workers_is_refused_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ssegate", "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: --workers 2 needs a shared store (--store redis://…)")
    assert "invisible to the others" in lines[0]


async def test_a_worker_that_does_not_stop_is_killed_after_the_drain_timeout_plus_15_s(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    with running_workers(workers_gateway(mock, redis_server, "--drain-timeout", "0")) as gw:
        async with one_client_per_worker(gw.url) as clients:
            a, b = clients
        os.kill(a, signal.SIGSTOP)  # A can't handle the SIGTERM its parent passes on
        gw.signal(signal.SIGTERM)
        asked = time.monotonic()
        code = await anyio.to_thread.run_sync(gw.wait, 40)
        assert 15 <= time.monotonic() - asked < 30
        assert code == 1, gw.log
        assert f"worker pid {a} did not stop within 15 s: killed" in gw.log
        assert exits_within(a, 0), gw.log
        assert exits_within(b, 0), gw.log


async def test_workers_stop_when_the_parent_is_killed(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    with running_workers(workers_gateway(mock, redis_server)) as gw:
        async with one_client_per_worker(gw.url) as clients:
            a, b = clients
        gw.signal(signal.SIGKILL)  # no chance to stop them: the kernel tells them (SIGTERM)
        assert await anyio.to_thread.run_sync(exits_within, a, 20), gw.log
        assert await anyio.to_thread.run_sync(exits_within, b, 20), gw.log


async def test_port_0_gives_both_workers_the_one_port_the_parent_picked(
    redis_server: RedisServer, mock: MockUpstream
) -> None:
    gw = workers_gateway(mock, redis_server, "--port", "0")  # the last --port wins
    running = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
    with running_workers(gw):
        match = running.search(gw.log)  # start() returned: the first worker said it
        assert match is not None, gw.log
        port = int(match.group(1))
        assert port != 0
        async with one_client_per_worker(f"http://127.0.0.1:{port}") as clients:
            assert len(clients) == 2
    assert running.findall(gw.log) == [str(port)] * 2, gw.log


def test_a_port_in_use_fails_before_any_worker_starts(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--workers", "2", "--port", str(port), "--store", redis_server.url]
        done = subprocess.run(
            [sys.executable, "-m", "ssegate", *argv], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Address already in use" in output
    assert "workers serving" not in output


def test_each_worker_gets_its_own_share_of_the_sockets_or_all_when_there_are_fewer() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 6)
    try:
        shares = worker_shares(sockets, 3)
        assert [len(share) for share in shares] == [2, 2, 2]
        assert sorted(map(id, (s for share in shares for s in share))) == sorted(map(id, sockets))
        assert worker_shares(sockets[:1], 2) == [sockets[:1], sockets[:1]]
    finally:
        for sock in sockets:
            sock.close()


def test_the_workers_benchmark_runs_with_tiny_counts_and_every_event_intact() -> None:
    root = Path(__file__).resolve().parent.parent
    argv = ["--reps", "1", "--streams", "4", "--tokens", "20", "--paced-seconds", "0.5"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._workers", *argv],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row[1].strip() for row in rows[1:]] == ["1", "2"], done.stdout
    assert all(row[-2].strip() == "0" for row in rows[1:]), done.stdout  # errors: none
