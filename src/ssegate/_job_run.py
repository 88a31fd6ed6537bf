"""One detached generation, from the provider's first delta to the stream's terminal event.

:class:`Job` is the record a :class:`~ssegate._jobs.JobManager` keeps per running stream;
:func:`run_job` runs it. The provider runs next to three watchers in the job's own task
group:

* **cancel** — :meth:`Store.wait_cancel` returns (``DELETE``, :meth:`JobManager.cancel`, or
  another instance through the store): the provider is closed and the stream ends with
  ``cancelled {}``, cause ``client`` (or whatever cause was requested);
* **abandon** (``on_disconnect="cancel"`` only) — :meth:`Store.wait_abandoned` returns after
  ``grace`` seconds with no subscriber: ``cancelled``, cause ``disconnect``. The grace clock
  starts at creation, so a stream nobody ever subscribes to (``POST`` without streaming and
  no follow-up ``GET``) stops after ``grace`` too; with ``on_disconnect="continue"`` it runs to
  the end and records its usage;
* **lease** — renews the producer's lease every ``store.lease_ttl / 3`` seconds.

The job's ``max_duration`` ends the stream with an ``error`` event, code ``timeout``, cause
``timeout``: a server-side limit is a failure the client should see and may retry, not a
cancel it asked for. Cancelled from outside (app shutdown), it ends ``cancelled``, cause
``shutdown``.

Provider outcomes: any :class:`~ssegate.SsegateError` (normally an ``UpstreamError``) ends the
stream with ``error`` and its ``to_dict()``; any other exception is logged with its traceback
and ends it with ``error`` code ``internal`` and a generic message. ``usage`` is appended once,
just before ``done``, when the provider reported it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson

from ._errors import SsegateError
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
from .store._base import Store, StreamStatus

__all__ = ["CLEANUP_TIMEOUT", "Job", "Notify", "OnDisconnect", "dumps", "run_job"]

logger = logging.getLogger("ssegate.jobs")

OnDisconnect = Literal["cancel", "continue"]

#: How a job reports to its observer: ``notify("on_finish", *args)``; never raises.
Notify = Callable[..., None]

#: Bound on shielded clean-up (closing the provider, writing the terminal event), so a stuck
#: upstream or store can't hold shutdown forever.
CLEANUP_TIMEOUT = 5.0


def dumps(obj: object) -> str:
    """An event's data as JSON text."""
    return orjson.dumps(obj).decode()


class Job:
    """One running generation: what it runs, its cancel scope, and its observer timings."""

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
        """Stop the generation; the first cause given is the one recorded."""
        if self.cause is None:
            self.cause = cause
        self.scope.cancel()


@dataclass(slots=True)
class _Outcome:
    status: StreamStatus
    data: dict[str, Any]
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cause: str | None = None


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


async def run_job(job: Job, store: Store, notify: Notify, forget: Callable[[str], None]) -> None:
    """Run ``job`` to its end and record that end in ``store``.

    Then ``forget(stream_id)`` (the manager drops the job), ``job.done`` is set, and the
    observer hears ``on_generated``, ``on_error`` and ``on_finish``.
    """
    outcome: _Outcome | None = None
    try:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_cancel, job, store)
                tg.start_soon(_keep_lease, job, store)
                if job.on_disconnect == "cancel":
                    tg.start_soon(_watch_abandon, job, store)
                outcome = await _generate(job, store, notify)
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
            await _finish(job, store, outcome)
        forget(job.stream_id)
        job.done.set()
        if job.deltas:
            notify("on_generated", job.stream_id, job.deltas, job.last_delta - job.first_delta)
        if outcome.error is not None:
            notify("on_error", job.stream_id, outcome.error)
        notify(
            "on_finish",
            job.stream_id,
            outcome.status,
            outcome.cause,
            time.monotonic() - job.started,
            outcome.usage,
        )


async def _generate(job: Job, store: Store, notify: Notify) -> _Outcome:
    sid = job.stream_id
    usage: dict[str, Any] | None = None
    finish_reason = "stop"
    first_token = True
    try:
        with job.scope:
            async with _closing(job.provider.stream(job.request)) as deltas:
                async for delta in deltas:
                    if isinstance(delta, TextDelta):
                        event, data = "delta", dumps({"text": delta.text})
                    elif isinstance(delta, ReasoningDelta):
                        event, data = "reasoning", dumps({"text": delta.text})
                    elif isinstance(delta, ToolCallDelta):
                        event, data = "tool_call", dumps(delta.to_dict())
                    elif isinstance(delta, Usage):
                        usage = delta.to_dict()  # the last report wins; sent before done
                        continue
                    elif isinstance(delta, Finish):
                        # Keep reading: OpenAI sends usage after the finish_reason chunk.
                        finish_reason = delta.reason
                        continue
                    elif isinstance(delta, RefusalDelta):
                        event, data = "refusal", dumps({"text": delta.text})
                    elif isinstance(delta, AnnotationDelta):
                        event, data = "annotations", dumps({"annotations": delta.annotations})
                    elif isinstance(delta, ResponseMeta):
                        # About the response, not a token: stored, not counted.
                        await store.append(sid, "meta", dumps(delta.to_dict()))
                        continue
                    else:
                        continue
                    now = time.monotonic()
                    if first_token:
                        first_token = False
                        job.first_delta = now
                        notify("on_first_token", sid, now - job.started)
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
        return _Outcome(StreamStatus.CANCELLED, {"cause": job.cause}, usage=usage, cause=job.cause)
    error = {
        "code": "timeout",
        "message": "the generation ran longer than its time limit",
        "retryable": False,
    }
    return _Outcome(StreamStatus.ERROR, error, usage=usage, error=error, cause="timeout")


async def _finish(job: Job, store: Store, outcome: _Outcome) -> None:
    sid = job.stream_id
    try:
        if outcome.status is StreamStatus.DONE and outcome.usage is not None:
            await store.append(sid, "usage", dumps(outcome.usage))
        await store.finish(
            sid,
            outcome.status,
            dumps(outcome.data),
            usage=outcome.usage,
            error=outcome.error,
            cause=outcome.cause,
        )
    except StoreError as exc:  # deleted meanwhile, or the store is down
        logger.warning("stream %s: could not record its end: %s", sid, exc)


async def _watch_cancel(job: Job, store: Store) -> None:
    try:
        cause = await store.wait_cancel(job.stream_id)
    except StoreError as exc:
        logger.warning("stream %s: cannot watch for cancel: %s", job.stream_id, exc)
        return
    job.cancel(cause)


async def _watch_abandon(job: Job, store: Store) -> None:
    try:
        await store.wait_abandoned(job.stream_id, job.grace)
    except StoreError as exc:
        logger.warning("stream %s: cannot watch subscribers: %s", job.stream_id, exc)
        return
    job.cancel("disconnect")


async def _keep_lease(job: Job, store: Store) -> None:
    interval = store.lease_ttl / 3
    while True:
        await anyio.sleep(interval)
        try:
            await store.renew_lease(job.stream_id)
        except StoreError as exc:
            logger.warning("stream %s: lease not renewed: %s", job.stream_id, exc)


def _internal_error(usage: dict[str, Any] | None = None) -> _Outcome:
    error = {"code": "internal", "message": "internal error", "retryable": False}
    return _Outcome(StreamStatus.ERROR, error, usage=usage, error=error)
