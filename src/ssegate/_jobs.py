"""Detached generations: the manager that starts, cancels and drains them.

A :class:`JobManager` owns one task group for the app's lifetime (entered in the lifespan).
:meth:`JobManager.start` creates a stream, appends its ``start`` event and returns at once;
the generation runs on in that task group, independent of any HTTP connection, so clients
can drop, resume (maybe on another instance) and cancel it.

How one generation runs (its watchers, time limit and outcomes) is in :mod:`._job_run`; the
observer callbacks are in :mod:`._job_observer`. Passing ``max_duration`` ends the stream
with an ``error`` event, code ``timeout``, cause ``timeout`` (Spring's ``SseEmitter`` timeout
in the seed ends the request the same way). App shutdown (:meth:`JobManager.drain`, or
leaving the manager) ends streams with ``cancelled``, cause ``shutdown``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from ._errors import ShuttingDownError
from ._job_observer import JobObserver, ObserverChain, notify_observer
from ._job_run import Job, OnDisconnect, dumps, run_job
from .providers._base import ChatRequest, Provider
from .store._base import Store, StreamInfo

__all__ = [
    "JobManager",
    "JobObserver",
    "ObserverChain",
    "OnDisconnect",
    "ShuttingDownError",
    "new_stream_id",
]


def new_stream_id() -> str:
    """A fresh, unguessable stream id: ``st_`` and 128 random bits, URL-safe."""
    return "st_" + secrets.token_urlsafe(16)


class JobManager:
    """Runs generations detached from HTTP connections, in one task group.

    Use ``async with JobManager(store) as jobs:`` in the app's lifespan. Leaving the block
    cancels the generations still running (cause ``shutdown``); call :meth:`drain` first to
    give them time to finish.
    """

    def __init__(self, store: Store, *, observer: JobObserver | None = None):
        self.store = store
        self.observer = observer
        self._jobs: dict[str, Job] = {}
        self._tg: TaskGroup | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closing:
            raise RuntimeError("a JobManager can be entered once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._closing = True
        for job in list(self._jobs.values()):
            job.cancel("shutdown")
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    # -- public API --------------------------------------------------------------------

    async def start(
        self,
        provider: Provider,
        request: ChatRequest,
        *,
        model_label: str | None = None,
        start_extra: Callable[[str], Mapping[str, Any]] | None = None,
        owner: str | None = None,
        on_disconnect: OnDisconnect = "cancel",
        grace: float = 5.0,
        max_duration: float = 360.0,
    ) -> StreamInfo:
        """Create a stream, append ``start``, and run the generation in the background.

        ``model_label`` is the model name clients see (default ``request.model``);
        ``start_extra(stream_id)`` adds fields to the ``start`` event (a read token); ``owner``
        is recorded for ownership checks. Returns the stream's info (its ``start`` event has
        id 1) without waiting for the generation. Raises :class:`ShuttingDownError` once
        draining, and whatever the store raises (``StoreFullError``...).
        """
        if on_disconnect not in ("cancel", "continue"):
            raise ValueError(f"on_disconnect must be 'cancel' or 'continue', not {on_disconnect!r}")
        if grace < 0:
            raise ValueError("grace must be >= 0")
        if not max_duration > 0:
            raise ValueError("max_duration must be positive")
        tg = self._tg
        if tg is None or self._closing:
            raise ShuttingDownError("the gateway is shutting down")
        label = model_label if model_label is not None else request.model
        stream_id = new_stream_id()
        info = await self.store.create(stream_id, model=label, provider=provider.name, owner=owner)
        try:
            start = await self.store.append(
                stream_id,
                "start",
                dumps(
                    {
                        "stream_id": stream_id,
                        "model": label,
                        "created": int(info.created),
                        **(start_extra(stream_id) if start_extra is not None else {}),
                    }
                ),
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.delete(stream_id)
            raise
        job = Job(
            stream_id,
            provider,
            request,
            on_disconnect=on_disconnect,
            grace=grace,
            max_duration=max_duration,
        )
        self._jobs[stream_id] = job
        info = replace(info, last_event_id=start.id)
        self._notify("on_start", info)
        tg.start_soon(
            run_job, job, self.store, self._notify, self._forget, name=f"ssegate job {stream_id}"
        )
        return info

    async def cancel(self, stream_id: str, cause: str = "client") -> bool:
        """Stop a generation, here or on another instance (through the store).

        Returns ``False`` if the stream had already finished. Raises ``StreamNotFoundError``.
        """
        job = self._jobs.get(stream_id)
        if job is not None:
            job.cancel(cause)  # local: don't wait for the store's signal to come back
        requested = await self.store.request_cancel(stream_id, cause)
        return requested or job is not None

    def active(self) -> int:
        """How many generations are running in this process."""
        return len(self._jobs)

    def running(self) -> list[str]:
        """The stream ids of the generations running in this process."""
        return list(self._jobs)

    async def drain(self, grace: float) -> int:
        """Refuse new generations, wait up to ``grace`` s for running ones, cancel the rest.

        Returns how many were cancelled (their streams end ``cancelled``, cause ``shutdown``).
        """
        self._closing = True
        with anyio.move_on_after(grace):
            for job in list(self._jobs.values()):
                await job.done.wait()
        left = list(self._jobs.values())
        for job in left:
            job.cancel("shutdown")
        for job in left:
            await job.done.wait()
        return len(left)

    # -- what each job calls back -------------------------------------------------------

    def _forget(self, stream_id: str) -> None:
        del self._jobs[stream_id]

    def _notify(self, name: str, *args: Any) -> None:
        notify_observer(self.observer, name, *args)
