"""The scenarios: each takes a running server (or starts its own) and returns flat metrics.

(a) throughput (a loop turn per event, and the burst apart), (b) latency, (c) idle memory —
against the library peers; (d) relay throughput and latency on a plain-http and an https
upstream, the relay's start with every request sent at once, (e) Stop → upstream closed,
(f) memory vs Redis store — against the relay peers (the mock upstream read directly, a plain
FastAPI + httpx relay, and ssegate's gateway on both of its streaming routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httptools
import orjson

from ._loadgen import (
    Check,
    expected_payloads,
    fetch,
    open_idle,
    percentile,
    request_bytes,
    run_streams,
    stamp_pad,
)
from ._procs import (
    BASELINE_SUFFIX,
    ServerProcess,
    gateway_process,
    mock_process,
    peer_process,
    split_peer,
)
from ._tls import tls_files

Metrics = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (``--quick`` shrinks them)."""

    throughput: tuple[tuple[int, int], ...]  # (connections, events per connection)
    burst: tuple[tuple[int, int], ...]  # the same, produced without a loop turn per event
    payload: int
    latency_connections: int
    latency_rate: float  # events per second per connection
    latency_seconds: float
    stagger: float  # seconds over which paced streams start (and are not measured)
    idle_steps: tuple[int, ...]
    idle_hold: float
    relay_max: tuple[tuple[int, int], ...]  # (streams, tokens per stream)
    relay_paced: tuple[int, ...]  # streams
    relay_rate: float  # tokens per second per stream, paced
    relay_seconds: float
    relay_https_max: tuple[tuple[int, int], ...]  # the same on the https upstream
    relay_https_paced: tuple[int, ...]
    relay_start: tuple[tuple[int, int], ...]  # (streams, tokens): every request sent at once
    stop_samples: int
    stop_background: int


FULL = Sizes(
    throughput=((100, 1_000), (1000, 200)),
    burst=((100, 1_000), (1000, 200)),
    payload=32,
    latency_connections=1000,
    latency_rate=20.0,
    latency_seconds=10.0,
    stagger=1.0,
    idle_steps=(5000, 10_000),
    idle_hold=2.0,
    relay_max=((100, 500), (1000, 100)),
    relay_paced=(100, 1000),
    relay_rate=20.0,
    relay_seconds=8.0,
    relay_https_max=((100, 500),),
    relay_https_paced=(100,),
    relay_start=((1000, 100),),
    stop_samples=100,
    stop_background=100,
)

QUICK = Sizes(
    throughput=((100, 300), (1000, 60)),
    burst=((100, 300), (1000, 60)),
    payload=32,
    latency_connections=1000,
    latency_rate=20.0,
    latency_seconds=3.0,
    stagger=1.0,
    idle_steps=(5000, 10_000),
    idle_hold=0.5,
    relay_max=((100, 200), (1000, 30)),
    relay_paced=(100, 1000),
    relay_rate=20.0,
    relay_seconds=2.0,
    relay_https_max=((100, 200),),
    relay_https_paced=(100,),
    relay_start=((1000, 40),),
    stop_samples=20,
    stop_background=50,
)

#: For the smoke test: everything tiny.
SMOKE = Sizes(
    throughput=((3, 200),),
    burst=((3, 200),),
    payload=32,
    latency_connections=3,
    latency_rate=50.0,
    latency_seconds=0.1,
    stagger=0.05,
    idle_steps=(5,),
    idle_hold=0.1,
    relay_max=((3, 20),),
    relay_paced=(),
    relay_rate=50.0,
    relay_seconds=0.1,
    relay_https_max=((3, 20),),
    relay_https_paced=(3,),
    relay_start=((3, 5),),
    stop_samples=2,
    stop_background=1,
)


def _ms(ns: float) -> float:
    return ns / 1e6


def _failure(result: Any) -> str | None:
    if result.ok:
        return None
    first = "; ".join(result.errors[:3])
    return f"{result.failed} failed, {result.completed}/{result.connections} complete: {first}"


@contextlib.asynccontextmanager
async def started(proc: ServerProcess, ready_path: str = "/ready") -> AsyncIterator[ServerProcess]:
    """Start ``proc``, wait until it answers, and stop it on the way out."""
    proc.start()
    try:
        await proc.wait_ready(ready_path)
        yield proc
    finally:
        proc.stop()


# -- (a) throughput, (b) latency: one running library peer -----------------------------------


async def warm_up(proc: ServerProcess) -> None:
    """A few small streams, so the first measured run pays no first-request costs."""
    n = 200
    req = request_bytes("GET", f"/stream?n={n}&size=32", port=proc.port)
    await run_streams(proc.port, req, 10, Check("seq", n, expected_payloads(n, 32)), timeout=30)


async def throughput(
    proc: ServerProcess,
    connections: int,
    events: int,
    size: int,
    *,
    burst: bool = False,
    timeout: float = 90.0,
) -> Metrics:
    """(a) events/s delivered with no pause between events, and server CPU µs per event.

    The producer yields to the event loop once per event (a relay's tokens arrive one read at
    a time), or with ``burst`` makes the whole stream without a loop turn."""
    query = f"/stream?n={events}&size={size}" + ("&burst=1" if burst else "")
    req = request_bytes("GET", query, port=proc.port)
    check = Check("seq", events, expected_payloads(events, size))
    gc.collect()
    cpu0 = proc.cpu_seconds()
    own0 = time.process_time()
    result = await run_streams(proc.port, req, connections, check, timeout=timeout)
    cpu = proc.cpu_seconds() - cpu0
    # With a write per event the load generator reads one chunk per event: if it fills its
    # CPU, events/s is its limit, not the server's (then CPU per event is the number).
    load = time.process_time() - own0
    return {
        "events_per_s": result.rate,
        "cpu_us_per_event": cpu / result.events * 1e6 if result.events else 0.0,
        "load_cpu_share": load / result.elapsed if result.elapsed else 0.0,
        "events": result.events,
        "seconds": result.elapsed,
        "error": _failure(result),
    }


async def latency(
    proc: ServerProcess,
    connections: int,
    rate: float,
    seconds: float,
    size: int,
    *,
    stagger: float = 1.0,
) -> Metrics:
    """(b) receive time − send time of every event at ``rate`` events/s per connection."""
    skip = round(rate * stagger)
    events = max(2, skip + round(rate * seconds))
    interval_ms = 1000 / rate
    req = request_bytes(
        "GET", f"/stream?n={events}&interval_ms={interval_ms}&size={size}&stamp=1", port=proc.port
    )
    # Streams start spread over ``stagger`` seconds, which are not counted: the latency of
    # a steady flow, not of 1,000 requests arriving in the same millisecond.
    check = Check("stamp", events, pad=stamp_pad(size), skip=skip)
    cpu0 = proc.cpu_seconds()
    result = await run_streams(
        proc.port, req, connections, check, timeout=seconds * 4 + 30, stagger=stagger
    )
    cpu = proc.cpu_seconds() - cpu0
    lat = sorted(result.latencies_ns)
    return {
        "p50_ms": _ms(percentile(lat, 0.50)),
        "p99_ms": _ms(percentile(lat, 0.99)),
        "max_ms": _ms(lat[-1]) if lat else 0.0,
        "events_per_s": result.rate,
        "cpu_share": cpu / result.elapsed if result.elapsed else 0.0,
        "error": _failure(result),
    }


# -- (c) idle connections: a fresh server per measurement ------------------------------------


async def idle(proc: ServerProcess, steps: tuple[int, ...], hold: float) -> list[Metrics]:
    """(c) RSS per idle event stream: the server's RSS growth over ``steps[-1]`` connections,
    measured at each step (connections are added, not reopened), after ``hold`` seconds."""
    req = request_bytes("GET", "/idle", port=proc.port)
    # Open and drop a few first, so lazily built per-route state is in the baseline.
    warm, _ = await open_idle(proc.port, req, 20, timeout=30)
    warm.close()
    await asyncio.sleep(0.5)
    base = proc.rss()
    out: list[Metrics] = []
    groups = []
    opened = 0
    try:
        for step in steps:
            conns, took = await open_idle(proc.port, req, step - opened, timeout=120)
            groups.append(conns)
            opened = step
            await asyncio.sleep(hold)  # let the server settle: every stream is parked
            rss = proc.rss()
            held = sum(g.open for g in groups)
            errors = [e for g in groups for e in g.errors]
            out.append(
                {
                    "connections": step,
                    "held": held,
                    "rss_mb": rss / 2**20,
                    "kb_per_connection": (rss - base) / step / 1024,
                    "open_seconds": took,
                    "error": (
                        None
                        if held == step and not errors
                        else f"held {held}/{step}: {'; '.join(errors[:3])}"
                    ),
                }
            )
    finally:
        for g in groups:
            g.close()
    return out


# -- (d) relay --------------------------------------------------------------------------------

RELAY_PEERS: dict[str, str] = {
    "direct": "the mock upstream read directly (the ceiling)",
    "fastapi-httpx": "FastAPI + httpx relay re-yielding chunks (StreamingResponse)",
    "ssegate-openai": "ssegate gateway, POST /v1/chat/completions",
    "ssegate-streams": "ssegate gateway, POST /v1/streams (Accept: text/event-stream)",
    "ssegate-anthropic": "ssegate gateway, POST /v1/messages (Anthropic Messages API)",
    "ssegate-responses": "ssegate gateway, POST /v1/responses (OpenAI Responses API)",
    "ssegate-openai@pre-redesign": "the gateway as of the commit before the redesign, "
    "POST /v1/chat/completions",
    "ssegate-streams@pre-redesign": "the same, POST /v1/streams",
}


def _directives(tokens: int, interval_ms: float, tag: str = "") -> str:
    text = f"[[stamp]] [[tokens:{tokens}]] [[interval_ms:{interval_ms:g}]] [[usage:off]]"
    return f"{text} {tag}".strip()


def relay_request(peer: str, port: int, tokens: int, interval_ms: float) -> tuple[bytes, bytes]:
    """The request for ``peer`` and the marker that ends its stream."""
    content = _directives(tokens, interval_ms)
    messages = [{"role": "user", "content": content}]
    if peer.removesuffix(BASELINE_SUFFIX) == "ssegate-streams":
        body = orjson.dumps({"messages": messages})
        path, terminal = "/v1/streams", b"event: done"
    elif peer == "ssegate-anthropic":
        body = orjson.dumps(
            {"model": "mock", "max_tokens": 1_000_000, "stream": True, "messages": messages}
        )
        path, terminal = "/v1/messages", b"event: message_stop"
    elif peer == "ssegate-responses":
        # The text is repeated after the last delta (output_text.done, response.completed):
        # the tokens are counted up to the first repeat.
        body = orjson.dumps({"model": "mock", "stream": True, "input": content})
        path, terminal = "/v1/responses", b"event: response.output_text.done"
    else:
        body = orjson.dumps({"model": "mock", "stream": True, "messages": messages})
        path, terminal = "/v1/chat/completions", b"data: [DONE]"
    headers = [("content-type", "application/json"), ("accept", "text/event-stream")]
    return request_bytes("POST", path, port=port, body=body, headers=headers), terminal


class RelaySetup:
    """The mock upstream (plain http, or https with a certificate made at run time) and, but
    for ``direct``, the relay in front of it, told to trust that certificate's CA."""

    def __init__(
        self,
        peer: str,
        *,
        server_cpu: int | None,
        load_cpu: int | None,
        store: str,
        upstream: str = "http",
    ):
        self.peer = peer
        self.tls = tls_files() if upstream == "https" else None
        self.mock = mock_process(cpu=load_cpu, tls=self.tls)
        self.relay: ServerProcess | None = None
        self.server_cpu = server_cpu
        self.store = store
        self.upstream = upstream

    async def __aenter__(self) -> RelaySetup:
        self.mock.start()
        try:
            await self.mock.wait_ready("/v1/models")
            base_url = f"{self.upstream}://127.0.0.1:{self.mock.port}/v1"
            env = {"SSL_CERT_FILE": str(self.tls.ca)} if self.tls is not None else {}
            if self.peer == "fastapi-httpx":
                env["BENCH_UPSTREAM"] = base_url
                self.relay = peer_process("relay", cpu=self.server_cpu, env=env)
                self.relay.start()
                await self.relay.wait_ready()
            elif self.peer.startswith("ssegate"):
                env.update(split_peer(self.peer)[1])
                self.relay = gateway_process(
                    base_url,
                    cpu=self.server_cpu,
                    store=self.store,
                    extra=gateway_flags(env),
                    env=env,
                )
                self.relay.start()
                await self.relay.wait_ready("/healthz")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.relay is not None:
            self.relay.stop()
        self.mock.stop()

    @property
    def target(self) -> ServerProcess:
        """The process the client talks to (and whose CPU is measured)."""
        return self.relay if self.relay is not None else self.mock

    @property
    def client_tls(self) -> ssl.SSLContext | None:
        """The load generator's TLS context: only ``direct`` on https talks TLS to its target."""
        return self.mock.ssl_context if self.relay is None else None


_GATEWAY_FLAGS: dict[str, tuple[str, ...]] = {}


def gateway_flags(env: dict[str, str]) -> tuple[str, ...]:
    """``ssegate serve`` flags that lift per-key limits a load test would hit, if the version
    that ``env`` runs has them (a benchmark client is one anonymous key opening 1,000
    streams)."""
    import os

    path = env.get("PYTHONPATH", "")
    if path not in _GATEWAY_FLAGS:
        import subprocess
        import sys

        from ._procs import ROOT

        text = subprocess.run(
            [sys.executable, "-m", "ssegate", "serve", "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, **({"PYTHONPATH": path} if path else {})},
        ).stdout
        wanted = {
            "--rate-limit": "1000000",
            "--rate-burst": "1000000",
            "--max-streams-per-key": "100000",
            "--max-subscribers-per-stream": "100000",
        }
        flags: list[str] = []
        for flag, value in wanted.items():
            if flag in text:
                flags += [flag, value]
        _GATEWAY_FLAGS[path] = tuple(flags)
    return _GATEWAY_FLAGS[path]


async def relay_max(setup: RelaySetup, streams: int, tokens: int) -> Metrics:
    """(d) tokens/s through the relay with the upstream sending as fast as it can, and the
    relay's CPU per token."""
    proc = setup.target
    req, terminal = relay_request(setup.peer, proc.port, tokens, 0)
    check = Check("tokens", tokens, terminal=terminal)
    cpu0 = proc.cpu_seconds()
    mock0 = setup.mock.cpu_seconds()
    own0 = time.process_time()
    result = await run_streams(
        proc.port, req, streams, check, timeout=120, ssl_context=setup.client_tls
    )
    cpu = proc.cpu_seconds() - cpu0
    # What the other side spent: if the load generator and the mock fill CPU 1, the rate is
    # theirs, not the relay's (then tokens per relay CPU-second is the number to compare).
    load = time.process_time() - own0 + (setup.mock.cpu_seconds() - mock0 if setup.relay else 0)
    return {
        "tokens_per_s": result.rate,
        "tokens_per_cpu_s": result.events / cpu if cpu > 0 else 0.0,
        "relay_cpu_share": cpu / result.elapsed if result.elapsed else 0.0,
        "load_cpu_share": load / result.elapsed if result.elapsed else 0.0,
        "seconds": result.elapsed,
        "error": _failure(result),
    }


async def relay_paced(
    setup: RelaySetup, streams: int, rate: float, seconds: float, *, stagger: float = 1.0
) -> Metrics:
    """(d) per-token latency (client receive − upstream send) at ``rate`` tokens/s/stream;
    the streams start over ``stagger`` seconds, which are not counted."""
    proc = setup.target
    skip = round(rate * stagger)
    tokens = max(2, skip + round(rate * seconds))
    req, terminal = relay_request(setup.peer, proc.port, tokens, 1000 / rate)
    check = Check("tokens", tokens, terminal=terminal, skip=skip)
    cpu0 = proc.cpu_seconds()
    result = await run_streams(
        proc.port,
        req,
        streams,
        check,
        timeout=seconds * 4 + 60,
        stagger=stagger,
        ssl_context=setup.client_tls,
    )
    cpu = proc.cpu_seconds() - cpu0
    lat = sorted(result.latencies_ns)
    return {
        "p50_ms": _ms(percentile(lat, 0.50)),
        "p99_ms": _ms(percentile(lat, 0.99)),
        "tokens_per_s": result.rate,
        "cpu_share": cpu / result.elapsed if result.elapsed else 0.0,
        "error": _failure(result),
    }


async def relay_start(setup: RelaySetup, streams: int, tokens: int, rate: float) -> Metrics:
    """(d) ``streams`` paced streams whose requests are all sent at once (on connections
    opened before): the first token's latency (request sent → first token received) and
    every later token's (client receive − upstream send), and how many streams failed."""
    proc = setup.target
    req, terminal = relay_request(setup.peer, proc.port, tokens, 1000 / rate)
    check = Check("tokens", tokens, terminal=terminal, skip=1)
    cpu0 = proc.cpu_seconds()
    result = await run_streams(
        proc.port,
        req,
        streams,
        check,
        timeout=tokens / rate * 4 + 60,
        ssl_context=setup.client_tls,
    )
    cpu = proc.cpu_seconds() - cpu0
    lat = sorted(result.latencies_ns)
    first = sorted(result.first_ns)
    return {
        "first_p50_ms": _ms(percentile(first, 0.50)),
        "first_p99_ms": _ms(percentile(first, 0.99)),
        "first_max_ms": _ms(first[-1]) if first else 0.0,
        "p50_ms": _ms(percentile(lat, 0.50)),
        "p99_ms": _ms(percentile(lat, 0.99)),
        "failed": result.connections - result.completed,
        "cpu_share": cpu / result.elapsed if result.elapsed else 0.0,
        "error": _failure(result),
    }


# -- (e) Stop → upstream closed -------------------------------------------------------------


class _Sink(asyncio.Protocol):
    """Reads an event stream, counting tokens; resolves ``first`` at the first token."""

    def __init__(self, first: asyncio.Future[None]) -> None:
        self.first = first
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.stream_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        with contextlib.suppress(httptools.HttpParserError):
            self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-ssegate-stream-id":
            self.stream_id = value.decode()

    def on_body(self, body: bytes) -> None:
        if b"event: delta" in body and not self.first.done():
            self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.first.done():
            self.first.set_exception(ConnectionError("stream closed before its first token"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _open_stream(port: int, tag: str, rate: float) -> _Sink:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    sink = _Sink(first)
    content = _directives(1_000_000, 1000 / rate, tag)
    body = orjson.dumps({"messages": [{"role": "user", "content": content}]})
    headers = [("content-type", "application/json"), ("accept", "text/event-stream")]
    await loop.create_connection(lambda: sink, "127.0.0.1", port)
    assert sink.transport is not None
    sink.transport.write(
        request_bytes("POST", "/v1/streams", port=port, body=body, headers=headers)
    )
    await asyncio.wait_for(first, 30)
    return sink


async def stop_latency(setup: RelaySetup, samples: int, background: int) -> Metrics:
    """(e) From sending ``DELETE /v1/streams/{id}`` to the upstream seeing its connection
    close, for ``samples`` streams, one at a time, while ``background`` others stream."""
    gw = setup.target
    rate = 20.0
    sinks = [await _open_stream(gw.port, f"bg-{i}", rate) for i in range(background)]
    delays: list[float] = []
    replies: list[float] = []
    errors: list[str] = []
    try:
        sent: dict[str, float] = {}
        for i in range(samples):
            tag = f"stop-{i}"
            sink = await _open_stream(gw.port, tag, rate)
            if sink.stream_id is None:
                errors.append("no stream id header")
                sink.close()
                continue
            t0 = time.time()
            reply = await fetch(gw.port, "DELETE", f"/v1/streams/{sink.stream_id}")
            replies.append(time.time() - t0)
            sent[tag] = t0
            if reply.status != 200:
                errors.append(f"DELETE answered {reply.status}")
            sink.close()
        records = orjson.loads((await fetch(setup.mock.port, "GET", "/_mock/requests")).body)
        closed: dict[str, float | None] = {}
        for rec in records:
            messages = (rec.get("json") or {}).get("messages") or []
            content = messages[-1].get("content", "") if messages else ""
            closed[content.rsplit(" ", 1)[-1]] = rec.get("closed_at")
        for tag, t0 in sent.items():
            at = closed.get(tag)
            if at is None:
                errors.append(f"{tag}: upstream connection still open")
            else:
                delays.append(at - t0)
    finally:
        for sink in sinks:
            sink.close()
    delays.sort()
    replies.sort()
    return {
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "max_ms": (delays[-1] * 1000) if delays else 0.0,
        "delete_p50_ms": percentile(replies, 0.5) * 1000,
        "samples": len(delays),
        "error": "; ".join(errors[:3]) or None,
    }


Scenario = Callable[..., Any]
