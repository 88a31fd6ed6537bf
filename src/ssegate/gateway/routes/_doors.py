"""What the protocol doors (chat completions, Messages, Responses) share: the first events
of a stream, which decide the HTTP status, and a whole answer gathered to the stream's end."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing

import anyio
from starlette.types import Receive

from ...store import StoredEvent, StoreError
from .._state import GatewayState

__all__ = ["ClientGone", "first_events", "follow_to_end"]


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
