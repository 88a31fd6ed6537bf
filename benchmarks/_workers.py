"""``python -m benchmarks._workers``: the gateway on the Redis store with ``--workers 1`` and
``--workers 2``, relaying the mock upstream (the relay scenario (d) of the suite).

Nothing is pinned: two workers need two CPUs, and the load generator (this process), the mock
upstream and ``redis-server`` share them, so this measures what ``--workers`` buys on this
machine as a whole, not per core. The configurations are interleaved, each repetition in a
different order; medians are printed as a Markdown table (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import _scenarios as sc
from ._procs import ServerProcess, free_port, gateway_process


class _WorkersSetup(sc.RelaySetup):
    """The suite's relay setup with the gateway on ``workers`` processes."""

    def __init__(self, store: str, workers: int) -> None:
        super().__init__("ssegate-streams", server_cpu=None, load_cpu=None, store=store)
        self.workers = workers

    async def __aenter__(self) -> _WorkersSetup:
        self.mock.start()
        try:
            await self.mock.wait_ready("/v1/models")
            self.relay = gateway_process(
                f"http://127.0.0.1:{self.mock.port}/v1",
                cpu=None,
                store=self.store,
                extra=("--workers", str(self.workers), *sc.gateway_flags({})),
            )
            self.relay.start()
            await self.relay.wait_ready("/healthz")
        except BaseException:
            await self.__aexit__()
            raise
        return self


async def _redis() -> tuple[ServerProcess, str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    redis = ServerProcess("redis-server", [*argv, "--appendonly", "no"], cpu=None, port=port)
    redis.start()
    deadline = time.monotonic() + 10
    while True:  # no event to wait on across processes: retry the connect
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return redis, f"redis://127.0.0.1:{port}/15"
        except OSError:
            if time.monotonic() > deadline:
                redis.stop()
                raise
            await asyncio.sleep(0.05)


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    redis, url = await _redis()
    records: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            order = (
                args.workers[rep % len(args.workers) :] + args.workers[: rep % len(args.workers)]
            )
            for workers in order:
                print(f"[rep {rep + 1}] --workers {workers}", file=sys.stderr)
                async with _WorkersSetup(url, workers) as setup:
                    redis0 = redis.cpu_seconds()
                    m = await sc.relay_max(setup, args.streams, args.tokens)
                    m["redis_cpu_share"] = (redis.cpu_seconds() - redis0) / m["seconds"]
                    records.append({"workers": workers, "scenario": "max", **m})
                    m = await sc.relay_paced(setup, args.streams, 20.0, args.paced_seconds)
                    records.append({"workers": workers, "scenario": "paced", **m})
    finally:
        redis.stop()
    return records


def _table(records: list[dict[str, Any]], workers: Sequence[int], streams: int) -> str:
    def median(n: int, scenario: str, key: str) -> float:
        values = [r[key] for r in records if r["workers"] == n and r["scenario"] == scenario]
        return statistics.median(values)

    lines = [
        f"| --workers | tok/s @{streams} | each repetition | tok/CPU-s @{streams} | CPUs: gateway "
        "| load gen + mock | redis | paced p50 ms | paced p99 ms | errors |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in workers:
        errors = sum(1 for r in records if r["workers"] == n and r["error"])
        runs = [r for r in records if r["workers"] == n and r["scenario"] == "max"]
        each = ", ".join(f"{r['tokens_per_s'] / 1000:.1f}k" for r in runs)
        lines.append(
            f"| {n} | {median(n, 'max', 'tokens_per_s'):,.0f} | {each} "
            f"| {median(n, 'max', 'tokens_per_cpu_s'):,.0f} "
            f"| {median(n, 'max', 'relay_cpu_share'):.2f} "
            f"| {median(n, 'max', 'load_cpu_share'):.2f} "
            f"| {median(n, 'max', 'redis_cpu_share'):.2f} "
            f"| {median(n, 'paced', 'p50_ms'):.2f} | {median(n, 'paced', 'p99_ms'):.1f} "
            f"| {errors} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._workers", description=__doc__)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per stream, unpaced")
    parser.add_argument("--paced-seconds", type=float, default=8.0, help="20 tokens/s/stream")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    args = parser.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]

    import uvloop

    records = uvloop.run(_run(args))
    print(_table(records, args.workers, args.streams))
    for record in records:
        if record["error"]:
            print(f"--workers {record['workers']}: {record['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
