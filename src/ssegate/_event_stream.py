"""One event stream while it runs: the producer writes each item, the monitor keeps watch.

A stream is two tasks in one task group, Starlette's and trio's idiom; whichever ends the
stream cancels the other:

* the **producer** (a child task) pulls items from the content, encodes each and sends it at
  once: no buffer and no hand-over to another task, so an event costs what a hand-written
  ``StreamingResponse`` pays for it (and, as there, the task woken per event is a child, whose
  chain of coroutines to resume is short, not the server's and every middleware's). The
  server's ``send()`` is the only buffer (its transport's, up to the server's high-water
  mark); past it, ``send()`` waits for the client, and so does the producer — memory stays
  flat for a slow client;
* the **monitor** (the response's own task) listens for the client leaving, from the first
  byte on, by awaiting ``receive()``; and, when a heartbeat, ``send_timeout`` or
  ``max_duration`` is set, it bounds that wait by the next deadline: it writes a ``: ping``
  comment after ``ping_interval`` seconds without a write (only while the producer is not
  writing), ends the stream when one write has blocked for ``send_timeout``, and ends it
  after ``max_duration``.

Where this departs from the letter of the specs:

* none on the wire; every ``send()`` holds whole events (WHATWG HTML §9.2.6 allows any split,
  but proxies and naive clients like whole ones);
* ``retry:`` (the reconnection time) is written in the first event's block, not alone: a block
  with no ``data`` dispatches nothing by the spec, but some clients (httpx-sse,
  fetch-event-source) report it as an empty message;
* the monitor cancels a pending ``receive()`` when a deadline passes; the ASGI spec does not
  say whether a server allows that (uvicorn and hypercorn do: their ``receive()`` only waits);
* ``send_timeout`` ends a write by cancelling the server's ``send()``: uvicorn allows it;
  hypercorn shields its socket writes, so there a blocked write lasts until the client reads
  or leaves.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import anyio.abc
import orjson
from starlette.types import Message, Receive, Send

from ._shutdown import ShutdownSignal
from .codec import ServerSentEvent, encode, encode_comment, encode_fields

__all__ = ["FINAL", "CloseReason", "EventStream", "EventStreamOptions", "StreamItem"]

log = logging.getLogger("ssegate.response")

#: What the content of an :class:`~ssegate.EventSourceResponse` may yield: an event,
#: already-encoded ``text/event-stream`` bytes (written as they are), a ``str`` (sent as
#: ``data``) or a ``dict``/``list`` (sent as one line of JSON ``data``).
StreamItem: TypeAlias = ServerSentEvent | bytes | str | dict[str, Any] | list[Any]

#: The ASGI message that ends the body.
FINAL: Message = {"type": "http.response.body", "body": b"", "more_body": False}


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
    in the first event's block (the client's reconnection delay); ``None`` writes none.
    ``send_timeout``: seconds one write may block before the client is treated as gone (the
    response returns unfinished, so the server drops the connection); ``None`` waits as long as
    the server does. ``max_duration``: seconds after which the stream ends cleanly; ``None`` is
    no limit. ``close_timeout``: seconds allowed for closing the content iterator and for the
    final write after an early end. ``ping_event``: sent as the heartbeat instead of the
    ``ping_comment`` comment, for a protocol whose heartbeat is an event (Anthropic's ``ping``).
    """

    ping_interval: float | None = 15.0
    ping_comment: str = "ping"
    ping_event: ServerSentEvent | None = None
    retry: int | None = None
    send_timeout: float | None = None
    max_duration: float | None = None
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("ping_interval", "send_timeout", "max_duration"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds or None")
        if self.retry is not None and (type(self.retry) is not int or self.retry < 0):
            raise ValueError("retry must be a non-negative integer of milliseconds or None")
        if not self.close_timeout >= 0:
            raise ValueError("close_timeout must be >= 0")
        encode_comment(self.ping_comment)  # refuse a comment that cannot be encoded
        if self.ping_event is not None and not isinstance(self.ping_event, ServerSentEvent):
            raise TypeError("ping_event must be a ServerSentEvent or None")


def _item_bytes(item: object) -> bytes:
    """Encode one content item that is not ``bytes`` (the most common types first)."""
    if isinstance(item, ServerSentEvent):
        return encode(item)
    if isinstance(item, str):
        return encode_fields(item)
    if isinstance(item, dict | list):
        # orjson escapes every control character, so the JSON is one line.
        return b"data: " + orjson.dumps(item) + b"\n\n"
    if isinstance(item, bytes | bytearray | memoryview):
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


class EventStream:
    """One response while it streams: the producer and the monitor (see the module)."""

    __slots__ = (
        "bytes_sent",
        "error",
        "events",
        "iterator",
        "last_write",
        "options",
        "pinging",
        "pings",
        "reason",
        "retry",
        "send",
        "sending_since",
        "started",
        "tg",
        "writes",
    )

    def __init__(
        self, options: EventStreamOptions, iterator: AsyncIterator[StreamItem], send: Send
    ) -> None:
        self.options = options
        self.iterator = iterator
        self.send = send
        # Written before the first event, in its block (see the module's docstring).
        self.retry = None if options.retry is None else b"retry: %d\n" % options.retry
        self.tg: anyio.abc.TaskGroup | None = None
        self.reason: CloseReason | None = None
        self.error: Exception | None = None
        self.started = self.last_write = time.monotonic()
        self.sending_since: float | None = None  # set while a write is in flight
        self.pinging: anyio.Event | None = None  # set while the monitor writes a heartbeat
        self.events = self.writes = self.bytes_sent = self.pings = 0

    def end(self, reason: CloseReason) -> None:
        """End the stream for ``reason`` (the first reason wins)."""
        if self.reason is None:
            self.reason = reason
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    def on_shutdown(self) -> None:
        self.end(CloseReason.SHUTDOWN)

    async def run(
        self, start: Callable[[], Message], receive: Receive, shutdown: ShutdownSignal | None
    ) -> None:
        """Send the headers, then produce and monitor until one of them ends the stream."""
        try:
            await self.send(start())
        except OSError:  # ASGI 2.4: the client left before the headers went out
            self.reason = CloseReason.DISCONNECTED
            return
        self.started = self.last_write = time.monotonic()
        on_shutdown = self.on_shutdown
        subscribed = False
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                if shutdown is not None:
                    subscribed = shutdown.subscribe(on_shutdown)
                if self.reason is None:
                    # The producer is the child: a task woken once per event should resume a
                    # short chain of coroutines, not the server's and every middleware's
                    # (measured: 0.7 us per event of a real-socket stream on uvicorn).
                    tg.start_soon(self.produce, name="ssegate event stream producer")
                    await self.monitor(receive)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _collapse(group) from None
        finally:
            if subscribed:
                assert shutdown is not None
                shutdown.unsubscribe(on_shutdown)
        await self.finish()

    async def produce(self) -> None:
        """Write each item as it comes; end the body when the content is done."""
        try:
            async for item in self.iterator:
                chunk = item if type(item) is bytes else _item_bytes(item)
                self.events += 1
                if not chunk:
                    continue
                if self.retry is not None:
                    chunk, self.retry = self.retry + chunk, None
                if self.pinging is not None:  # a heartbeat is being written: let it finish
                    await self.pinging.wait()
                # last_write is when the last write began: silence counts from there.
                self.sending_since = self.last_write = time.monotonic()
                try:
                    await self.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
                except OSError:  # ASGI 2.4 servers raise it once the client is gone
                    self.end(CloseReason.DISCONNECTED)
                    return
                finally:
                    self.sending_since = None
                self.writes += 1
                self.bytes_sent += len(chunk)
        except Exception as exc:
            self.error = exc
            self.end(CloseReason.ERROR)
            return
        if self.pinging is not None:
            await self.pinging.wait()
        # Claim the ending before the final send: a shutdown arriving while it is in flight
        # must not make finish() send the final message a second time.
        if self.reason is None:
            self.reason = CloseReason.COMPLETED
        try:
            await self.send(FINAL)
        except OSError:
            self.reason = CloseReason.DISCONNECTED
        self.end(CloseReason.COMPLETED)  # stop the monitor

    async def monitor(self, receive: Receive) -> None:
        """Listen for the client leaving; keep the heartbeat and the time limits."""
        options = self.options
        timed = (
            options.ping_interval is not None
            or options.send_timeout is not None
            or options.max_duration is not None
        )
        try:
            while True:
                wait = await self.check() if timed else math.inf
                if wait is None:
                    return  # the check ended the stream
                with nullcontext() if wait == math.inf else anyio.move_on_after(wait):
                    if (await receive())["type"] == "http.disconnect":
                        break
        # A server that fails receive() once the client is gone:
        except Exception:
            log.debug("receive() failed; the client is gone", exc_info=True)
        self.end(CloseReason.DISCONNECTED)

    async def check(self) -> float | None:
        """Apply ``max_duration``, ``send_timeout`` and the heartbeat now; return how many
        seconds until the next check is due, or ``None`` if the stream is ending."""
        options = self.options
        now = time.monotonic()
        due = math.inf
        if options.max_duration is not None:
            due = self.started + options.max_duration
            if now >= due:
                self.end(CloseReason.TIMEOUT)
                return None
        send_timeout = options.send_timeout
        if send_timeout is not None:
            sending_since = self.sending_since
            if sending_since is not None and now - sending_since >= send_timeout:
                log.info("a write blocked for over %s s; dropping the client", send_timeout)
                self.end(CloseReason.SEND_TIMEOUT)
                return None
            # A write that starts after this check is looked at within two send_timeouts.
            due = min(due, (sending_since or now) + send_timeout)
        ping_interval = options.ping_interval
        if ping_interval is not None:
            if self.sending_since is None and now - self.last_write >= ping_interval:
                if not await self.ping():
                    return None
                now = time.monotonic()
            next_ping = self.last_write + ping_interval
            # While a write is in flight no heartbeat is due: look again an interval later.
            due = min(due, next_ping if next_ping > now else now + ping_interval)
        return max(due - now, 0.0)

    async def ping(self) -> bool:
        """Write a heartbeat, bounded by ``send_timeout`` (the producer waits for it before
        its next write); ``False`` if the stream is ending."""
        pinging = self.pinging = anyio.Event()
        limit = self.options.send_timeout
        event = self.options.ping_event
        ping = encode(event) if event is not None else encode_comment(self.options.ping_comment)
        message = {"type": "http.response.body", "body": ping, "more_body": True}
        self.last_write = time.monotonic()
        try:
            with anyio.move_on_after(math.inf if limit is None else limit) as scope:
                await self.send(message)
        except OSError:  # ASGI 2.4 servers raise it once the client is gone
            self.end(CloseReason.DISCONNECTED)
            return False
        finally:
            self.pinging = None
            pinging.set()
        if scope.cancelled_caught:
            log.info("a heartbeat blocked for over %s s; dropping the client", limit)
            self.end(CloseReason.SEND_TIMEOUT)
            return False
        self.pings += 1
        self.writes += 1
        self.bytes_sent += len(ping)
        return True

    async def finish(self) -> None:
        """After the task group: end the body cleanly if the stream was cut short while the
        client is still there; raise the content's error."""
        if self.reason in (CloseReason.SHUTDOWN, CloseReason.TIMEOUT):
            with anyio.move_on_after(self.options.close_timeout):
                try:
                    await self.send(FINAL)
                except OSError:
                    pass
        elif self.error is not None:
            if self.reason is CloseReason.ERROR:
                raise self.error
            # Nobody is left to tell; don't let the error vanish.
            log.error("event stream content failed after the stream ended", exc_info=self.error)
