"""A real local Redis Cluster for the tests: three masters and three replicas, each a
``redis-server --cluster-enabled yes`` on a free loopback port, joined by
``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.crc import key_slot

from instance_helpers import RedisServer, free_port

__all__ = ["LocalCluster", "running_cluster"]

#: How long a master may be silent before its replica takes over (ms): short, for the tests.
NODE_TIMEOUT_MS = 1000


class LocalCluster:
    """Six redis-servers in cluster mode (three masters, three replicas) under ``workdir``."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.nodes: list[RedisServer] = []
        for n in range(masters * 2):
            directory = workdir / f"node{n}"
            directory.mkdir()
            self.nodes.append(
                RedisServer(
                    None,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-replica-validity-factor",  # a replica may always take over
                    "0",
                    # The other shards keep serving while one fails over (the default refuses
                    # every command, cluster-wide, until every slot is served again).
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-port",  # else port + 10000, which may not exist
                    str(free_port()),
                    "--dir",
                    str(directory),
                )
            )

    @property
    def url(self) -> str:
        """The store URL naming every node (any one would do: the rest is discovered)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        exe = shutil.which("redis-cli")
        if exe is None:
            pytest.fail("redis-cli is not installed (apt-get install redis-tools)")
        subprocess.run(
            [
                exe,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)

    def client(self, node: RedisServer) -> Redis:
        return Redis(host="127.0.0.1", port=node.port, socket_timeout=2)

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and every live replica is in sync
        with its master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._node_ok(node) for node in self.live()):
                    return
            except Exception:  # a node still joining answers with errors
                pass
            if time.monotonic() > deadline:
                pytest.fail("the local Redis Cluster did not become ok")
            time.sleep(0.05)  # polling other processes: no event to await

    def _node_ok(self, node: RedisServer) -> bool:
        with self.client(node) as c:
            if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO").decode():
                return False
            role = c.execute_command("ROLE")
            return role[0] == b"master" or role[3] == b"connected"

    def master_of(self, key: str | bytes) -> RedisServer:
        """The live node serving ``key``'s slot as master, as the cluster sees it now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self.live():
            with self.client(node) as c:
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def move_slot(self, key: str | bytes) -> RedisServer:
        """Move ``key``'s slot, keys and all, to another master, as ``redis-cli --cluster
        reshard`` does (``IMPORTING``/``MIGRATING``, ``MIGRATE``, then ``SETSLOT … NODE`` on
        every master); returns the new master."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        source = self.master_of(key)
        masters = []
        for node in self.live():
            with self.client(node) as c:
                if c.execute_command("ROLE")[0] == b"master":
                    masters.append(node)
        target = next(node for node in masters if node is not source)
        with self.client(source) as src, self.client(target) as dst:
            src_id = src.execute_command("CLUSTER", "MYID")
            dst_id = dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in [target, source, *(n for n in masters if n not in (source, target))]:
            with self.client(node) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return target

    def fail_over_by_kill(self, key: str | bytes, timeout: float = 30.0) -> RedisServer:
        """Kill the master of ``key``'s slot and wait until its replica serves the slot."""
        old = self.master_of(key)
        old.stop(kill=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                new = self.master_of(key)
                if new is not old:
                    with self.client(new) as c:
                        if c.execute_command("ROLE")[0] == b"master":
                            self.wait_ok(timeout=max(1.0, deadline - time.monotonic()))
                            return new
            except (OSError, AssertionError, StopIteration):
                pass
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail("no replica took over the killed master's slots")
            time.sleep(0.05)  # polling other processes: no event to await


@contextmanager
def running_cluster() -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="ssegate-cluster-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            yield cluster.start()
        finally:
            cluster.stop()
