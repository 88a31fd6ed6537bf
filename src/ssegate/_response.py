"""``EventSourceResponse``: an ASGI response that writes an async iterable of events.

A response runs in one task group — its own task, and a second one only while a burst is
being written — and whichever ends the stream cancels the rest:

* the **producer** (the response's own task) pulls events from the content. An event that took
  a wait (a token, after the model thought) is written by the producer itself when nothing
  else is being written: no hand-over, no event-loop turn of latency. Events that come back to
  back (a burst, a replay) go into a bounded buffer instead. When the content is done the
  producer ends the body and the task group;
* the **writer** (a child, started when something is buffered and ending when the buffer is
  empty) sends whatever is buffered in one ``send()``, so events that arrive while ``send()``
  is slow leave in one coalesced write, not one each;
* the **listener** notices the client leaving at once, even while the content is idle: it
  awaits ``receive()`` from the request body on, for as long as the stream lasts (a
  ``receive()`` that would return the request body is never cancelled, which granian would
  take for a disconnect). On uvicorn it is no task but a :class:`_ReceiveWatcher`, which
  drives uvicorn's ``receive()`` from event-loop callbacks. Elsewhere (another server, a
  middleware's ``receive()``, trio) the response's own task listens and the producer is a
  child task;
* the **watchdog** (only when a heartbeat, ``send_timeout`` or ``max_duration`` is set) queues
  a ``: ping`` comment after ``ping_interval`` seconds without a write, ends the stream when
  one write blocks longer than ``send_timeout``, and ends it after ``max_duration``. On asyncio
  it is an entry in one heap per event loop behind one loop timer (:class:`_Timers`), elsewhere
  a third task. Writes only move a timestamp; no event starts a timer.

An idle stream on uvicorn therefore costs its task group, a pending ``receive()`` and a heap
entry: about 5 KB beyond what uvicorn and Starlette keep per connection, most of it the task
group and the content itself (docs/performance.md). Nothing is parked in a cancel scope of its
own while idle.

When the stream ends early the producer is cancelled and the content iterator is closed
(``aclose()``, shielded, bounded by ``close_timeout``), so its ``finally`` blocks run. On
shutdown or ``max_duration``, events already buffered are written before the body ends.

Server shutdown: uvicorn, on SIGTERM, stops accepting and then waits — without a bound unless
``timeout_graceful_shutdown`` is set — for open responses to end; it does not tell them (it sends
no ``http.disconnect`` to a running response). A response therefore watches a
:class:`ShutdownSignal`: the one passed in, or else the one found in the ASGI lifespan state
under :data:`SHUTDOWN_STATE_KEY` (``ssegate._serve.ShutdownAwareServer`` puts it there and trips
it when the server begins shutting down). On shutdown the stream ends cleanly (a complete chunked
body), so an ``EventSource`` reconnects — to another instance — with its ``Last-Event-ID``.

Where this departs from the letter of the specs: none on the wire — every write holds whole
events (WHATWG HTML §9.2.6 allows any split, but proxies and naive clients like whole ones).
A ``HEAD`` request gets the headers and an empty body: streaming on ``HEAD`` would never end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import heapq
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import orjson
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .codec import ServerSentEvent, encode, encode_comment

_sniffio_local: Any  # where a loop callback tells sniffio (and so anyio) it runs on asyncio
try:
    import sniffio
except ImportError:  # pragma: no cover - anyio then recognises asyncio by its running loop
    _sniffio_local = None
else:
    _sniffio_local = sniffio.thread_local

__all__ = [
    "SHUTDOWN_STATE_KEY",
    "CloseReason",
    "EventSourceResponse",
    "EventStreamOptions",
    "EventStreamStatistics",
    "ShutdownSignal",
    "StreamItem",
]

log = logging.getLogger("ssegate.response")

#: The ASGI lifespan-state key under which a server publishes its :class:`ShutdownSignal`.
SHUTDOWN_STATE_KEY = "ssegate.shutdown"

#: What the content of an :class:`EventSourceResponse` may yield: an event, already-encoded
#: ``text/event-stream`` bytes (written as they are), a ``str`` (sent as ``data``) or a
#: ``dict``/``list`` (sent as one line of JSON ``data``).
StreamItem: TypeAlias = ServerSentEvent | bytes | str | dict[str, Any] | list[Any]


class CloseReason(enum.Enum):
    """Why an event stream (or an :class:`~ssegate.SseEmitter`) ended."""

    COMPLETED = "completed"
    """The content ran out (or the emitter was completed) and the stream ended cleanly."""
    ERROR = "error"
    """The content raised (or the emitter was completed with an error)."""
    TIMEOUT = "timeout"
    """``max_duration`` (the emitter's ``timeout``) passed; the stream ended cleanly."""
    DISCONNECTED = "disconnected"
    """The client went away."""
    SEND_TIMEOUT = "send_timeout"
    """One write blocked longer than ``send_timeout``: the client is treated as gone."""
    SHUTDOWN = "shutdown"
    """The server began shutting down; the stream ended cleanly."""


@dataclass(frozen=True, slots=True)
class EventStreamOptions:
    """How an event stream is written.

    ``ping_interval``: seconds without a write after which a ``: ping`` comment is sent (from the
    first byte on); ``None`` disables it. ``retry``: milliseconds written as a ``retry:`` field
    before the first event (the client's reconnection delay); ``None`` writes none.
    ``send_timeout``: seconds one write may block before the client is treated as gone (the
    response returns unfinished, so the server drops the connection; uvicorn logs that); ``None``
    waits as long as the server does. ``max_duration``: seconds after which the stream ends
    cleanly; ``None`` is no limit. ``max_write_bytes``: how many buffered bytes one write
    carries at most. ``max_buffer_bytes``: how far the producer may read ahead of a slow client.
    ``close_timeout``: seconds allowed for closing the content iterator and for the final write
    after an early end.
    """

    ping_interval: float | None = 15.0
    ping_comment: str = "ping"
    retry: int | None = None
    send_timeout: float | None = None
    max_duration: float | None = None
    max_write_bytes: int = 64 * 1024
    max_buffer_bytes: int = 64 * 1024
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("ping_interval", "send_timeout", "max_duration"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds or None")
        if self.retry is not None and (type(self.retry) is not int or self.retry < 0):
            raise ValueError("retry must be a non-negative integer of milliseconds or None")
        if self.max_write_bytes < 1 or self.max_buffer_bytes < 1:
            raise ValueError("max_write_bytes and max_buffer_bytes must be positive")
        if not self.close_timeout >= 0:
            raise ValueError("close_timeout must be >= 0")
        encode_comment(self.ping_comment)  # refuse a comment that cannot be encoded


@dataclass(frozen=True, slots=True)
class EventStreamStatistics:
    """Counters of one response: items taken from the content, ``send()`` calls that carried
    body bytes, body bytes sent, heartbeats, and bytes read ahead but not yet written."""

    events: int
    writes: int
    bytes_sent: int
    pings: int
    buffered_bytes: int


class ShutdownSignal:
    """A one-shot signal that the server is shutting down; open streams end when it is set.

    :meth:`set` may be called from any thread. Pass one to :class:`EventSourceResponse` (or
    :class:`~ssegate.SseEmitter`) as ``shutdown=``, or let a server publish one in the lifespan
    state under :data:`SHUTDOWN_STATE_KEY` (see ``ssegate._serve.ShutdownAwareServer``).
    """

    __slots__ = ("__weakref__", "_is_set", "_lock", "_subscribers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._is_set = False
        self._subscribers: dict[_LoopCallback, None] = {}  # an ordered set

    def is_set(self) -> bool:
        """Whether shutdown has begun."""
        return self._is_set

    def set(self) -> None:
        """Begin shutdown: every stream watching this signal ends. Idempotent."""
        with self._lock:
            if self._is_set:
                return
            self._is_set = True
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for subscriber in subscribers:
            subscriber()

    async def wait(self) -> None:
        """Wait until the signal is set."""
        event = anyio.Event()
        subscription = self._subscribe(event.set)
        try:
            await event.wait()
        finally:
            if subscription is not None:
                subscription.unsubscribe()

    def _subscribe(self, callback: Callable[[], object]) -> _LoopCallback | None:
        """Call ``callback`` on the calling event loop when the signal is set; return the
        subscription (its ``unsubscribe()`` cancels it), or ``None`` if the signal was set
        already (``callback`` has then been called)."""
        with self._lock:
            if not self._is_set:
                # The handle is its own key: one small object per open stream.
                handle = _LoopCallback(callback, self)
                self._subscribers[handle] = None
                return handle
        callback()
        return None

    def _unsubscribe(self, handle: _LoopCallback) -> None:
        with self._lock:
            self._subscribers.pop(handle, None)

    def __repr__(self) -> str:
        return f"<ShutdownSignal is_set={self._is_set}>"


def _loop_caller() -> Callable[[Callable[[], object]], object]:
    """The running event loop's thread-safe "call soon" (asyncio or trio); must be called on
    that loop. anyio has no public non-blocking equivalent."""
    return _call_soon_of(anyio.lowlevel.current_token().native_token)


def _call_soon_of(native: object) -> Callable[[Callable[[], object]], object]:
    """The thread-safe "call soon" of ``native``, an asyncio loop or a trio token."""
    call_soon: Callable[[Callable[[], object]], object] | None = getattr(
        native, "call_soon_threadsafe", None
    ) or getattr(native, "run_sync_soon", None)
    if call_soon is None:  # pragma: no cover - every anyio backend has one of the two
        raise RuntimeError(f"cannot call into event loop {native!r} from another thread")
    return call_soon


class _LoopCallback:
    """A callback bound to the event loop it was made on: called directly on that loop's
    thread, handed to the loop from any other thread."""

    __slots__ = ("_callback", "_native", "_signal", "_thread")

    def __init__(self, callback: Callable[[], object], signal: ShutdownSignal) -> None:
        self._callback = callback
        self._signal = signal
        self._thread = threading.get_ident()
        # The loop itself, not its bound "call soon": no object of its own per stream.
        self._native = anyio.lowlevel.current_token().native_token

    def unsubscribe(self) -> None:
        """Stop watching the signal."""
        self._signal._unsubscribe(self)

    def __call__(self) -> None:
        if threading.get_ident() == self._thread:
            self._callback()
            return
        try:
            _call_soon_of(self._native)(self._callback)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            pass


class _Default(enum.Enum):
    TOKEN = 0


_DEFAULT = _Default.TOKEN
_DEFAULT_OPTIONS = EventStreamOptions()  # frozen: one shared by every response that takes it

_DATA = b"data: "
_END = b"\n\n"
# Task names, given so that anyio does not build one string per task ("module.qualname").
_PRODUCER = "ssegate event stream producer"
_WRITER = "ssegate event stream writer"
_WATCHDOG = "ssegate event stream watchdog"
_FINAL: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


_DEFAULT_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@functools.lru_cache(maxsize=16)
def _default_raw_headers(media_type: str, charset: str) -> tuple[tuple[bytes, bytes], ...]:
    """What ``Response.init_headers(_DEFAULT_HEADERS)`` makes for a body-less response,
    made once (the content type as Starlette writes it, with its charset)."""
    if media_type.startswith("text/") and "charset=" not in media_type.lower():
        media_type += "; charset=" + charset
    return (
        *(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _DEFAULT_HEADERS.items()
        ),
        (b"content-type", media_type.encode("latin-1")),
    )


@functools.lru_cache(maxsize=16)
def _ping_bytes(comment: str) -> bytes:
    """The heartbeat's bytes, encoded once and shared by every stream (one fewer object per
    open connection)."""
    return encode_comment(comment)


def _item_bytes(item: object) -> bytes:
    """Encode one content item (most common types first)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, ServerSentEvent):
        return encode(item)
    if isinstance(item, str):
        if "\n" in item or "\r" in item:
            return encode(ServerSentEvent(data=str(item)))
        return _DATA + item.encode() + _END
    if isinstance(item, dict | list):
        # orjson escapes every control character, so the JSON is one line.
        return _DATA + orjson.dumps(item) + _END
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise TypeError(
        "an event stream yields ServerSentEvent, bytes, str, dict or list, "
        f"not {type(item).__name__}"
    )


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in ``group``, or the group itself."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


class EventSourceResponse(Response):
    """Stream ``content`` to the client as ``text/event-stream``.

    ``content`` is an async iterable (or, run in a thread pool, a sync iterable) of
    :data:`StreamItem`. The response sends its headers at once, then coalesces whatever the
    content yields into as few writes as the client's pace allows, sends heartbeats while it is
    idle, notices a disconnect at once, and ends cleanly on server shutdown. ``options`` groups
    the settings; ``ping_interval``, ``retry``, ``send_timeout`` and ``max_duration`` override
    single fields of it. ``headers`` add to or replace the defaults (``Cache-Control: no-cache``,
    ``X-Accel-Buffering: no``). A response can be sent once.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterable[StreamItem] | Iterable[StreamItem],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        options: EventStreamOptions | None = None,
        ping_interval: float | _Default | None = _DEFAULT,
        retry: int | _Default | None = _DEFAULT,
        send_timeout: float | _Default | None = _DEFAULT,
        max_duration: float | _Default | None = _DEFAULT,
        shutdown: ShutdownSignal | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("ping_interval", ping_interval),
                ("retry", retry),
                ("send_timeout", send_timeout),
                ("max_duration", max_duration),
            )
            if value is not _DEFAULT
        }
        base = options if options is not None else _DEFAULT_OPTIONS
        self.options = replace(base, **overrides) if overrides else base
        self.status_code = status_code
        self.background = background
        if headers:
            merged = dict(_DEFAULT_HEADERS)
            for name, value in headers.items():
                merged[name.lower()] = value
            self.init_headers(merged)
        else:
            # The usual case: a fresh list of shared (immutable) tuples, not new bytes per
            # response — a few hundred bytes less per open stream.
            self.raw_headers = list(_default_raw_headers(self.media_type, self.charset))
        self._content = content
        self._shutdown = shutdown
        self._used = False
        self._ping = _ping_bytes(self.options.ping_comment)
        #: Why the stream ended; ``None`` until it has.
        self.close_reason: CloseReason | None = None
        self._run: _Stream | None = None

    def statistics(self) -> EventStreamStatistics:
        """Counters of this response's stream so far (all zero before it starts)."""
        run = self._run
        if run is None:
            return EventStreamStatistics(0, 0, 0, 0, 0)
        return EventStreamStatistics(
            run.events, run.writes, run.bytes_sent, run.pings, run.buffered
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._used:
            raise RuntimeError("an EventSourceResponse can be sent only once")
        self._used = True
        content = self._content
        iterator: AsyncIterator[StreamItem] = (
            aiter(content)
            if isinstance(content, AsyncIterable)
            else iterate_in_threadpool(iter(content))
        )
        try:
            if scope.get("method") == "HEAD":
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                await send(_FINAL)
                self.close_reason = CloseReason.COMPLETED
            elif (run := await self._start(scope, send, iterator)) is not None:
                # The client is listened for from loop callbacks where the server's
                # receive() allows it (uvicorn's), else by this task, the producer then
                # being a child. Either way only the stream's end stops that receive(): one
                # that would have returned the request body is never cancelled, which
                # granian would take for a disconnect.
                watcher = _ReceiveWatcher.start(receive, run)
                # The stream's task group is run from this frame, not a helper's: one
                # coroutine fewer kept per open stream.
                try:
                    async with anyio.create_task_group() as tg:
                        run.tg = tg
                        if run.reason is None:
                            run.run(tg, produce=watcher is None)
                            if watcher is not None:
                                # This task is the producer; it ends the task group when
                                # the content is done, the watcher when the client leaves.
                                await run.produce()
                            else:
                                # This task listens for the client leaving, for as long as
                                # the stream lasts: the producer (a child) ends the task
                                # group when the content is done.
                                try:
                                    while (await receive())["type"] != "http.disconnect":
                                        pass
                                # A server that fails receive() once the client is gone:
                                except Exception:
                                    log.debug("receive() failed; the client is gone", exc_info=True)
                                run.end(CloseReason.DISCONNECTED)
                        else:  # shutting down already, or the client left: end at once
                            run.chunks.clear()
                        tg.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    raise _collapse(group) from None
                finally:
                    if watcher is not None:
                        watcher.close()
                    run.stop()
                    self.close_reason = run.reason
                await self._finish(run, send)
        finally:
            await _aclose(iterator, self.options.close_timeout)
        if self.background is not None:
            await self.background()

    async def _start(
        self, scope: Scope, send: Send, iterator: AsyncIterator[StreamItem]
    ) -> _Stream | None:
        """Send the headers and make the stream's state, watching the server's shutdown
        signal; ``None`` if the client has already left."""
        options = self.options
        run = self._run = _Stream(options, iterator, self._ping, send)
        if options.retry is not None:
            run.push(encode(ServerSentEvent(retry=options.retry)))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
        except OSError:  # ASGI 2.4: the client left before the headers went out
            self.close_reason = CloseReason.DISCONNECTED
            return None
        run.last_write = time.monotonic()
        shutdown = self._shutdown
        if shutdown is None:
            state = scope.get("state")
            candidate = state.get(SHUTDOWN_STATE_KEY) if isinstance(state, dict) else None
            if isinstance(candidate, ShutdownSignal):
                shutdown = candidate
        if shutdown is not None:
            run.subscription = shutdown._subscribe(run.on_shutdown)
        return run

    async def _finish(self, run: _Stream, send: Send) -> None:
        """After the task group: end the body cleanly if the stream was cut short while the
        client is still there; raise the content's error."""
        if run.reason in (CloseReason.SHUTDOWN, CloseReason.TIMEOUT):
            # The stream ended early but the client is still there: write the events already
            # made (a client resuming elsewhere then starts after them), end the body cleanly.
            with anyio.move_on_after(self.options.close_timeout), contextlib.suppress(OSError):
                if run.chunks:
                    body = b"".join(run.chunks)
                    run.chunks.clear()
                    run.buffered = 0
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                await send(_FINAL)
        elif run.error is not None:
            if run.reason is CloseReason.ERROR:
                raise run.error
            # Nobody is left to tell; don't let the error vanish.
            log.error("event stream content failed after the stream ended", exc_info=run.error)


async def _aclose(iterator: object, limit: float) -> None:
    """Close the content iterator so its ``finally`` blocks run, even while being cancelled;
    a close that takes longer than ``limit`` seconds is abandoned with a warning."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(limit, shield=True) as scope:
        try:
            await aclose()
        except Exception:
            log.exception("closing the event stream's content iterator failed")
    if scope.cancelled_caught:
        log.warning("closing the event stream's content iterator took over %s s", limit)


#: Servers whose ``receive()`` may be driven from loop callbacks (:class:`_ReceiveWatcher`): a
#: bound method of one of these modules' classes that waits on plain asyncio futures only.
_DRIVABLE_RECEIVE_MODULES = frozenset(
    {"uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl"}
)


#: The attribute by which a middleware's ``receive()`` names the one it wraps (see
#: :func:`_mark_receive_wrapper`).
_WRAPS_RECEIVE = "_ssegate_wraps_receive"


def _mark_receive_wrapper(wrapper: Receive, inner: Receive) -> None:
    """Declare that ``wrapper`` only awaits ``inner`` (no anyio, no task of its own), so an
    event stream may drive it as it may drive ``inner`` (a body-size limit's counting
    ``receive()``, say)."""
    setattr(wrapper, _WRAPS_RECEIVE, inner)


def _drivable(receive: Receive) -> bool:
    """Whether ``receive`` is known to need no task of its own: uvicorn's, bare or behind
    middleware marked with :func:`_mark_receive_wrapper` (an unmarked wrapper may use anyio,
    which needs a task)."""
    for _ in range(16):  # a chain of marked wrappers, bounded
        inner = getattr(receive, _WRAPS_RECEIVE, None)
        if inner is None:
            break
        receive = inner
    owner = getattr(receive, "__self__", None)
    return (
        owner is not None
        and getattr(receive, "__name__", None) == "receive"
        and type(owner).__module__ in _DRIVABLE_RECEIVE_MODULES
    )


class _ReceiveWatcher:
    """Listens for the client leaving without a task: drives the server's ``receive()``
    coroutines from event-loop callbacks, as an asyncio task would, and ends the stream when
    one returns ``http.disconnect`` (or fails).

    An idle stream then keeps its own task (the producer, awaiting the content) and this
    object with one pending ``receive()`` — not an anyio child task, whose handle, cancel
    scope and event cost about 3 KB per open stream. Used only on asyncio and only for
    ``receive()`` callables known to wait on plain asyncio futures (:func:`_drivable`: uvicorn's);
    anything else is listened for by the response's own task, the producer being a child.
    The watcher's life is the stream's: :meth:`close` (in the response's ``finally``) closes
    the pending ``receive()``, as cancelling the listening task would.
    """

    __slots__ = ("_coro", "_future", "_receive", "_stream")

    def __init__(self, receive: Receive, stream: _Stream) -> None:
        self._receive: Receive | None = receive  # None once closed
        self._stream = stream
        self._coro: Any = None  # the pending receive()'s iterator
        self._future: asyncio.Future[Any] | None = None  # what it waits on

    @classmethod
    def start(cls, receive: Receive, stream: _Stream) -> _ReceiveWatcher | None:
        """Start watching, or ``None`` if ``receive`` needs a task (the caller listens)."""
        if stream.loop is None or stream.reason is not None or not _drivable(receive):
            return None
        watcher = cls(receive, stream)
        watcher._step()
        return watcher

    def _step(self, future: object = None) -> None:
        """Run ``receive()`` calls until one waits or the client is gone."""
        self._future = None
        receive = self._receive
        if receive is None or self._stream.reason is not None:
            return  # closed, or the stream is ending: close() ends the pending receive()
        while True:
            coro = self._coro
            if coro is None:
                coro = self._coro = receive().__await__()
            try:
                waiting = coro.send(None)
            except StopIteration as done:
                self._coro = None
                if done.value["type"] == "http.disconnect":
                    break
                continue  # the request body (or a part of it): read on
            except (Exception, asyncio.CancelledError):
                self._coro = None
                log.debug("receive() failed; the client is gone", exc_info=True)
                break
            if getattr(waiting, "_asyncio_future_blocking", None):
                # What a task does with an awaited future: wake when it is done.
                waiting._asyncio_future_blocking = False
                self._future = waiting
                waiting.add_done_callback(self._step)
                return
            if waiting is None:  # a bare yield: another turn of the loop
                assert self._stream.loop is not None
                self._stream.loop.call_soon(self._step)
                return
            # Not an asyncio awaitable after all (a task would fail it too): cannot watch.
            log.error("receive() awaited %r; treating the client as gone", waiting)
            break
        self.close()
        self._stream.end(CloseReason.DISCONNECTED)

    def close(self) -> None:
        """Stop watching: close the pending ``receive()``; call no more."""
        self._receive = None
        future = self._future
        if future is not None:
            self._future = None
            future.remove_done_callback(self._step)
        coro = self._coro
        if coro is not None:
            self._coro = None
            coro.close()


# The writer's (rare) wait for the producer's own write to finish: on asyncio a bare future
# costs a third of an anyio.Event (measured), so it is used there.
_Waiter: TypeAlias = "asyncio.Future[None] | anyio.Event"


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    native = anyio.lowlevel.current_token().native_token
    return native if isinstance(native, asyncio.AbstractEventLoop) else None


def _waiter(loop: asyncio.AbstractEventLoop | None) -> _Waiter:
    return loop.create_future() if loop is not None else anyio.Event()


def _fire(waiter: _Waiter) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():  # done only when its waiting task was cancelled
            waiter.set_result(None)
    else:
        waiter.set()


async def _wait(waiter: _Waiter) -> None:
    if isinstance(waiter, asyncio.Future):
        await waiter
    else:
        await waiter.wait()


class _Ticket:
    """One stream's place in :class:`_Timers`, ordered by its deadline; cleared when the
    stream ends, so a stale heap entry keeps nothing alive."""

    __slots__ = ("deadline", "stream")

    def __init__(self, stream: _Stream, deadline: float) -> None:
        self.stream: _Stream | None = stream
        self.deadline = deadline

    def __lt__(self, other: _Ticket) -> bool:
        return self.deadline < other.deadline


class _Timers:
    """Every open stream's watchdog on one asyncio event loop, behind one loop timer.

    A heap of tickets: a stream schedules its next check (ping due, send timeout, end of
    ``max_duration``), and the loop timer is armed for the earliest. An idle stream costs a
    ticket in the heap (~80 bytes) instead of a task or a timer handle of its own. Entries are
    never removed early: a stream that ends clears its ticket, and a stream that wants an
    earlier check pushes another (the later one then finds nothing to do).
    """

    __slots__ = ("__weakref__", "_armed", "_at", "_heap", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Nothing here may refer to the loop (a timer handle does): the registry holds this
        # object by its loop, weakly, and must not keep the loop alive.
        self._loop = weakref.ref(loop)
        self._heap: list[_Ticket] = []
        self._at = math.inf  # when the live loop timer fires; -inf while firing
        self._armed = 0  # which loop timer is the live one; earlier ones do nothing

    def schedule(self, ticket: _Ticket) -> None:
        heapq.heappush(self._heap, ticket)
        if ticket.deadline < self._at:
            self._arm(ticket.deadline)

    def _arm(self, deadline: float) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        self._at = deadline
        self._armed += 1
        loop.call_later(max(0.0, deadline - time.monotonic()), self._fire, self._armed)

    def _fire(self, armed: int) -> None:
        if armed != self._armed:
            return  # superseded by an earlier deadline
        # Streams reschedule from here: arm once, after the loop, not once per stream (a
        # superseded loop timer lingers until it fires).
        self._at = -math.inf
        heap = self._heap
        now = time.monotonic()
        # A loop callback is no task, so sniffio (which anyio asks) cannot tell that asyncio
        # runs it; a stream may start a task (its writer) from here, so say so.
        local = _sniffio_local
        previous = None
        if local is not None:
            previous = local.name
            local.name = "asyncio"
        try:
            while heap and heap[0].deadline <= now:
                ticket = heapq.heappop(heap)
                stream = ticket.stream
                if stream is not None and stream.ticket is ticket:
                    stream.on_timer(now)
        finally:
            if local is not None:
                local.name = previous
            self._at = math.inf
            if heap:
                self._arm(heap[0].deadline)


# Per event loop; weak, so a closed loop takes its timers with it.
_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def _timers_of(loop: asyncio.AbstractEventLoop) -> _Timers:
    timers = _timers.get(loop)
    if timers is None:
        timers = _timers[loop] = _Timers(loop)
    return timers


class _Stream:
    """The state of one response while it streams; its methods are the child tasks."""

    __slots__ = (
        "armed",
        "buffered",
        "bytes_sent",
        "chunks",
        "context",
        "drained",
        "error",
        "events",
        "iterator",
        "last_write",
        "loop",
        "options",
        "ping",
        "pings",
        "reason",
        "room",
        "send",
        "sending_since",
        "started",
        "subscription",
        "tg",
        "ticked",
        "ticket",
        "writer",
        "writes",
    )

    def __init__(
        self,
        options: EventStreamOptions,
        iterator: AsyncIterator[StreamItem],
        ping: bytes,
        send: Send,
    ) -> None:
        self.options = options
        self.iterator = iterator
        self.ping = ping
        self.send = send
        # A list, not a deque: an idle stream holds 56 bytes here, not a 600-byte block.
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.loop = _asyncio_loop()
        self.tg: anyio.abc.TaskGroup | None = None
        # Whether a writer task runs: it exists only while something is buffered.
        self.writer = False
        self.room: _Waiter | None = None  # set while the producer waits for buffer space
        self.drained: _Waiter | None = None  # set while the producer waits for the writer
        # Whether the producer gave the event loop a turn since its last item (the canary, a
        # ``call_soon`` callback, sets ``ticked``): an item that took a wait is written at once
        # by the producer; one that came straight after another is part of a burst.
        self.ticked = False
        self.armed = False
        self.error: Exception | None = None
        self.reason: CloseReason | None = None
        self.started = time.monotonic()
        self.last_write = self.started
        self.sending_since: float | None = None
        self.ticket: _Ticket | None = None  # set while the asyncio watchdog is armed
        self.subscription: _LoopCallback | None = None  # to the server's shutdown signal
        # The request's context variables, for a writer started by the watchdog (a heartbeat).
        self.context = contextvars.copy_context()
        self.events = self.writes = self.bytes_sent = self.pings = 0

    def end(self, reason: CloseReason) -> None:
        """End the stream for ``reason`` (the first reason wins) by cancelling every task."""
        if self.reason is None:
            self.reason = reason
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    def on_shutdown(self) -> None:
        self.end(CloseReason.SHUTDOWN)

    def run(self, tg: anyio.abc.TaskGroup, *, produce: bool) -> None:
        """Start the writer if something is buffered already, the producer as a child if
        ``produce``, and the watchdog if a heartbeat or a time limit is set."""
        if self.chunks:
            self.start_writer()
        if produce:
            tg.start_soon(self.produce, name=_PRODUCER)
        options = self.options
        if (
            options.ping_interval is not None
            or options.send_timeout is not None
            or options.max_duration is not None
        ):
            if self.loop is not None:
                self.on_timer(time.monotonic())  # a shared loop timer, no task
            else:
                tg.start_soon(self.watch, name=_WATCHDOG)

    def stop(self) -> None:
        """The task group has ended: drop the watchdog and the shutdown subscription."""
        self.stop_timer()
        subscription = self.subscription
        if subscription is not None:
            self.subscription = None
            subscription.unsubscribe()

    def push(self, chunk: bytes) -> None:
        """Buffer ``chunk`` for the writer, starting one if none runs."""
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if not self.writer:
            self.start_writer()

    def start_writer(self) -> None:
        tg = self.tg
        if tg is not None:  # before the task group opens, ``run()`` starts it
            tg.start_soon(self.write, name=_WRITER)
            self.writer = True

    def tick(self) -> None:
        self.armed = False
        self.ticked = True

    async def send_body(self, body: bytes) -> bool:
        """Write ``body``; ``False`` if the client is gone (the stream is then ending)."""
        self.sending_since = time.monotonic()
        try:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:  # ASGI 2.4 servers raise it once the client is gone
            self.end(CloseReason.DISCONNECTED)
            return False
        finally:
            self.sending_since = None
        self.last_write = time.monotonic()
        self.writes += 1
        self.bytes_sent += len(body)
        return True

    async def produce(self) -> None:
        """The producer: pull items from the content; write one that took a wait itself when
        no writer runs, buffer the others (starting the writer); end the body at the end."""
        limit = self.options.max_buffer_bytes
        loop = self.loop
        chunks = self.chunks
        try:
            async for item in self.iterator:
                waited = self.ticked
                chunk = _item_bytes(item)
                self.events += 1
                if chunk:
                    if waited and not self.writer and not chunks:
                        # Nothing is being written and this item took a wait (a token, not a
                        # burst): write it from here, which saves the hand-over to a writer.
                        if not await self.send_body(chunk):
                            return
                    else:
                        self.push(chunk)
                        if self.buffered >= limit:
                            room = self.room = _waiter(loop)
                            await _wait(room)
                self.ticked = False
                if loop is None:
                    self.ticked = True  # no canary off asyncio: every item may go inline
                elif not self.armed:
                    self.armed = True
                    loop.call_soon(self.tick)
        except Exception as exc:
            self.error = exc
        if self.writer:  # let the writer send what is buffered
            drained = self.drained = _waiter(loop)
            await _wait(drained)
        if self.error is not None:
            self.end(CloseReason.ERROR)
            return
        # Claim the ending before the final send: a shutdown or timeout arriving while it is
        # in flight must not make _stream() send the final message a second time.
        if self.reason is None:
            self.reason = CloseReason.COMPLETED
        try:
            await self.send(_FINAL)
        except OSError:
            self.reason = CloseReason.DISCONNECTED
        self.end(CloseReason.COMPLETED)  # stop listening for the client

    async def write(self) -> None:
        """The writer: send whatever is buffered, as few writes as the client's pace allows,
        then end (a later push starts another)."""
        chunks = self.chunks
        limit = self.options.max_write_bytes
        buffer_limit = self.options.max_buffer_bytes
        try:
            while chunks:
                if len(chunks) == 1:
                    body = chunks[0]
                    chunks.clear()
                elif self.buffered <= limit:
                    body = b"".join(chunks)
                    chunks.clear()
                else:
                    # A write holds whole events and at most ``limit`` bytes (one larger
                    # event goes alone).
                    size = len(chunks[0])
                    taken = 1
                    while taken < len(chunks) and size + len(chunks[taken]) <= limit:
                        size += len(chunks[taken])
                        taken += 1
                    body = b"".join(chunks[:taken]) if taken > 1 else chunks[0]
                    del chunks[:taken]
                self.buffered -= len(body)
                room = self.room
                if room is not None and self.buffered < buffer_limit:
                    self.room = None
                    _fire(room)
                if not await self.send_body(body):
                    return
        finally:
            self.writer = False
            drained = self.drained
            if drained is not None:
                self.drained = None
                _fire(drained)

    def check(self, now: float) -> float | None:
        """Heartbeat, ``send_timeout`` and ``max_duration`` at ``now``: queue a ping or end the
        stream; return when to check next (``None``: the stream ended)."""
        if self.reason is not None:  # ending (perhaps in the final send): nothing to add
            return None
        options = self.options
        ping = options.ping_interval
        send_timeout = options.send_timeout
        deadline = math.inf
        if options.max_duration is not None:
            deadline = self.started + options.max_duration
            if now >= deadline:
                self.end(CloseReason.TIMEOUT)
                return None
        sending_since = self.sending_since
        if send_timeout is not None:
            if sending_since is not None and now - sending_since >= send_timeout:
                log.info("a write blocked for over %s s; dropping the client", send_timeout)
                self.end(CloseReason.SEND_TIMEOUT)
                return None
            deadline = min(deadline, (sending_since or now) + send_timeout)
        if ping is not None:
            due = self.last_write + ping
            if due <= now:
                if sending_since is None and not self.chunks:
                    self.pings += 1
                    self.push(self.ping)
                due = now + ping
            deadline = min(deadline, due)
        return deadline

    def on_timer(self, now: float) -> None:
        """The asyncio watchdog, run from the loop's shared :class:`_Timers`. Writes only move
        ``last_write``; the check finds out when it runs (at most once per interval)."""
        self.ticket = None
        if self.reason is not None or self.loop is None:
            return
        # A heartbeat starts a writer from here: in the request's context, not the timer's.
        deadline = self.context.run(self.check, now)
        if deadline is not None and deadline != math.inf:
            self.ticket = ticket = _Ticket(self, deadline)
            _timers_of(self.loop).schedule(ticket)

    def stop_timer(self) -> None:
        ticket = self.ticket
        if ticket is not None:
            ticket.stream = None
            self.ticket = None

    async def watch(self) -> None:
        """The watchdog as a task, for event loops other than asyncio."""
        while True:
            now = time.monotonic()
            deadline = self.check(now)
            if deadline is None:
                return
            await anyio.sleep(deadline - now)
