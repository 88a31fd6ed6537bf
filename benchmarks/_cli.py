"""The command line and the orchestration: repetitions, interleaving, machine facts, output."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _scenarios as sc
from ._cluster import cluster_available, local_cluster
from ._peers import STREAM_PEERS
from ._procs import (
    BASELINE,
    BASELINE_SUFFIX,
    ROOT,
    ServerProcess,
    baseline_available,
    cpu_count,
    free_port,
    peer_process,
    pin_self,
)
from ._report import Record, Report, write_docs

SCENARIOS = ("throughput", "latency", "idle", "relay", "stop", "store")


@dataclass
class Plan:
    """What to run."""

    sizes: sc.Sizes
    reps: int
    peers: list[str]
    relay_peers: list[str]
    scenarios: tuple[str, ...] = SCENARIOS
    server_cpu: int | None = 0
    load_cpu: int | None = 1
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def _rotated(items: Sequence[str], rep: int) -> list[str]:
    """``items`` starting at a different one each repetition (no peer always goes first)."""
    k = rep % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def redis_available() -> bool:
    """Whether the Redis store exists in this version and ``redis-server`` is installed."""
    return (
        importlib.util.find_spec("ssegate.store.redis") is not None
        and shutil.which("redis-server") is not None
    )


async def _library_peers(plan: Plan, rep: int, records: list[Record]) -> None:
    sizes = plan.sizes
    for peer in _rotated(plan.peers, rep):
        plan.log(f"[rep {rep + 1}] {peer}: throughput, latency")
        async with sc.started(peer_process(peer, cpu=plan.server_cpu)) as proc:
            await sc.warm_up(proc)
            if "throughput" in plan.scenarios:
                runs = [("yield", c, e) for c, e in sizes.throughput]
                runs += [("burst", c, e) for c, e in sizes.burst]
                for mode, connections, events in runs:
                    m = await sc.throughput(
                        proc, connections, events, sizes.payload, burst=mode == "burst"
                    )
                    records.append(
                        {
                            "scenario": "throughput",
                            "peer": peer,
                            "mode": mode,
                            "rep": rep,
                            "connections": connections,
                            **m,
                        }
                    )
            if "latency" in plan.scenarios:
                m = await sc.latency(
                    proc,
                    sizes.latency_connections,
                    sizes.latency_rate,
                    sizes.latency_seconds,
                    sizes.payload,
                    stagger=sizes.stagger,
                )
                records.append({"scenario": "latency", "peer": peer, "rep": rep, **m})


async def _idle(plan: Plan, rep: int, records: list[Record]) -> None:
    for peer in _rotated(plan.peers, rep):
        plan.log(f"[rep {rep + 1}] {peer}: idle {plan.sizes.idle_steps}")
        async with sc.started(peer_process(peer, cpu=plan.server_cpu)) as proc:
            for m in await sc.idle(proc, plan.sizes.idle_steps, plan.sizes.idle_hold):
                records.append({"scenario": "idle", "peer": peer, "rep": rep, **m})


async def _relay(plan: Plan, rep: int, records: list[Record]) -> None:
    sizes = plan.sizes
    upstreams = ["http"]
    if sizes.relay_https_max or sizes.relay_https_paced:
        upstreams.append("https")
    for peer in _rotated(plan.relay_peers, rep):
        for upstream in upstreams:
            plan.log(f"[rep {rep + 1}] relay {peer}, {upstream} upstream")
            async with sc.RelaySetup(
                peer,
                server_cpu=plan.server_cpu,
                load_cpu=plan.load_cpu,
                store="memory",
                upstream=upstream,
            ) as setup:
                await _relay_runs(plan, setup, rep, records)


async def _relay_runs(plan: Plan, setup: sc.RelaySetup, rep: int, records: list[Record]) -> None:
    sizes = plan.sizes
    https = setup.upstream == "https"
    base = {"peer": setup.peer, "upstream": setup.upstream, "rep": rep}
    for streams, tokens in sizes.relay_https_max if https else sizes.relay_max:
        m = await sc.relay_max(setup, streams, tokens)
        records.append({"scenario": "relay_max", **base, "streams": streams, **m})
    for streams in sizes.relay_https_paced if https else sizes.relay_paced:
        m = await sc.relay_paced(
            setup, streams, sizes.relay_rate, sizes.relay_seconds, stagger=sizes.stagger
        )
        records.append({"scenario": "relay_paced", **base, "streams": streams, **m})
    for streams, tokens in () if https else sizes.relay_start:
        m = await sc.relay_start(setup, streams, tokens, sizes.relay_rate)
        records.append({"scenario": "relay_start", **base, "streams": streams, **m})


async def _stop(plan: Plan, rep: int, records: list[Record]) -> None:
    plan.log(f"[rep {rep + 1}] stop")
    async with sc.RelaySetup(
        "ssegate-streams", server_cpu=plan.server_cpu, load_cpu=plan.load_cpu, store="memory"
    ) as setup:
        m = await sc.stop_latency(setup, plan.sizes.stop_samples, plan.sizes.stop_background)
        records.append({"scenario": "stop", "peer": "ssegate-streams", "rep": rep, **m})


async def _store(plan: Plan, rep: int, records: list[Record], urls: dict[str, str]) -> None:
    """Each store (name -> ``--store`` URL) in turn, the order rotated per repetition."""
    sizes = plan.sizes
    for name in _rotated(list(urls), rep):
        store = urls[name]
        plan.log(f"[rep {rep + 1}] store {name}")
        async with sc.RelaySetup(
            "ssegate-streams", server_cpu=plan.server_cpu, load_cpu=plan.load_cpu, store=store
        ) as setup:
            streams, tokens = sizes.relay_max[0]
            m = await sc.relay_max(setup, streams, tokens)
            records.append(
                {"scenario": "store_max", "peer": name, "rep": rep, "streams": streams, **m}
            )
            m = await sc.relay_paced(
                setup, streams, sizes.relay_rate, sizes.relay_seconds, stagger=sizes.stagger
            )
            records.append(
                {"scenario": "store_paced", "peer": name, "rep": rep, "streams": streams, **m}
            )


async def _with_redis(plan: Plan, body: Callable[[str], Any]) -> None:
    port = free_port()
    redis = ServerProcess(
        "redis-server",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        cpu=plan.load_cpu,
        port=port,
    ).start()
    try:
        deadline = time.monotonic() + 10
        while True:  # no event to wait on across processes: retry the connect
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await body(f"redis://127.0.0.1:{port}/15")
    finally:
        redis.stop()


async def run_plan(plan: Plan) -> list[Record]:
    """Run ``plan``; every record is one measurement of one repetition."""
    records: list[Record] = []
    _raise_nofile()
    for rep in range(plan.reps):
        if plan.peers and {"throughput", "latency"} & set(plan.scenarios):
            await _library_peers(plan, rep, records)
        if plan.peers and "idle" in plan.scenarios:
            await _idle(plan, rep, records)
        if plan.relay_peers and "relay" in plan.scenarios:
            await _relay(plan, rep, records)
        if "stop" in plan.scenarios:
            await _stop(plan, rep, records)
    if "store" in plan.scenarios and redis_available():

        async def stores(url: str) -> None:
            urls = {"memory": "memory", "redis": url}
            with ExitStack() as stack:
                if cluster_available():
                    urls["cluster"] = stack.enter_context(local_cluster(plan.load_cpu))
                for rep in range(plan.reps):
                    await _store(plan, rep, records, urls)

        await _with_redis(plan, stores)
    return records


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _versions() -> str:
    names = [
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "fastapi",
        "sse-starlette",
        "aiohttp",
        "aiohttp-sse",
        "granian",
        "httpx",
        "anyio",
    ]
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def _available(peer: str) -> bool:
    if peer.endswith(BASELINE_SUFFIX):
        return baseline_available()
    needs = {
        "sse-starlette": "sse_starlette",
        "aiohttp-sse": "aiohttp_sse",
        "ssegate-granian": "granian",
        "fastapi-sse": "fastapi.sse",
    }.get(peer)
    if needs is None:
        return True
    try:
        return importlib.util.find_spec(needs) is not None
    except ModuleNotFoundError:
        return False


def recorded_command(args: list[str]) -> str:
    """The command line as the results record it: a file named by an absolute path by its
    name only (the results are published; the machine's paths are nobody's business)."""
    shown = [os.path.basename(a) if os.path.isabs(a) else a for a in args]
    return " ".join(["python -m benchmarks", *(shlex.quote(a) for a in shown)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="ssegate against its peers."
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, 1 repetition (< 5 min)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 quick)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios, comma-separated: {SCENARIOS}"
    )
    parser.add_argument("--peers", default=",".join(STREAM_PEERS), help="library peers")
    parser.add_argument("--relay-peers", default=",".join(sc.RELAY_PEERS), help="relay peers")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--docs",
        default=None,
        help="Markdown file to write the results into (default: docs/performance.md for a "
        "full run of every scenario, none for --quick or --only)",
    )
    parser.add_argument("--json", default=None, help="also save the raw records here")
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="run nothing: show (and with --docs, write) the results saved in FILE",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        report = Report(saved["records"], saved["meta"])
        print(report.text())
        if args.docs:
            path = Path(args.docs)
            write_docs(path, report, report.plot(path.parent / "performance"))
        return

    sizes = sc.QUICK if args.quick else sc.FULL
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    scenarios = tuple(s for s in args.only.split(",") if s)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    peers = [p for p in args.peers.split(",") if p]
    missing = [p for p in peers if p not in STREAM_PEERS or not _available(p)]
    for p in missing:
        print(f"skipping peer {p}: unknown or not installed", file=sys.stderr)
    peers = [p for p in peers if p not in missing]
    relay_peers = [p for p in args.relay_peers.split(",") if p in sc.RELAY_PEERS and _available(p)]

    pin = not args.no_pin and cpu_count() >= 2
    server_cpu, load_cpu = (0, 1) if pin else (None, None)
    if pin:
        pin_self(load_cpu)
    pinning = (
        "servers on CPU 0; load generator, mock upstream and redis-server on CPU 1 "
        "(sched_setaffinity)"
        if pin
        else "not pinned"
    )
    plan = Plan(sizes, reps, peers, relay_peers, scenarios, server_cpu, load_cpu)
    command = recorded_command(list(argv or sys.argv[1:]))
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": command.strip(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": _versions(),
        "pinning": pinning,
        "load_before": _loadavg(),
        "reps": reps,
        "quick": args.quick,
        "baseline": BASELINE,
    }
    started = time.monotonic()

    import uvloop

    records = uvloop.run(run_plan(plan))
    meta["load_after"] = _loadavg()
    meta["duration_s"] = time.monotonic() - started
    report = Report(records, meta)
    print(report.text())

    json_path: Path | None = Path(args.json) if args.json else None
    docs = args.docs
    if docs is None and not args.quick and set(scenarios) == set(SCENARIOS):
        docs = str(ROOT / "docs" / "performance.md")
    if docs:
        path = Path(docs)
        plots = report.plot(path.parent / "performance")
        write_docs(path, report, plots)
        json_path = json_path or path.parent / "performance" / "results.json"
        print(
            f"\nwrote {path} and {', '.join(str(p) for p in plots) or 'no plot'}", file=sys.stderr
        )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
