"""A throw-away local Redis Cluster for the store scenario: three masters (no replicas: a
benchmark measures the write path, not failover), each a ``redis-server --cluster-enabled
yes`` on a free loopback port, joined by ``redis-cli --cluster create``, pinned like the
single redis-server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._procs import ServerProcess, free_port

__all__ = ["cluster_available", "local_cluster"]


def cluster_available() -> bool:
    """Whether ``redis-server`` and ``redis-cli`` (to join the nodes) are installed."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@contextmanager
def local_cluster(cpu: int | None, masters: int = 3) -> Iterator[str]:
    """Start the cluster; yields its ``redis+cluster://`` store URL."""
    cli = shutil.which("redis-cli")
    assert cli is not None
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        nodes: list[ServerProcess] = []
        try:
            for n in range(masters):
                directory = Path(tmp) / f"node{n}"
                directory.mkdir()
                port = free_port()
                argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
                argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
                argv += ["--cluster-enabled", "yes", "--dir", str(directory)]
                argv += ["--cluster-require-full-coverage", "no"]  # as docs/scaling.md advises
                argv += ["--cluster-config-file", str(directory / "nodes.conf")]
                argv += ["--cluster-port", str(free_port())]  # port + 10000 may not exist
                nodes.append(ServerProcess("redis-cluster", argv, cpu=cpu, port=port).start())
            hosts = [f"127.0.0.1:{node.port}" for node in nodes]
            deadline = time.monotonic() + 30
            _until(nodes, cli, ["PING"], b"PONG", deadline, "the cluster's redis-servers started")
            subprocess.run(
                [cli, "--cluster", "create", *hosts, "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            _until(nodes, cli, ["CLUSTER", "INFO"], b"cluster_state:ok", deadline, "it became ok")
            yield "redis+cluster://" + ",".join(hosts)
        finally:
            for node in nodes:
                node.stop()


def _until(
    nodes: list[ServerProcess],
    cli: str,
    command: list[str],
    wanted: bytes,
    deadline: float,
    what: str,
) -> None:
    """Until every node's answer to ``command`` holds ``wanted`` (other processes, in their
    own time: polled); ``RuntimeError`` saying ``what`` did not happen at ``deadline``."""
    while True:
        answers = [
            subprocess.run(
                [cli, "-p", str(node.port), *command], capture_output=True, timeout=5
            ).stdout
            for node in nodes
        ]
        if all(wanted in answer for answer in answers):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the local Redis Cluster: not {what} in time")
        time.sleep(0.05)
