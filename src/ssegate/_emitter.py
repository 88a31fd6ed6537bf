"""``SseEmitter``: Spring's ``SseEmitter`` in Python, for threads and coroutines.

The seed's pattern works as written: a handler makes an emitter, registers callbacks, sends
``"start"``, hands the emitter to a plain worker thread and returns it; the worker sends and
finally calls :meth:`~SseEmitter.complete` (or :meth:`~SseEmitter.complete_with_error`). The
emitter is itself an ASGI response (a Starlette ``Response``), so a Starlette or FastAPI route
returns it directly, and it streams through :class:`~ssegate.EventSourceResponse` (heartbeats,
coalesced writes, disconnect and shutdown handling).

Events are encoded when they are sent and wait in one bounded, thread-safe queue that needs no
event loop, so ``send()`` works before the emitter is returned. While the queue is full — the
client is behind — a sending thread blocks and a sending coroutine awaits, so memory stays flat.

Where this departs from Spring, on purpose:

* ``timeout`` is in seconds (Spring: milliseconds) and counts from construction (Spring: from
  the handler's return, moments later); ``None`` means no timeout. When it passes, the
  ``on_timeout`` callbacks run, events still queued are dropped, and the stream ends cleanly.
* ``complete_with_error(exc)`` writes the queued events, then one ``event: error`` with the
  JSON ``{"code", "message", "retryable"}`` of the gateway protocol (for an exception that is
  not an :class:`~ssegate.SsegateError`, ``{"code": "internal", "message": "internal error"}``,
  so no internal detail leaks), then ends the stream. Spring just ends the response. A browser's
  ``EventSource`` fires ``onerror`` for an ``error`` event, as the seed's page expects.
* A client that goes away is not an error: ``on_completion`` runs, ``on_error`` does not;
  :attr:`SseEmitter.close_reason` tells why the stream ended.
* Callbacks run on the event loop thread that serves the stream, once the stream has ended
  (``on_timeout`` / ``on_error`` first, then ``on_completion``); a callback registered after
  that runs at once in the registering thread. They must not block; an exception in one is
  logged and never reaches the server.
* ``send()`` on an event loop thread never blocks the loop: if the queue is full it raises
  ``RuntimeError`` — coroutines use ``await asend()``.

This module is the public face (Spring's API, the callbacks, the ASGI response); the queue,
the lifecycle and the cross-thread wake-ups under it are :mod:`ssegate._emitter_queue`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import anyio.lowlevel
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._emitter_queue import EmitterQueue, EmitterState, EmitterStatistics
from ._response import CloseReason, EventSourceResponse, EventStreamOptions
from ._shutdown import ShutdownSignal
from .codec import ServerSentEvent, encode, encode_fields

__all__ = ["EmitterState", "EmitterStatistics", "SseEmitter"]

log = logging.getLogger("ssegate.emitter")


def _encode(
    data: object, event: str | None, id: str | None, retry: int | None, comment: str | None
) -> bytes:
    if isinstance(data, ServerSentEvent):
        if event is not None or id is not None or retry is not None or comment is not None:
            raise TypeError("pass event/id/retry/comment inside the ServerSentEvent")
        return encode(data)
    if isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("send() takes str, a JSON-serializable object or a ServerSentEvent")
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    if retry is None and comment is None:
        return encode_fields(text, event=event, id=id)
    return encode(ServerSentEvent(data=text, event=event, id=id, retry=retry, comment=comment))


class SseEmitter(Response):
    """A Server-Sent Events emitter with Spring's API; return it from a route.

    ``timeout``: seconds until the stream is ended (``None``: never). ``max_queued`` and
    ``max_queued_bytes`` bound the events waiting for the client (one event larger than the
    byte bound is still accepted into an empty queue). ``options`` are the stream's options
    (heartbeat, ``retry``, ``send_timeout``...); ``shutdown`` the server's
    :class:`~ssegate.ShutdownSignal` when it is not found in the lifespan state.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        timeout: float | None = 360.0,
        *,
        max_queued: int = 256,
        max_queued_bytes: int = 1024 * 1024,
        options: EventStreamOptions | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        shutdown: ShutdownSignal | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None")
        if max_queued < 1 or max_queued_bytes < 1:
            raise ValueError("max_queued and max_queued_bytes must be positive")
        self._response = EventSourceResponse(
            _EmitterStream(self), status_code, headers, options=options, shutdown=shutdown
        )
        self.status_code = status_code
        self.background = None
        # One header list: changes through ``emitter.headers`` reach the response.
        self.raw_headers = self._response.raw_headers
        self.timeout = timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._queue = EmitterQueue(max_queued, max_queued_bytes, deadline)
        # The callbacks and whether they have run; the queue's reason and error are final by
        # the time ``_finished`` is set.
        self._callbacks_lock = threading.Lock()
        self._finished = False
        self._on_completion: list[Callable[[], object]] = []
        self._on_timeout: list[Callable[[], object]] = []
        self._on_error: list[Callable[[BaseException], object]] = []

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        data: object,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        """Queue one event; block while the queue is full. Thread-safe.

        ``data`` is a ``str`` (sent as it is), a :class:`~ssegate.ServerSentEvent`, or any other
        object, sent as one line of JSON. Raises :class:`~ssegate.EmitterClosedError` once the
        emitter is complete, timed out or its client has gone — also to a sender blocked here.
        """
        self._queue.put(_encode(data, event, id, retry, comment))

    async def asend(
        self,
        data: object,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        """Queue one event; wait while the queue is full. The async face of :meth:`send`."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        await self._queue.aput(_encode(data, event, id, retry, comment))

    def complete(self) -> None:
        """Finish: queued events still go out, then the stream ends. Later sends raise."""
        self._queue.finish(None)

    def complete_with_error(self, exc: BaseException) -> None:
        """Finish with an error: queued events go out, then an ``error`` event, then the stream
        ends; ``on_error(exc)`` callbacks run."""
        self._queue.finish(exc)

    async def acomplete(self) -> None:
        """The async face of :meth:`complete` (it never waits)."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        self.complete()

    # -- callbacks ------------------------------------------------------------------------

    def on_completion(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the stream has ended, for whatever reason."""
        with self._callbacks_lock:
            if not self._finished:
                self._on_completion.append(callback)
                return
        _call(callback)

    def on_timeout(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the timeout ends the stream (before ``on_completion``)."""
        with self._callbacks_lock:
            if not self._finished:
                self._on_timeout.append(callback)
                return
        if self._queue.reason is CloseReason.TIMEOUT:
            _call(callback)

    def on_error(self, callback: Callable[[BaseException], object]) -> None:
        """Call ``callback(exc)`` once the stream has ended if :meth:`complete_with_error` was
        called (before ``on_completion``)."""
        with self._callbacks_lock:
            if not self._finished:
                self._on_error.append(callback)
                return
        error = self._queue.error
        if error is not None:
            _call(callback, error)

    # -- introspection --------------------------------------------------------------------

    @property
    def state(self) -> EmitterState:
        """Where the emitter is in its lifecycle."""
        return self._queue.state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the stream ended (``None`` while it runs or before it starts)."""
        return self._queue.reason if self._finished else None

    def statistics(self) -> EmitterStatistics:
        """A snapshot of the queue and its counters."""
        return self._queue.statistics()

    # -- the ASGI side --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self._response
        self._queue.claim_loop_thread()
        response.status_code = self.status_code
        response.background = self.background
        deadline = self._queue.deadline
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 1e-3)
            if response.options.max_duration is None or response.options.max_duration > remaining:
                response.options = replace(response.options, max_duration=remaining)
        try:
            await response(scope, receive, send)
        finally:
            self._settle()
            self._run_callbacks()

    def _settle(self) -> None:
        """The stream has ended: close the emitter (waking blocked senders) with the reason."""
        self._queue.settle(self._response.close_reason)

    def _run_callbacks(self) -> None:
        with self._callbacks_lock:
            if self._finished:
                return
            self._finished = True
            completion, timeout, errors = self._on_completion, self._on_timeout, self._on_error
            self._on_completion, self._on_timeout, self._on_error = [], [], []
        reason = self._queue.reason
        error = self._queue.error
        if reason is CloseReason.TIMEOUT:
            for callback in timeout:
                _call(callback)
        if error is not None:  # complete_with_error() was called, whatever ended the stream
            for error_callback in errors:
                _call(error_callback, error)
        for callback in completion:
            _call(callback)

    async def _next_batch(self) -> bytes:
        """Everything queued, as one chunk of whole events; waits while the queue is empty."""
        return await self._queue.next_batch()

    def _detach(self) -> None:
        """The response closes the stream (it ended, or was cut short): settle at once, so a
        blocked sender learns now rather than after the response's final write."""
        self._settle()

    def __repr__(self) -> str:
        return f"<SseEmitter state={self._queue.state.value} queued={self._queue.queued}>"


class _EmitterStream:
    """The emitter's queue as the async iterator an :class:`EventSourceResponse` consumes."""

    __slots__ = ("_emitter",)

    def __init__(self, emitter: SseEmitter) -> None:
        self._emitter = emitter

    def __aiter__(self) -> _EmitterStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._emitter._next_batch()

    async def aclose(self) -> None:
        self._emitter._detach()


def _call(callback: Callable[..., object], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("SseEmitter callback %r failed", callback)
