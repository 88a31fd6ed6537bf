"""The Responses API door's plumbing: starting a generation, and reading a stored stream back
as Responses events (live, resumed after a sequence number, or gathered into one object)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...codec import ServerSentEvent, encode
from ...providers import ChatRequest
from ...store import TERMINAL_EVENTS, StoredEvent, StoreError, StreamInfo
from .._auth import GatewaySecurity
from .._limits import PromptLimitError, check_prompt
from .._models import ModelRoute
from .._state import GatewayState
from ._doors import (
    ClientGone,
    door_event_stream,
    first_event_wait,
    first_events,
    follow_to_end,
    start_generation,
)
from ._oai_responses_events import ResponseEvents, event_data
from ._openai_errors import OpenAIError, stream_headers

__all__ = [
    "ResponseStream",
    "check_messages",
    "gather",
    "start_response",
    "wait_disconnect_or_end",
]

_READ_BATCH = 256


def check_messages(state: GatewayState, chat: ChatRequest) -> None:
    """The gateway's prompt limits, as OpenAI's 400 (the SDK's ``BadRequestError``)."""
    limits = state.settings.limits
    try:
        check_prompt(
            chat.messages, max_messages=limits.max_messages, max_chars=limits.max_prompt_chars
        )
    except PromptLimitError as exc:
        raise OpenAIError(400, exc.message, code=exc.code, param="input") from None


async def start_response(
    state: GatewayState,
    security: GatewaySecurity,
    route: ModelRoute,
    chat: ChatRequest,
    *,
    owner: str | None,
    on_disconnect: str,
    echo: dict[str, Any],
) -> StreamInfo:
    """Start the generation; its ``start`` event carries ``echo`` under ``responses``."""
    if state.draining:
        raise OpenAIError(
            503,
            "The gateway is shutting down.",
            code="shutting_down",
            retryable=True,
            headers={"Retry-After": "1"},
        )
    # ShuttingDownError and StoreFullError are SsegateErrors: OpenAIRoute answers them (503).
    return await start_generation(
        state,
        security,
        route,
        chat,
        owner=owner,
        on_disconnect=on_disconnect,
        start_extra={"responses": echo},
    )


def _error_event(events: ResponseEvents, code: str, message: str) -> bytes:
    # Not one of the stream's numbered events: it says why the body ends early.
    events.finished = True
    data = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "sequence_number": events.next_sequence_number,
    }
    return encode(ServerSentEvent(data=orjson.dumps(data).decode(), event="error"))


async def _body(
    state: GatewayState,
    stream_id: str,
    head: list[StoredEvent],
    events: ResponseEvents,
    after: int,
) -> AsyncIterator[bytes]:
    for event in head:
        if chunk := events.wire(event, after):
            yield chunk
    if events.finished:
        return
    start = head[-1].id if head else 0
    try:
        # What piled up while the client read (a resume, a slow client) goes out in one write.
        async with aclosing(state.store.follow_batches(stream_id, start)) as batches:
            async for batch in batches:
                if chunk := b"".join([events.wire(event, after) for event in batch]):
                    yield chunk
    except StoreError as exc:  # gap, producer lost, deleted, store down
        yield _error_event(events, exc.code, exc.message)
    if not events.finished:
        yield _error_event(events, "incomplete", "The stream ended early.")


class ResponseStream(Response):
    """A stream of Responses events after sequence number ``after`` (-1: all of them).

    With ``hold`` (a new response), the HTTP status waits for the first event after
    ``start`` (up to ``_FIRST_EVENT_WAIT``), so an upstream that refuses at once is an HTTP
    error the SDK raises as its own class. Counted as one subscriber throughout.
    """

    def __init__(
        self,
        state: GatewayState,
        security: GatewaySecurity,
        stream_id: str,
        *,
        after: int = -1,
        hold: bool = False,
    ) -> None:
        super().__init__(status_code=200)
        self._state = state
        self._security = security
        self._stream_id = stream_id
        self._after = after
        self._hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, stream_id = self._state, self._stream_id
        wait = first_event_wait(state)
        async with state.store.subscriber(stream_id):
            response: Response
            head: list[StoredEvent] = []
            try:
                if self._hold:
                    head = await first_events(state, stream_id, wait)
            except StoreError as exc:
                response = OpenAIError.from_gateway(exc.to_dict()).response(stream_id)
            else:
                if head and head[-1].event == "error":
                    error = OpenAIError.from_gateway(event_data(head[-1]))
                    response = error.response(stream_id)
                else:
                    response = door_event_stream(
                        state,
                        self._security,
                        stream_id,
                        _body(state, stream_id, head, ResponseEvents(stream_id), self._after),
                        stream_headers(stream_id),
                    )
            await response(scope, receive, send)


async def gather(state: GatewayState, stream_id: str) -> tuple[ResponseEvents, dict[str, Any]]:
    """The stream's kept events translated, without waiting: the translator (its
    ``response()`` is the object as it stands) and the gateway error it ended with, if any."""
    events = ResponseEvents(stream_id)
    error: dict[str, Any] = {}
    after = 0
    while True:
        kept = await state.store.read(stream_id, after, _READ_BATCH)
        for event in kept:
            events.translate(event)
            if event.event == "error":
                error = event_data(event)
        if not kept or kept[-1].event in TERMINAL_EVENTS:
            return events, error
        after = kept[-1].id


async def wait_disconnect_or_end(state: GatewayState, stream_id: str, receive: Receive) -> bool:
    """Follow the stream to its end as one subscriber; ``False`` if the client left first
    (which stops the subscription, so ``on_disconnect`` applies as for a stream). A store
    failure counts as the end: ``gather()`` reads what is kept and says how it ended."""
    try:
        await follow_to_end(state, stream_id, receive)
    except ClientGone:
        return False
    return True
