"""The Anthropic Messages API: ``POST /v1/messages``, stream and not.

Every message is a gateway stream, whatever the upstream (OpenAI-compatible, Anthropic,
Ollama, demo): it is started in the shared job manager, its response carries
``x-ssegate-stream-id`` (and ``request-id``, which the SDK shows as ``_request_id``), its ``id``
is ``msg_<stream id>``, and it can be followed, resumed or stopped under ``/v1/streams/{id}``.
The SSE body follows the store and translates gateway events into Anthropic's events
(``_anthropic_events``); the request is translated into the provider's
(``_anthropic_schema``); errors are Anthropic's (``_anthropic_errors``). API keys are accepted
as ``x-api-key`` (what the SDK sends) as well as ``Authorization: Bearer``.

Where this departs from Anthropic's API (https://docs.anthropic.com/en/api/messages):

* Content blocks are text, ``tool_use`` and ``tool_result`` (and thinking blocks of earlier
  turns, not sent on); images, documents and server tools are refused with 400.
* A streaming response waits for the first event after ``start`` (up to 10 s, or the heartbeat
  interval if shorter) before choosing its status, so an upstream that refuses at once (429,
  5xx) gets an HTTP error status; later faults, and a cancel (``DELETE /v1/streams/{id}``),
  arrive as an ``error`` event, after which the body ends.
* ``message_start`` reports ``input_tokens: 0``: the upstream's counts arrive at the end, in
  ``message_delta``'s usage (``input_tokens`` and ``output_tokens``).
* The heartbeat is Anthropic's ``ping`` event, sent after the heartbeat interval of silence.
* Thinking blocks have an empty ``signature``: the gateway cannot sign them.
* ``stop_sequence`` is always ``null``: upstreams report a stop on a stop sequence as a plain
  stop, so it reads as ``end_turn``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..._event_stream import EventStreamOptions
from ...codec import ServerSentEvent
from ...providers import ChatRequest
from ...store import StoredEvent, StoreError, StreamInfo
from .._auth import GatewaySecurity, caller_of, security_of
from .._limits import PromptLimitError, check_prompt
from .._models import ModelRoute, UnknownModelError
from .._state import GatewayState, state_of
from ._anthropic_errors import AnthropicError, AnthropicRoute, anthropic_errors
from ._anthropic_events import MessageBody, MessageEvents, event_data, message_id
from ._anthropic_schema import MessagesRequest, chat_request
from ._doors import (
    ClientGone,
    door_event_stream,
    first_event_wait,
    first_events,
    follow_to_end,
    start_generation,
)
from ._stream_body import STREAM_ID_HEADER

__all__ = ["MessagesRequest", "anthropic_model", "anthropic_models", "anthropic_router"]

#: The heartbeat is Anthropic's ``ping`` event, not a comment.
_OPTIONS = EventStreamOptions(ping_event=ServerSentEvent(data='{"type":"ping"}', event="ping"))


def _headers(stream_id: str) -> dict[str, str]:
    return {STREAM_ID_HEADER: stream_id, "request-id": stream_id}


# -- starting ----------------------------------------------------------------------------------


def _resolve(state: GatewayState, name: str) -> ModelRoute:
    try:
        return state.models.resolve(name)
    except UnknownModelError:
        raise AnthropicError(404, f"model: {name}") from None


def _check_prompt(state: GatewayState, chat: ChatRequest) -> None:
    limits = state.settings.limits
    try:
        check_prompt(
            chat.messages, max_messages=limits.max_messages, max_chars=limits.max_prompt_chars
        )
    except PromptLimitError as exc:
        raise AnthropicError(400, exc.message) from None


async def _start(
    state: GatewayState,
    security: GatewaySecurity,
    route: ModelRoute,
    chat: ChatRequest,
    owner: str | None,
    policy: str | None,
) -> StreamInfo:
    if state.draining:
        raise AnthropicError(
            529, "The gateway is shutting down.", retryable=True, headers={"Retry-After": "1"}
        )
    # ShuttingDownError and StoreFullError are SsegateErrors, the quota's ApiError a 429:
    # AnthropicRoute answers them.
    return await start_generation(state, security, route, chat, owner=owner, on_disconnect=policy)


# -- streaming ------------------------------------------------------------------------------


async def _message_stream(
    state: GatewayState, stream_id: str, head: list[StoredEvent], events: MessageEvents
) -> AsyncIterator[bytes]:
    """The stream's events as Anthropic's, to its end; faults as an ``error`` event."""
    for event in head:
        yield events.translate(event)
    if events.finished:
        return
    after = head[-1].id if head else 0
    try:
        # What piled up while the client read goes out in one write (see _streams._events).
        async with aclosing(state.store.follow_batches(stream_id, after)) as batches:
            async for batch in batches:
                yield b"".join([events.translate(event) for event in batch])
    except StoreError as exc:  # gap, producer lost, deleted, store down
        yield events.error(AnthropicError.from_gateway(exc.to_dict()))
        return
    if not events.finished:
        yield events.error(AnthropicError(502, "The stream ended early."))


class _MessageStream(Response):
    """A streaming message: holds the status until the first event after ``start`` (or
    ``_FIRST_EVENT_WAIT``), then streams Anthropic's events — or answers an early ``error``
    event with its own HTTP status. Counted as one subscriber throughout, so
    ``on_disconnect`` sees it."""

    def __init__(
        self, state: GatewayState, security: GatewaySecurity, info: StreamInfo, model: str
    ) -> None:
        super().__init__(status_code=200)
        self._state = state
        self._security = security
        self._info = info
        self._events = MessageEvents(message_id(info.id), model)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, stream_id = self._state, self._info.id
        wait = first_event_wait(state)
        async with state.store.subscriber(stream_id):
            try:
                head = await first_events(state, stream_id, wait)
            except StoreError as exc:
                error = AnthropicError.from_gateway(exc.to_dict())
                await error.response(_headers(stream_id))(scope, receive, send)
                return
            if head and head[-1].event == "error":
                error = AnthropicError.from_gateway(event_data(head[-1]))
                await error.response(_headers(stream_id))(scope, receive, send)
                return
            response = door_event_stream(
                state,
                self._security,
                stream_id,
                _message_stream(state, stream_id, head, self._events),
                _headers(stream_id),
                _OPTIONS,
            )
            await response(scope, receive, send)


# -- non-streaming --------------------------------------------------------------------------


async def _complete(
    state: GatewayState, info: StreamInfo, model: str, receive: Receive
) -> Response:
    """Follow the stream to its end and answer one ``message``.

    A client that leaves stops our subscription, so ``on_disconnect`` applies as for SSE.
    """
    result = MessageBody()
    try:
        failure = await follow_to_end(state, info.id, receive, result.add)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the access log says what happened
    if failure is not None:
        return AnthropicError.from_gateway(failure.to_dict()).response(_headers(info.id))
    if result.error is not None:
        return result.error.response(_headers(info.id))
    body = orjson.dumps(result.body(info, model))
    return Response(body, 200, _headers(info.id), media_type="application/json")


# -- the route ------------------------------------------------------------------------------

_MESSAGE = {
    "description": "A message, or with stream: true Anthropic's message stream events",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


async def create_message(request: Request, body: Annotated[MessagesRequest, Body()]) -> Response:
    """Anthropic's Messages API; ``stream: true`` answers Anthropic's stream events.

    Every message is a gateway stream: see ``x-ssegate-stream-id`` and ``/v1/streams/{id}``.
    """
    state, security = state_of(request), security_of(request)
    route = _resolve(state, body.model)
    chat = chat_request(body, route)
    _check_prompt(state, chat)
    owner = caller_of(request).owner
    info = await _start(state, security, route, chat, owner, body.on_disconnect)
    if body.stream:
        return _MessageStream(state, security, info, route.name)
    return await _complete(state, info, route.name, request.receive)


def anthropic_router() -> APIRouter:
    """The Messages API route."""
    router = APIRouter(prefix="/v1", tags=["anthropic"], route_class=AnthropicRoute)
    statuses = anthropic_errors(400, 401, 404, 409, 413, 429, 500, 502, 504, 529)
    router.add_api_route(
        "/messages",
        create_message,
        methods=["POST"],
        summary="Create a message (Anthropic Messages API)",
        response_model=None,
        responses={200: _MESSAGE, **statuses},
    )
    return router


# -- models ---------------------------------------------------------------------------------


def anthropic_model(route: ModelRoute, created: int) -> dict[str, Any]:
    """One model in Anthropic's shape (``GET /v1/models`` with ``anthropic-version``)."""
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "model",
        "id": route.name,
        "display_name": route.name,
        "created_at": stamp,
        "lifecycle": "active",
    }


def anthropic_models(routes: list[ModelRoute], created: int) -> dict[str, Any]:
    """The model list in Anthropic's shape: one page, all of them."""
    data = [anthropic_model(route, created) for route in routes]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
