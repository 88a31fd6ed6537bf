"""Server processes: start pinned to a CPU, learn the port, measure RSS and CPU, stop.

RSS and CPU time come straight from ``/proc`` (Linux), for the process and its descendants
(granian's worker), so the harness needs no extra package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._loadgen import fetch

ROOT = Path(__file__).resolve().parent.parent
_PORT_LINE = re.compile(r"(?:PORT |:)(\d+)\s*$")


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces); [] if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, ()))
    return out


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)  # utime and stime are fields 14 and 15 of stat
    return (int(fields[11]) + int(fields[12])) / _TICKS if len(fields) > 12 else 0.0


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pin_self(cpu: int | None) -> None:
    """Run the calling process (the load generator) on ``cpu`` only."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    """A loopback port nobody listens on (a tiny race; good enough for a benchmark)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server in its own process (and session), optionally pinned to one CPU.

    ``argv`` runs the server. With ``port`` the server binds it; without, it must print its
    port on the first line of stdout (``PORT <n>``, or a URL ending in ``:<n>``).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cpu = cpu
        self.port = port or 0
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # kept for the process' life
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )

    @property
    def log_path(self) -> str:
        """Where the server's stderr goes."""
        return self._log.name

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the process and learn its port (blocking)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.env:
            env.update(self.env)
        cpu = self.cpu

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=ROOT,
            preexec_fn=pin,  # the caller is single-threaded
            start_new_session=True,
        )
        if not self.port:
            self.port = self._read_port(timeout)
        return self

    def _read_port(self, timeout: float) -> int:
        assert self.proc is not None
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.name} did not announce its port: {self.tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited: {self.tail()}")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace")
        match = _PORT_LINE.search(line)
        if match is None:
            raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
        return int(match.group(1))

    async def wait_ready(self, path: str = "/ready", timeout: float = 30.0) -> None:
        """Until ``GET path`` answers 200. Retries a refused connect (the server may not
        listen yet: there is no event to wait on across processes)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                reply = await fetch(self.port, "GET", path, timeout=timeout)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            if reply.status == 200:
                return
            raise RuntimeError(f"{self.name}: GET {path} answered {reply.status}")

    def _tree(self) -> list[int]:
        return [] if self.proc is None else _descendants(self.proc.pid)

    def rss(self) -> int:
        """Resident bytes of the server and its children."""
        return sum(_rss(pid) for pid in self._tree())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and its children so far."""
        return sum(_cpu_seconds(pid) for pid in self._tree())

    def tail(self, lines: int = 15) -> str:
        """The end of the server's stderr."""
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 3 s."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind (granian workers)
        if proc.stdout is not None:
            proc.stdout.close()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)
        self.proc = None


def peer_process(peer: str, *, cpu: int | None, env: dict[str, str] | None = None) -> ServerProcess:
    """A library peer (or the plain relay, ``relay``) from :mod:`benchmarks._serve_peer`."""
    return ServerProcess(
        peer, [sys.executable, "-m", "benchmarks._serve_peer", peer], cpu=cpu, env=env
    )


def mock_process(*, cpu: int | None) -> ServerProcess:
    """``ssegate mock-upstream`` on a free port."""
    return ServerProcess(
        "mock-upstream",
        [sys.executable, "-m", "ssegate", "mock-upstream", "--port", "0"],
        cpu=cpu,
    )


def gateway_process(
    upstream_port: int, *, cpu: int | None, store: str = "memory", extra: Sequence[str] = ()
) -> ServerProcess:
    """``ssegate serve`` in front of the mock upstream."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "ssegate",
        "serve",
        "--port",
        str(port),
        "--provider",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{upstream_port}/v1",
        "--model",
        "mock",
        "--log-level",
        "warning",
        "--store",
        store,
        *extra,
    ]
    return ServerProcess("ssegate-gateway", argv, cpu=cpu, port=port)
