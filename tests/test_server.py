"""``ssegate.server``: several listening sockets on one port, and the gateway serving on them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ssegate.server import listening_sockets


def _listening_on(port: int) -> int:
    """How many sockets listen on ``port`` (IPv4), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing")
def test_listening_sockets_share_one_port_and_every_connection_is_accepted() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 4)
    try:
        port = sockets[0].getsockname()[1]
        assert {sock.getsockname()[1] for sock in sockets} == {port}
        assert _listening_on(port) == 4
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        accepted = 0
        for sock in sockets:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
        assert accepted == 64  # every connection landed on one of the four
        for client in clients:
            client.close()
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_in_use_is_refused_even_with_several_sockets() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            listening_sockets("127.0.0.1", port, 4)
    # ... and a port our own SO_REUSEPORT sockets hold is not silently shared either.
    ours = listening_sockets("127.0.0.1", 0, 2)
    try:
        with pytest.raises(OSError, match="in use"):
            listening_sockets("127.0.0.1", ours[0].getsockname()[1], 2)
    finally:
        for sock in ours:
            sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/tcp")
def test_the_gateway_listens_on_as_many_sockets_as_it_is_told() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssegate", "serve", "--port", str(port), "--listeners", "3"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            assert proc.poll() is None, "the gateway exited"
            time.sleep(0.1)
        assert _listening_on(port) == 3
    finally:
        proc.terminate()
        proc.wait(15)
