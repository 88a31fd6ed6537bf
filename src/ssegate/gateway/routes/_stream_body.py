"""Reading a gateway stream: its stored events as an SSE body (what piled up in one write,
faults as an ``error`` event), the subscriber limit, and waiting for the stream's end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import orjson

from ..._response import EventSourceResponse
from ...codec import ServerSentEvent, encode
from ...store import (
    ProducerLostError,
    StoredEvent,
    StoreError,
    StreamGapError,
    StreamInfo,
    StreamNotFoundError,
)
from .._auth import GatewaySecurity
from .._errors import ApiError
from .._event_streams import TrackedEventSourceResponse
from .._state import GatewayState

__all__ = [
    "STREAM_ID_HEADER",
    "event_stream_response",
    "refuse_another_subscriber",
    "wait_finished",
]

STREAM_ID_HEADER = "x-ssegate-stream-id"

#: The most events read at once while a reader catches up, and the most bytes one write carries.
_READ_BATCH = 256
_WRITE_BYTES = 64 * 1024


async def _events(state: GatewayState, stream_id: str, after: int) -> AsyncIterator[bytes]:
    """The stored events after ``after``, encoded once by the store; faults as ``error``.

    What the store has that the reader has not read goes out in one write (up to
    ``_WRITE_BYTES``): a reader resuming a long stream, or one whose client is slower than
    the upstream, costs a write per batch, not per event; one that keeps up, a write per
    event as it comes. Any store fault, counting the subscriber in included (the headers are
    sent by then), ends the body with an ``error`` event rather than cutting it off.
    """
    store = state.store
    try:
        async with (
            store.subscriber(stream_id),
            aclosing(store.follow_batches(stream_id, after, _READ_BATCH)) as batches,
        ):
            async for batch in batches:
                for chunk in _joined(batch, _WRITE_BYTES):
                    yield chunk
    except StreamNotFoundError:
        yield _error_event("not_found", "the stream is gone", retryable=False)
    except StoreError as exc:  # gap, producer_lost, store_unavailable: say so and end
        yield _error_event(exc.code, exc.message, retryable=exc.retryable)


def _joined(events: list[StoredEvent], limit: int) -> Iterator[bytes]:
    """The events' wire bytes in runs of whole events of at most ``limit`` bytes (a larger
    event goes alone)."""
    run: list[bytes] = []
    size = 0
    for event in events:
        encoded = event.encoded
        if run and size + len(encoded) > limit:
            yield b"".join(run)
            run, size = [], 0
        run.append(encoded)
        size += len(encoded)
    if run:
        yield b"".join(run)


def _error_event(code: str, message: str, *, retryable: bool) -> bytes:
    # No id: the client's Last-Event-ID stays at the last event it really has.
    data = orjson.dumps({"code": code, "message": message, "retryable": retryable}).decode()
    return encode(ServerSentEvent(data=data, event="error"))


def event_stream_response(
    state: GatewayState,
    security: GatewaySecurity,
    stream_id: str,
    after: int,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The SSE response that follows ``stream_id`` after event ``after``.

    A client that stops reading costs what the server's write buffer holds (the store keeps
    the events); one write blocked for ``send_timeout`` drops it, and it resumes from its last
    id when it comes back.
    """
    settings = state.settings
    return TrackedEventSourceResponse(
        _events(state, stream_id, after),
        status_code=status_code,
        headers={STREAM_ID_HEADER: stream_id, **(headers or {})},
        ping_interval=settings.streams.heartbeat_interval or None,
        retry=settings.streams.retry_ms or None,
        send_timeout=settings.streams.send_timeout or None,
        shutdown=state.shutdown,
        stream_id=stream_id,
        tracker=security.event_streams,
    )


def refuse_another_subscriber(state: GatewayState, info: StreamInfo) -> None:
    """``429`` when ``info``'s stream has as many subscribers as it may have."""
    limit = state.settings.limits.max_subscribers_per_stream
    if limit and info.subscribers >= limit:
        raise ApiError(
            429,
            "too_many_subscribers",
            f"this stream already has {info.subscribers} subscribers, the most it may have",
            headers={"Retry-After": "5"},
        )


async def wait_finished(state: GatewayState, stream_id: str, after: int, limit: float) -> Any:
    """The stream's info once it has ended, or after ``limit`` seconds (a cancel's answer)."""
    with anyio.move_on_after(limit):
        try:
            async with aclosing(state.store.follow(stream_id, after)) as events:
                async for _ in events:
                    pass
        except (StreamGapError, ProducerLostError):
            pass
    return await state.store.get(stream_id)
