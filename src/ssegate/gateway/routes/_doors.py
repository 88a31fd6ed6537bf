"""What the protocol doors (chat completions, Messages, Responses) share: starting a
generation, the first events of a stream, which decide the HTTP status, and a whole answer
gathered to the stream's end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import anyio
from starlette.types import Receive

from ..._event_stream import EventStreamOptions
from ...providers import ChatRequest
from ...store import StoredEvent, StoreError, StreamInfo
from .._auth import GatewaySecurity
from .._event_streams import TrackedEventSourceResponse
from .._models import ModelRoute
from .._state import GatewayState

__all__ = [
    "ClientGone",
    "door_event_stream",
    "first_event_wait",
    "first_events",
    "follow_to_end",
    "start_generation",
]

#: The most seconds a door holds its HTTP status for the first event after ``start``.
_FIRST_EVENT_WAIT = 10.0


def first_event_wait(state: GatewayState) -> float:
    """How long a door waits for the first event after ``start`` (an upstream that refuses at
    once becomes an HTTP error): ``_FIRST_EVENT_WAIT``, or the heartbeat interval if shorter."""
    interval = state.settings.streams.heartbeat_interval
    return min(_FIRST_EVENT_WAIT, interval) if interval else _FIRST_EVENT_WAIT


def door_event_stream(
    state: GatewayState,
    security: GatewaySecurity,
    stream_id: str,
    body: AsyncIterator[bytes],
    headers: dict[str, str],
    options: EventStreamOptions | None = None,
) -> TrackedEventSourceResponse:
    """A door's SSE response of ``body`` (the stream in its protocol's events): the gateway's
    heartbeat and send timeout, no ``retry:`` (the protocols' clients don't reconnect), ended
    on shutdown, counted by the tracker."""
    streams = state.settings.streams
    return TrackedEventSourceResponse(
        body,
        headers=headers,
        options=options,
        ping_interval=streams.heartbeat_interval or None,
        retry=None,
        send_timeout=streams.send_timeout or None,
        shutdown=state.shutdown,
        stream_id=stream_id,
        tracker=security.event_streams,
    )


async def start_generation(
    state: GatewayState,
    security: GatewaySecurity,
    route: ModelRoute,
    chat: ChatRequest,
    *,
    owner: str | None,
    on_disconnect: str | None,
    start_extra: dict[str, Any] | None = None,
) -> StreamInfo:
    """Start ``chat`` on ``route`` as a detached job, counted in ``owner``'s quota, its prompt
    in the content log if one is kept; ``on_disconnect`` (the request's, else the gateway's
    default) is ``continue`` or ``cancel``; ``start_extra`` goes into the ``start`` event.

    Raises the quota's ``ApiError`` (429), and ``ShuttingDownError`` / ``StoreFullError``
    (both ``SsegateError``): each door answers them in its protocol's shape.
    """
    settings = state.settings
    content_log = security.content_log
    logged = content_log.wrap(route.provider) if content_log is not None else None
    policy = on_disconnect or settings.streams.on_disconnect
    with security.quota.reserve(owner):
        info = await state.jobs.start(
            logged or route.provider,
            chat,
            model_label=route.name,
            start_extra=None if start_extra is None else (lambda _: start_extra),
            owner=owner,
            on_disconnect="continue" if policy == "continue" else "cancel",
            grace=settings.streams.disconnect_grace,
            max_duration=settings.streams.max_stream_duration,
        )
    if content_log is not None and logged is not None:
        logged.stream_id = info.id  # before the job's task first runs
        content_log.prompt(info.id, owner, chat.messages)
    return info


class ClientGone(Exception):
    """The client left before the stream ended: a whole answer nobody will read."""


async def first_events(state: GatewayState, stream_id: str, wait: float) -> list[StoredEvent]:
    """The events up to the first one after ``start``, waiting at most ``wait`` seconds: what
    a door needs to choose its HTTP status (an early ``error`` is an HTTP error).

    Cancelling ``follow()`` ends it; that is fine, the caller follows on from the last id.
    """
    head: list[StoredEvent] = []
    with anyio.move_on_after(wait):
        async with aclosing(state.store.follow(stream_id, 0)) as events:
            async for event in events:
                head.append(event)
                if event.event != "start":
                    break
    return head


async def follow_to_end(
    state: GatewayState,
    stream_id: str,
    receive: Receive,
    add: Callable[[StoredEvent], object] | None = None,
) -> StoreError | None:
    """Follow the stream to its end as one subscriber, handing ``add`` each event, while
    ``receive`` is watched for the client leaving (which ends the subscription, so
    ``on_disconnect`` applies as for a stream). Returns the store's failure, if it failed;
    raises :class:`ClientGone` if the client left first."""
    failure: StoreError | None = None
    finished = False
    async with state.store.subscriber(stream_id), anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            async with aclosing(state.store.follow_batches(stream_id, 0)) as batches:
                async for batch in batches:
                    if add is not None:
                        for event in batch:
                            add(event)
        except StoreError as exc:
            failure = exc
        finished = True
        tg.cancel_scope.cancel()
    if not finished:
        raise ClientGone
    return failure
