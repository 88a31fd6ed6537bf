"""Detached generations: a provider's deltas, turned into stream events in a store.

A :class:`JobManager` owns one task group for the app's lifetime (entered in the lifespan).
:meth:`JobManager.start` creates a stream, appends its ``start`` event and returns at once;
the generation runs on in that task group, independent of any HTTP connection, so clients
can drop, resume (maybe on another instance) and cancel it.

Each job runs the provider next to three watchers in its own task group:

* **cancel** — :meth:`Store.wait_cancel` returns (``DELETE``, :meth:`JobManager.cancel`, or
  another instance through the store): the provider is closed and the stream ends with
  ``cancelled {}``, cause ``client`` (or whatever cause was requested);
* **abandon** (``on_disconnect="cancel"`` only) — :meth:`Store.wait_abandoned` returns after
  ``grace`` seconds with no subscriber: ``cancelled``, cause ``disconnect``. The grace clock
  starts at creation, so a stream nobody ever subscribes to (``POST`` without streaming and
  no follow-up ``GET``) stops after ``grace`` too; with ``on_disconnect="continue"`` it runs to
  the end and records its usage;
* **lease** — renews the producer's lease every ``store.lease_ttl / 3`` seconds.

Passing ``max_duration`` ends the stream with an ``error`` event, code ``timeout``, cause
``timeout``: a server-side limit is a failure the client should see and may retry, not a
cancel it asked for (Spring's ``SseEmitter`` timeout in the seed ends the request the same
way). App shutdown (:meth:`JobManager.drain`, or leaving the manager) ends streams with
``cancelled``, cause ``shutdown``.

Provider outcomes: any :class:`~ssegate.SsegateError` (normally an ``UpstreamError``) ends the
stream with ``error`` and its ``to_dict()``; any other exception is logged with its traceback
and ends it with ``error`` code ``internal`` and a generic message. ``usage`` is appended once,
just before ``done``, when the provider reported it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import orjson
from anyio.abc import TaskGroup

from ._errors import ShuttingDownError, SsegateError
from .providers._base import (
    AnnotationDelta,
    ChatRequest,
    Delta,
    Finish,
    Provider,
    ReasoningDelta,
    RefusalDelta,
    ResponseMeta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from .store import StoreError
from .store._base import Store, StreamInfo, StreamStatus

__all__ = [
    "JobManager",
    "JobObserver",
    "ObserverChain",
    "OnDisconnect",
    "ShuttingDownError",
    "new_stream_id",
]

logger = logging.getLogger("ssegate.jobs")

OnDisconnect = Literal["cancel", "continue"]

#: Bound on shielded clean-up (closing the provider, writing the terminal event), so a stuck
#: upstream or store can't hold shutdown forever.
CLEANUP_TIMEOUT = 5.0


def new_stream_id() -> str:
    """A fresh, unguessable stream id: ``st_`` and 128 random bits, URL-safe."""
    return "st_" + secrets.token_urlsafe(16)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


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


@dataclass(slots=True)
class _Outcome:
    status: StreamStatus
    data: dict[str, Any]
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cause: str | None = None


class _Job:
    __slots__ = (
        "cause",
        "deltas",
        "done",
        "first_delta",
        "grace",
        "last_delta",
        "on_disconnect",
        "provider",
        "request",
        "scope",
        "started",
        "stream_id",
    )

    def __init__(
        self,
        stream_id: str,
        provider: Provider,
        request: ChatRequest,
        *,
        on_disconnect: OnDisconnect,
        grace: float,
        max_duration: float,
    ):
        self.stream_id = stream_id
        self.provider = provider
        self.request = request
        self.on_disconnect = on_disconnect
        self.grace = grace
        # Observer timings (first token, deltas, duration) read time.monotonic(): read once per
        # delta, anyio.current_time() costs several times more (it asks which loop runs).
        self.started = time.monotonic()
        # Made before the task runs, so a cancel that comes first still takes effect. The
        # deadline is on the event loop's clock.
        self.scope = anyio.CancelScope(deadline=anyio.current_time() + max_duration)
        self.cause: str | None = None
        self.done = anyio.Event()
        self.deltas = 0  # for JobObserver.on_generated
        self.first_delta = self.last_delta = 0.0

    def cancel(self, cause: str) -> None:
        if self.cause is None:
            self.cause = cause
        self.scope.cancel()


@asynccontextmanager
async def _closing(deltas: AsyncIterator[Delta]) -> AsyncIterator[AsyncIterator[Delta]]:
    """``contextlib.aclosing()``, with ``aclose()`` shielded and bounded.

    The job's scope is usually cancelled when we get here; unshielded, the provider's
    clean-up awaits (closing the upstream response) would be cancelled before the TCP
    connection is released.
    """
    try:
        yield deltas
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
                await aclose()


class JobManager:
    """Runs generations detached from HTTP connections, in one task group.

    Use ``async with JobManager(store) as jobs:`` in the app's lifespan. Leaving the block
    cancels the generations still running (cause ``shutdown``); call :meth:`drain` first to
    give them time to finish.
    """

    def __init__(self, store: Store, *, observer: JobObserver | None = None):
        self.store = store
        self.observer = observer
        self._jobs: dict[str, _Job] = {}
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
                _dumps(
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
        job = _Job(
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
        tg.start_soon(self._run, job, name=f"ssegate job {stream_id}")
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

    # -- one job -----------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        outcome: _Outcome | None = None
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_cancel, job)
                    tg.start_soon(self._keep_lease, job)
                    if job.on_disconnect == "cancel":
                        tg.start_soon(self._watch_abandon, job)
                    outcome = await self._generate(job)
                    tg.cancel_scope.cancel()
            except Exception:
                # A watcher failed (they handle StoreError themselves): a bug.
                logger.exception("job %s failed", job.stream_id)
                if outcome is None:
                    outcome = _internal_error()
        finally:
            if outcome is None:  # cancelled from outside: app shutdown
                outcome = _Outcome(
                    StreamStatus.CANCELLED,
                    {"cause": job.cause or "shutdown"},
                    cause=job.cause or "shutdown",
                )
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
                await self._finish(job, outcome)
            del self._jobs[job.stream_id]
            job.done.set()
            if job.deltas:
                self._notify(
                    "on_generated", job.stream_id, job.deltas, job.last_delta - job.first_delta
                )
            if outcome.error is not None:
                self._notify("on_error", job.stream_id, outcome.error)
            self._notify(
                "on_finish",
                job.stream_id,
                outcome.status,
                outcome.cause,
                time.monotonic() - job.started,
                outcome.usage,
            )

    async def _generate(self, job: _Job) -> _Outcome:
        store, sid = self.store, job.stream_id
        usage: dict[str, Any] | None = None
        finish_reason = "stop"
        first_token = True
        try:
            with job.scope:
                async with _closing(job.provider.stream(job.request)) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, TextDelta):
                            event, data = "delta", _dumps({"text": delta.text})
                        elif isinstance(delta, ReasoningDelta):
                            event, data = "reasoning", _dumps({"text": delta.text})
                        elif isinstance(delta, ToolCallDelta):
                            event, data = "tool_call", _dumps(delta.to_dict())
                        elif isinstance(delta, Usage):
                            usage = delta.to_dict()  # the last report wins; sent before done
                            continue
                        elif isinstance(delta, Finish):
                            # Keep reading: OpenAI sends usage after the finish_reason chunk.
                            finish_reason = delta.reason
                            continue
                        elif isinstance(delta, RefusalDelta):
                            event, data = "refusal", _dumps({"text": delta.text})
                        elif isinstance(delta, AnnotationDelta):
                            event, data = "annotations", _dumps({"annotations": delta.annotations})
                        elif isinstance(delta, ResponseMeta):
                            # About the response, not a token: stored, not counted.
                            await store.append(sid, "meta", _dumps(delta.to_dict()))
                            continue
                        else:
                            continue
                        now = time.monotonic()
                        if first_token:
                            first_token = False
                            job.first_delta = now
                            self._notify("on_first_token", sid, now - job.started)
                        await store.append(sid, event, data)
                        job.deltas += 1
                        job.last_delta = now
                return _Outcome(StreamStatus.DONE, {"finish_reason": finish_reason}, usage=usage)
        except SsegateError as exc:
            if not job.scope.cancel_called:
                logger.info("stream %s ended with %s: %s", sid, exc.code, exc.detail)
                error = exc.to_dict()
                return _Outcome(StreamStatus.ERROR, error, usage=usage, error=error)
        except Exception:
            if not job.scope.cancel_called:
                logger.exception("stream %s: the generation failed", sid)
                return _internal_error(usage)
        # The scope was cancelled (what the provider raised while closing doesn't matter).
        if job.cause is not None:
            return _Outcome(
                StreamStatus.CANCELLED, {"cause": job.cause}, usage=usage, cause=job.cause
            )
        error = {
            "code": "timeout",
            "message": "the generation ran longer than its time limit",
            "retryable": False,
        }
        return _Outcome(StreamStatus.ERROR, error, usage=usage, error=error, cause="timeout")

    async def _finish(self, job: _Job, outcome: _Outcome) -> None:
        sid = job.stream_id
        try:
            if outcome.status is StreamStatus.DONE and outcome.usage is not None:
                await self.store.append(sid, "usage", _dumps(outcome.usage))
            await self.store.finish(
                sid,
                outcome.status,
                _dumps(outcome.data),
                usage=outcome.usage,
                error=outcome.error,
                cause=outcome.cause,
            )
        except StoreError as exc:  # deleted meanwhile, or the store is down
            logger.warning("stream %s: could not record its end: %s", sid, exc)

    async def _watch_cancel(self, job: _Job) -> None:
        try:
            cause = await self.store.wait_cancel(job.stream_id)
        except StoreError as exc:
            logger.warning("stream %s: cannot watch for cancel: %s", job.stream_id, exc)
            return
        job.cancel(cause)

    async def _watch_abandon(self, job: _Job) -> None:
        try:
            await self.store.wait_abandoned(job.stream_id, job.grace)
        except StoreError as exc:
            logger.warning("stream %s: cannot watch subscribers: %s", job.stream_id, exc)
            return
        job.cancel("disconnect")

    async def _keep_lease(self, job: _Job) -> None:
        interval = self.store.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            try:
                await self.store.renew_lease(job.stream_id)
            except StoreError as exc:
                logger.warning("stream %s: lease not renewed: %s", job.stream_id, exc)

    def _notify(self, name: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, name)(*args)
        except Exception:
            logger.exception("job observer %s failed", name)


def _internal_error(usage: dict[str, Any] | None = None) -> _Outcome:
    error = {"code": "internal", "message": "internal error", "retryable": False}
    return _Outcome(StreamStatus.ERROR, error, usage=usage, error=error)
