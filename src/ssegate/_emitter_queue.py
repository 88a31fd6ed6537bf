"""The machinery under :class:`~ssegate.SseEmitter`: a bounded, thread-safe event queue.

:class:`EmitterQueue` holds the encoded events waiting for the client, the emitter's lifecycle
(:class:`EmitterState`) and why it ended, and wakes whoever waits — a blocked thread through a
``threading.Condition``, a coroutine of any event loop through a loop waker — so it
needs no event loop until the stream consumes it. One lock guards it all; wake-ups that may
cross threads are collected under the lock and fired after it is released.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import dataclass

import anyio
import anyio.from_thread
import anyio.lowlevel
import orjson

from ._errors import EmitterClosedError, SsegateError
from ._response import CloseReason
from .codec import encode_fields

__all__ = ["EmitterQueue", "EmitterState", "EmitterStatistics"]


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


class EmitterQueue:
    """The bounded queue of encoded events and the lifecycle of one emitter. Thread-safe.

    ``max_queued`` and ``max_queued_bytes`` bound the events waiting (one event larger than
    the byte bound is still accepted into an empty queue); ``deadline`` is the
    ``time.monotonic()`` at which a waiting sender closes it for the timeout (``None``: never).
    """

    def __init__(self, max_queued: int, max_queued_bytes: int, deadline: float | None) -> None:
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.deadline = deadline
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

    # -- what the emitter reads -----------------------------------------------------------

    @property
    def state(self) -> EmitterState:
        return self._state

    @property
    def reason(self) -> CloseReason | None:
        """The reason decided so far (final once :meth:`settle` has run)."""
        return self._reason

    @property
    def error(self) -> BaseException | None:
        """The exception given to :meth:`finish`, if any."""
        return self._error

    @property
    def queued(self) -> int:
        return len(self._queue)

    def statistics(self) -> EmitterStatistics:
        with self._lock:
            return EmitterStatistics(
                state=self._state,
                queued=len(self._queue),
                queued_bytes=self._queued_bytes,
                max_queued=self.max_queued,
                max_queued_bytes=self.max_queued_bytes,
                sent=self._sent,
                delivered=self._delivered,
                waiting_senders=self._waiting_threads + len(self._waiters),
            )

    # -- the senders' side ----------------------------------------------------------------

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk``; block the calling thread while the queue is full."""
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
                if self.deadline is not None:
                    remaining = self.deadline - time.monotonic()
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

    async def aput(self, chunk: bytes) -> None:
        """Queue ``chunk``; wait while the queue is full."""
        while True:
            with self._lock:
                if self._state is not EmitterState.OPEN:
                    raise self._closed_error()
                if self._has_room(len(chunk)):
                    to_wake = self._enqueue_locked(chunk)
                    break
                waiter = _LoopWaker()
                self._waiters.append(waiter)
                deadline = self.deadline
            try:
                if deadline is None:
                    await waiter.event.wait()
                else:
                    with anyio.move_on_after(deadline - time.monotonic()) as scope:
                        await waiter.event.wait()
                    if scope.cancelled_caught:
                        self.close(CloseReason.TIMEOUT)
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        _wake(to_wake)

    def finish(self, error: BaseException | None) -> None:
        """OPEN → COMPLETING: queued events (then the error, if any) still go out."""
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

    def close(self, reason: CloseReason) -> None:
        with self._lock:
            to_wake = self._close_locked(reason)
        _wake(to_wake)

    # -- the stream's side ----------------------------------------------------------------

    def claim_loop_thread(self) -> None:
        """The stream starts on this thread; it may start only once."""
        with self._lock:
            if self._loop_thread is not None:
                raise RuntimeError("an SseEmitter can be returned only once")
            self._loop_thread = threading.get_ident()

    async def next_batch(self) -> bytes:
        """Everything queued, as one chunk of whole events; waits while the queue is empty.
        Raises ``StopAsyncIteration`` once there is nothing more to send."""
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

    def settle(self, stream_reason: CloseReason | None) -> None:
        """The stream has ended: close (waking blocked senders) with the final reason.

        The emitter's own reason (complete, error, timeout) stands when the stream ran to its
        end; when the stream was cut short (client gone, shutdown, the timeout) that wins.
        """
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

    # -- internals (call with the lock held) ----------------------------------------------

    def _has_room(self, size: int) -> bool:
        queue = self._queue
        if not queue:
            return True
        return len(queue) < self.max_queued and self._queued_bytes + size <= self.max_queued_bytes

    def _enqueue_locked(self, chunk: bytes) -> list[_LoopWaker]:
        self._queue.append(chunk)
        self._queued_bytes += len(chunk)
        self._sent += 1
        return self._take_consumer_locked()

    def _take_consumer_locked(self) -> list[_LoopWaker]:
        consumer, self._consumer = self._consumer, None
        return [] if consumer is None else [consumer]

    def _close_locked(self, reason: CloseReason) -> list[_LoopWaker]:
        """Move to CLOSED; return whom to wake. The first reason stands (see :meth:`settle`
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


def _wake(wakers: list[_LoopWaker]) -> None:
    for waker in wakers:
        waker.wake()
