"""``ssegate serve --workers N``: N forked processes serving one port, and their supervisor.

The parent binds every listening socket first (``--listeners`` per worker, all on one port with
``SO_REUSEPORT``), so ``--port 0`` and a port in use behave as with one process. It then forks
the workers, each serving its own share of the sockets (the kernel spreads new connections over
all of them), and closes its copies: a worker that dies takes its sockets out of the port's
group, and no connection waits on a socket nobody accepts from.

The parent only supervises:

* SIGTERM or SIGINT: passed on to every worker, which drains as one process does
  (docs/deploy.md); the parent exits 0 once all have exited cleanly.
* A worker that exits unasked (crash, OOM kill, a store it cannot reach at start): logged with
  its pid and status, the others are stopped the same graceful way, and the parent exits 1, so
  the process manager (systemd, Kubernetes) restarts the whole gateway and sees why. A restart
  loop inside the parent would hide a worker that dies at every start.
* Stopping is bounded: a worker still running ``stop_timeout`` seconds after it was asked to
  stop is killed (SIGKILL), and the exit is 1.
* A parent killed outright (SIGKILL, Linux): the kernel sends every worker SIGTERM
  (``PR_SET_PDEATHSIG``), so none outlives the command holding the port.
* A worker that cannot be forked: the ones started are stopped, and the exit is 1.

Workers share nothing but the store: each is a full gateway instance, so ``--workers`` needs a
shared store (Redis), exactly as several machines do. Each response carries
``X-Ssegate-Worker: <pid>`` so the worker that answered can be told apart.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from ._settings import Settings

__all__ = ["WORKER_HEADER", "supervise", "worker_shares", "workers_refusal"]

WORKER_HEADER = "x-ssegate-worker"

log = logging.getLogger("ssegate.gateway")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def workers_refusal(settings: Settings) -> str | None:
    """Why ``--workers`` can't be used with these settings, or ``None``."""
    workers = settings.server.workers
    if workers > 1 and settings.store.url == "memory":
        return (
            f"--workers {workers} needs a shared store (--store redis://…): with the memory "
            "store each worker keeps its own streams, invisible to the others, so a resume or "
            "DELETE reaching another worker would find no stream"
        )
    return None


def worker_shares(sockets: list[socket.socket], count: int) -> list[list[socket.socket]]:
    """The sockets each of ``count`` workers serves: an equal share of them, or all of them
    where there are fewer sockets than workers (no ``SO_REUSEPORT``: one shared socket)."""
    if len(sockets) < count:
        return [list(sockets) for _ in range(count)]
    return [sockets[i::count] for i in range(count)]


class _Supervisor:
    def __init__(self, stop_timeout: float) -> None:
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self.failed = False
        self.stop_timeout = stop_timeout

    def stop(self, reason: str) -> None:
        """Ask every worker to drain and stop; kill what is left after the stop timeout."""
        if not self.stopping:
            self.stopping = True
            log.info("stopping %d worker(s): %s", len(self.children), reason)
            signal.signal(signal.SIGALRM, self._kill_all)
            signal.alarm(max(1, math.ceil(self.stop_timeout)))
        for pid in self.children:
            _signal(pid, signal.SIGTERM)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(signum).name)

    def _kill_all(self, signum: int, frame: FrameType | None) -> None:
        for pid in self.children:
            log.error("worker pid %d did not stop within %.0f s: killed", pid, self.stop_timeout)
            _signal(pid, signal.SIGKILL)
        self.failed = True

    def reap(self) -> None:
        """Wait for every worker to exit (``os.waitpid`` resumes after a handled signal)."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - no children left
                break
            number = self.children.pop(pid, None)
            if number is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code in _CLEAN_EXITS and self.stopping:
                continue
            self.failed = True
            log.error("worker %d (pid %d) exited unasked: %s", number, pid, _describe(code))
            self.stop(f"worker {number} (pid {pid}) exited")
        signal.alarm(0)


def supervise(
    shares: list[list[socket.socket]],
    serve_worker: Callable[[list[socket.socket]], int],
    *,
    stop_timeout: float,
) -> int:
    """Fork one worker per share of sockets, each running ``serve_worker(share)`` (its return
    value is the worker's exit code); supervise them as the module says; the exit code."""
    supervisor = _Supervisor(stop_timeout)
    every = [sock for share in shares for sock in share]
    parent = os.getpid()
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    # Block the stop signals while forking: a child must never run the parent's handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, supervisor.on_signal)
        for number, share in enumerate(shares, start=1):
            try:
                pid = os.fork()
            except OSError as exc:
                log.error("cannot start worker %d: %s", number, exc)
                supervisor.failed = True
                supervisor.stop(f"worker {number} could not start")
                break
            if pid == 0:  # pragma: no cover - the worker; its coverage is its own process's
                _run_worker(parent, share, every, serve_worker)
            supervisor.children[pid] = number
        for sock in every:
            sock.close()
        if not supervisor.stopping:
            pids = " ".join(str(pid) for pid in supervisor.children)
            log.info("%d workers serving, pids %s", len(shares), pids)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        supervisor.reap()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if supervisor.failed else 0


def _run_worker(
    parent: int,
    share: list[socket.socket],
    every: list[socket.socket],
    serve_worker: Callable[[list[socket.socket]], int],
) -> None:  # pragma: no cover - runs in the forked worker
    """The forked worker's whole life: default signals, stopped with its parent, only its own
    sockets open, serve, exit without returning."""
    code = 1
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        _stop_with(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        for sock in every:
            if sock not in share:
                sock.close()
        code = serve_worker(share)
    except BaseException:
        log.exception("worker pid %d failed", os.getpid())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_with(parent: int) -> None:  # pragma: no cover - runs in the forked worker
    """Linux: have the kernel send this worker SIGTERM when its parent dies, even by SIGKILL,
    so no worker outlives the command holding the port (it drains, then exits)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited meanwhile; reap() collects it


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
