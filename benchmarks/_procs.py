"""Server processes: start pinned to a CPU, learn the port, measure RSS and CPU, stop.

RSS and CPU time come straight from ``/proc`` (Linux), for the process and its descendants
(granian's worker), so the harness needs no extra package.

A peer named ``<peer>@pre-redesign`` runs ``<peer>`` on ssegate as of :data:`BASELINE`, the
commit before the current round of work: that commit's ``src/`` is extracted once into a
temporary directory (``git archive``) and put first on the server's ``PYTHONPATH``, so one run
compares before and after. Nothing of it is kept in the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._loadgen import fetch
from ._tls import TlsFiles

ROOT = Path(__file__).resolve().parent.parent
#: The commit the ``@pre-redesign`` peers run (the last one before the redesign).
BASELINE = "682cbbf"
BASELINE_SUFFIX = "@pre-redesign"
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


def baseline_available(rev: str = BASELINE) -> bool:
    """Whether this checkout has ``rev`` (a shallow clone may not)."""
    probe = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def baseline_source(rev: str = BASELINE) -> Path:
    """The ``src`` directory of ``rev``, extracted once into a temporary directory."""
    directory = Path(tempfile.gettempdir()) / f"ssegate-bench-src-{rev}"
    if not (directory / "src" / "ssegate" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
            capture_output=True,
            check=True,
        ).stdout
        staging = Path(tempfile.mkdtemp(prefix=f"ssegate-bench-src-{rev}-"))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(directory)
        except OSError:  # another run extracted it meanwhile
            pass
    return directory / "src"


def split_peer(peer: str) -> tuple[str, dict[str, str]]:
    """``(base peer, environment)``: for ``<base>@pre-redesign`` the environment puts the
    baseline's source first on ``PYTHONPATH`` (the benchmark code itself stays this one)."""
    if not peer.endswith(BASELINE_SUFFIX):
        return peer, {}
    base = peer[: -len(BASELINE_SUFFIX)]
    path = os.pathsep.join([str(baseline_source()), str(ROOT)])
    return base, {"PYTHONPATH": path}


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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cpu = cpu
        self.port = port or 0
        self.env = env
        self.ssl_context = ssl_context  # the server speaks TLS: how to reach it
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
                reply = await fetch(
                    self.port, "GET", path, timeout=timeout, ssl_context=self.ssl_context
                )
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
    """A library peer (or the plain relay, ``relay``) from :mod:`benchmarks._serve_peer`;
    ``<peer>@pre-redesign`` on the baseline's ssegate."""
    base, peer_env = split_peer(peer)
    return ServerProcess(
        peer,
        [sys.executable, "-m", "benchmarks._serve_peer", base],
        cpu=cpu,
        env={**peer_env, **(env or {})},
    )


def mock_process(*, cpu: int | None, tls: TlsFiles | None = None) -> ServerProcess:
    """The mock upstream on a free port (:mod:`benchmarks._serve_mock`); https with ``tls``."""
    argv = [sys.executable, "-m", "benchmarks._serve_mock", "--port", "0"]
    if tls is not None:
        argv += ["--tls", str(tls.server)]
    context = tls.client_context() if tls is not None else None
    return ServerProcess("mock-upstream", argv, cpu=cpu, ssl_context=context)


def gateway_process(
    upstream: str,
    *,
    cpu: int | None,
    store: str = "memory",
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """``ssegate serve`` in front of the mock upstream at ``upstream`` (its base URL, ``/v1``
    included); ``env`` is added to the server's environment."""
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
        upstream,
        "--model",
        "mock",
        "--log-level",
        "warning",
        "--store",
        store,
        *extra,
    ]
    return ServerProcess("ssegate-gateway", argv, cpu=cpu, port=port, env=env)
