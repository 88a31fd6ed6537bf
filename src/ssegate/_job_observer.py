"""The job observer protocol: the callbacks a generation reports to (metrics, logs, quotas).

:class:`JobObserver` is the base to subclass, :class:`ObserverChain` fans one call out to
several, and :func:`notify_observer` is how a job calls one without letting it fail the job.
"""

from __future__ import annotations

import logging
from typing import Any

from .store._base import StreamInfo, StreamStatus

__all__ = ["JobObserver", "ObserverChain", "notify_observer"]

logger = logging.getLogger("ssegate.jobs")


class JobObserver:
    """Optional callbacks for metrics; subclass and override what you need.

    Called from the job's task: keep them quick and non-blocking. An exception in one is
    logged and ignored.
    """

    def on_start(self, info: StreamInfo) -> None:
        """A stream was created and its job started."""

    def on_first_token(self, stream_id: str, latency: float) -> None:
        """The first text, reasoning or tool-call delta arrived ``latency`` s after start."""

    def on_generated(self, stream_id: str, deltas: int, seconds: float) -> None:
        """The generation stored ``deltas`` deltas, ``seconds`` apart from first to last.

        Called before :meth:`on_finish` when at least one delta came.
        """

    def on_error(self, stream_id: str, error: dict[str, Any]) -> None:
        """The stream is ending with ``error`` (its ``error`` event's data); before on_finish."""

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        """The stream ended with ``status`` after ``duration`` s (``cause`` for cancel/timeout)."""


class ObserverChain(JobObserver):
    """Several job observers as one (a :class:`JobManager` takes one). ``None``s are skipped;
    one observer failing does not keep the others from being called."""

    def __init__(self, *observers: JobObserver | None) -> None:
        self.observers: tuple[JobObserver, ...] = tuple(o for o in observers if o is not None)

    def _each(self, name: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:
                logger.exception("job observer %s failed", name)

    def on_start(self, info: StreamInfo) -> None:
        self._each("on_start", info)

    def on_first_token(self, stream_id: str, latency: float) -> None:
        self._each("on_first_token", stream_id, latency)

    def on_generated(self, stream_id: str, deltas: int, seconds: float) -> None:
        self._each("on_generated", stream_id, deltas, seconds)

    def on_error(self, stream_id: str, error: dict[str, Any]) -> None:
        self._each("on_error", stream_id, error)

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        self._each("on_finish", stream_id, status, cause, duration, usage)


def notify_observer(observer: JobObserver | None, name: str, *args: Any) -> None:
    """Call ``observer.<name>(*args)`` if there is an observer; log and ignore its failure."""
    if observer is None:
        return
    try:
        getattr(observer, name)(*args)
    except Exception:
        logger.exception("job observer %s failed", name)
