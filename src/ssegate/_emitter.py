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
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import anyio
import anyio.from_thread
import anyio.lowlevel
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._errors import EmitterClosedError, SsegateError
from ._response import CloseReason, EventSourceResponse, EventStreamOptions
from ._shutdown import ShutdownSignal
from .codec import ServerSentEvent, encode, encode_fields

__all__ = ["EmitterState", "EmitterStatistics", "SseEmitter"]

log = logging.getLogger("ssegate.emitter")


class EmitterState(enum.Enum):
    """The lifecycle of an :class:`SseEmitter`: ``OPEN → COMPLETING → CLOSED`` or
    ``OPEN → CLOSED``.

    ========== ================================== =========================================
    state      input                              next state
    ========== ================================== =========================================
    OPEN       send / asend                       OPEN (queued)
    OPEN       complete / complete_with_error     COMPLETING (queued events still go out)
    OPEN       timeout, disconnect, shutdown      CLOSED
    COMPLETING queue drained, stream ended        CLOSED
    COMPLETING timeout, disconnect, shutdown      CLOSED
    COMPLETING send / asend                       COMPLETING, raises EmitterClosedError
    COMPLETING complete / complete_with_error     COMPLETING (ignored)
    CLOSED     send / asend                       CLOSED, raises EmitterClosedError
    CLOSED     anything else                      CLOSED (ignored)
    ========== ================================== =========================================
    """

    OPEN = "open"
    COMPLETING = "completing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class EmitterStatistics:
    """A snapshot of an emitter: events and bytes queued now, the bounds, events accepted and
    handed to the stream so far, and how many senders wait for room."""

    state: EmitterState
    queued: int
    queued_bytes: int
    max_queued: int
    max_queued_bytes: int
    sent: int
    delivered: int
    waiting_senders: int


class _LoopWaker:
    """Sets an :class:`anyio.Event` of the event loop that made it, from any thread.

    On that loop's thread it sets the event at once; from another thread it asks the loop to
    (``anyio.from_thread.run_sync``, which returns once it has). Never call it while holding
    the emitter's lock: the loop may be waiting for that lock.
    """

    __slots__ = ("event", "thread", "token")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.thread = threading.get_ident()
        self.token = anyio.lowlevel.current_token()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.event.set()
            return
        try:
            anyio.from_thread.run_sync(self.event.set, token=self.token)
        except anyio.RunFinishedError:  # that loop has stopped: nobody is left to wake
            pass


def _on_event_loop() -> bool:
    try:
        anyio.lowlevel.current_token()
    except RuntimeError:
        return False
    return True


def _error_event(exc: BaseException) -> bytes:
    if isinstance(exc, SsegateError):
        payload: dict[str, object] = exc.to_dict()
    else:
        payload = {"code": "internal", "message": "internal error", "retryable": False}
    return encode_fields(orjson.dumps(payload).decode(), event="error")


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
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        # One lock guards everything below. Wake-ups that may cross threads (_LoopWaker) are
        # collected under it and fired after it is released.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # threads waiting for room
        self._waiters: list[_LoopWaker] = []  # coroutines waiting for room
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._sent = 0
        self._delivered = 0
        self._waiting_threads = 0
        self._state = EmitterState.OPEN
        self._reason: CloseReason | None = None  # the reason decided by the emitter itself
        self._error: BaseException | None = None
        self._error_written = False
        self._consumer: _LoopWaker | None = None  # set while the stream waits for events
        self._loop_thread: int | None = None
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
        chunk = _encode(data, event, id, retry, comment)
        error: EmitterClosedError | None = None
        with self._lock:
            while True:
                if self._state is not EmitterState.OPEN:
                    raise self._closed_error()
                if self._has_room(len(chunk)):
                    to_wake = self._enqueue_locked(chunk)
                    break
                if threading.get_ident() == self._loop_thread or _on_event_loop():
                    raise RuntimeError(
                        "SseEmitter.send() would block the event loop; use 'await asend()'"
                    )
                remaining = None
                if self._deadline is not None:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        to_wake = self._close_locked(CloseReason.TIMEOUT)
                        error = self._closed_error()
                        break
                self._waiting_threads += 1
                try:
                    self._room.wait(remaining)
                finally:
                    self._waiting_threads -= 1
        _wake(to_wake)
        if error is not None:
            raise error

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
        chunk = _encode(data, event, id, retry, comment)
        while True:
            with self._lock:
                if self._state is not EmitterState.OPEN:
                    raise self._closed_error()
                if self._has_room(len(chunk)):
                    to_wake = self._enqueue_locked(chunk)
                    break
                waiter = _LoopWaker()
                self._waiters.append(waiter)
                deadline = self._deadline
            try:
                if deadline is None:
                    await waiter.event.wait()
                else:
                    with anyio.move_on_after(deadline - time.monotonic()) as scope:
                        await waiter.event.wait()
                    if scope.cancelled_caught:
                        self._close(CloseReason.TIMEOUT)
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        _wake(to_wake)

    def complete(self) -> None:
        """Finish: queued events still go out, then the stream ends. Later sends raise."""
        self._finish_sending(None)

    def complete_with_error(self, exc: BaseException) -> None:
        """Finish with an error: queued events go out, then an ``error`` event, then the stream
        ends; ``on_error(exc)`` callbacks run."""
        self._finish_sending(exc)

    async def acomplete(self) -> None:
        """The async face of :meth:`complete` (it never waits)."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        self.complete()

    # -- callbacks ------------------------------------------------------------------------

    def on_completion(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the stream has ended, for whatever reason."""
        with self._lock:
            if not self._finished:
                self._on_completion.append(callback)
                return
        _call(callback)

    def on_timeout(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the timeout ends the stream (before ``on_completion``)."""
        with self._lock:
            if not self._finished:
                self._on_timeout.append(callback)
                return
            fire = self._reason is CloseReason.TIMEOUT
        if fire:
            _call(callback)

    def on_error(self, callback: Callable[[BaseException], object]) -> None:
        """Call ``callback(exc)`` once the stream has ended if :meth:`complete_with_error` was
        called (before ``on_completion``)."""
        with self._lock:
            if not self._finished:
                self._on_error.append(callback)
                return
            error = self._error
        if error is not None:
            _call(callback, error)

    # -- introspection --------------------------------------------------------------------

    @property
    def state(self) -> EmitterState:
        """Where the emitter is in its lifecycle."""
        return self._state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the stream ended (``None`` while it runs or before it starts)."""
        return self._reason if self._finished else None

    def statistics(self) -> EmitterStatistics:
        """A snapshot of the queue and its counters."""
        with self._lock:
            return EmitterStatistics(
                state=self._state,
                queued=len(self._queue),
                queued_bytes=self._queued_bytes,
                max_queued=self._max_queued,
                max_queued_bytes=self._max_queued_bytes,
                sent=self._sent,
                delivered=self._delivered,
                waiting_senders=self._waiting_threads + len(self._waiters),
            )

    # -- the ASGI side --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self._response
        with self._lock:
            if self._loop_thread is not None:
                raise RuntimeError("an SseEmitter can be returned only once")
            self._loop_thread = threading.get_ident()
        response.status_code = self.status_code
        response.background = self.background
        if self._deadline is not None:
            remaining = max(self._deadline - time.monotonic(), 1e-3)
            if response.options.max_duration is None or response.options.max_duration > remaining:
                response.options = replace(response.options, max_duration=remaining)
        try:
            await response(scope, receive, send)
        finally:
            self._settle()
            self._run_callbacks()

    def _settle(self) -> None:
        """The stream has ended: close the emitter (waking blocked senders) with the reason.

        The emitter's own reason (complete, error, timeout) stands when the stream ran to its
        end; when the stream was cut short (client gone, shutdown, the timeout) that wins.
        """
        stream_reason = self._response.close_reason
        with self._lock:
            if stream_reason is None or stream_reason is CloseReason.ERROR:
                reason = CloseReason.DISCONNECTED
            elif stream_reason is CloseReason.COMPLETED:
                # Only a HEAD request completes a stream while the emitter is still open.
                reason = self._reason or CloseReason.DISCONNECTED
            else:
                reason = stream_reason
            self._reason = reason
            to_wake = self._close_locked(reason)
        _wake(to_wake)

    def _run_callbacks(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            reason = self._reason
            error = self._error
            completion, timeout, errors = self._on_completion, self._on_timeout, self._on_error
            self._on_completion, self._on_timeout, self._on_error = [], [], []
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
        while True:
            with self._lock:
                state = self._state
                if state is EmitterState.CLOSED:
                    self._drop_queue_locked()
                    raise StopAsyncIteration
                queue = self._queue
                if queue:
                    batch = queue.popleft() if len(queue) == 1 else b"".join(queue)
                    self._delivered += len(queue) or 1
                    queue.clear()
                    self._queued_bytes = 0
                    to_wake = self._wake_senders_locked()
                    break
                if state is EmitterState.COMPLETING:
                    if self._error is not None and not self._error_written:
                        self._error_written = True
                        return _error_event(self._error)
                    raise StopAsyncIteration
                consumer = self._consumer = _LoopWaker()
            await consumer.event.wait()
        _wake(to_wake)
        return batch

    def _detach(self) -> None:
        """The response closes the stream (it ended, or was cut short): settle at once, so a
        blocked sender learns now rather than after the response's final write."""
        self._settle()

    # -- internals ------------------------------------------------------------------------

    def _has_room(self, size: int) -> bool:
        queue = self._queue
        if not queue:
            return True
        return len(queue) < self._max_queued and self._queued_bytes + size <= self._max_queued_bytes

    def _enqueue_locked(self, chunk: bytes) -> list[_LoopWaker]:
        self._queue.append(chunk)
        self._queued_bytes += len(chunk)
        self._sent += 1
        return self._take_consumer_locked()

    def _take_consumer_locked(self) -> list[_LoopWaker]:
        consumer, self._consumer = self._consumer, None
        return [] if consumer is None else [consumer]

    def _finish_sending(self, error: BaseException | None) -> None:
        with self._lock:
            if self._state is not EmitterState.OPEN:
                return
            self._state = EmitterState.COMPLETING
            if error is not None:
                self._error = error
                self._reason = CloseReason.ERROR
            else:
                self._reason = CloseReason.COMPLETED
            to_wake = self._wake_senders_locked() + self._take_consumer_locked()
        _wake(to_wake)

    def _close(self, reason: CloseReason) -> None:
        with self._lock:
            to_wake = self._close_locked(reason)
        _wake(to_wake)

    def _close_locked(self, reason: CloseReason) -> list[_LoopWaker]:
        """Move to CLOSED; return whom to wake. The first reason stands (see :meth:`_settle`
        for the stream's say)."""
        if self._state is EmitterState.CLOSED:
            return []
        if self._reason is None:
            self._reason = reason
        self._state = EmitterState.CLOSED
        return self._wake_senders_locked() + self._take_consumer_locked()

    def _wake_senders_locked(self) -> list[_LoopWaker]:
        """Wake the blocked threads now; return the coroutines to wake."""
        self._room.notify_all()
        waiters, self._waiters = self._waiters, []
        return waiters

    def _drop_queue_locked(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0

    def _closed_error(self) -> EmitterClosedError:
        reason = self._reason.value if self._reason is not None else "closed"
        return EmitterClosedError(f"the emitter is closed ({reason})")

    def __repr__(self) -> str:
        return f"<SseEmitter state={self._state.value} queued={len(self._queue)}>"


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


def _wake(wakers: list[_LoopWaker]) -> None:
    for waker in wakers:
        waker.wake()
