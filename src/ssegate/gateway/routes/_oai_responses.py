"""OpenAI's Responses API: ``POST /v1/responses``, ``GET /v1/responses/{id}`` (with
``?stream=true&starting_after=N``) and ``POST /v1/responses/{id}/cancel``.

Every response is a gateway stream, and **the response id is the stream id** (``st_…``):
``/v1/streams/{id}`` follows, resumes and stops it too, and ``x-ssegate-stream-id`` names it.
Its events are the stored stream translated (``_oai_responses_events``): the same numbering on
every instance, so ``starting_after=N`` resumes exactly after event ``N`` anywhere the store is
shared. Errors are OpenAI's (``_openai_errors``).

Where this departs from OpenAI's API (https://platform.openai.com/docs/api-reference/responses):

* Nothing is kept beyond the stream store's TTL: ``store``, ``previous_response_id`` and
  ``conversation`` have no server-side history here (the last two are refused, 400). Send the
  whole conversation as ``input``, as with ``store: false``.
* Only function tools; ``text.format`` is plain text only.
* Any response can be cancelled, not only a ``background`` one; cancelling a finished one
  answers it as it is. A ``background`` response runs on when its client leaves (the stream's
  ``on_disconnect`` is ``continue``); a foreground one follows the gateway's policy.
* ``background`` answers at once with status ``in_progress`` (the generation has started).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from starlette.responses import Response

from ...store import StoredEvent, StoreError, StreamInfo, StreamNotFoundError, StreamStatus
from .._auth import caller_of, security_of
from .._state import GatewayState, state_of
from ._oai_responses_events import ResponseEvents
from ._oai_responses_schema import (
    PlainLocations,
    ResponsesRequest,
    chat_request,
    request_echo,
)
from ._oai_responses_stream import (
    ResponseStream,
    check_messages,
    gather,
    start_response,
    wait_disconnect_or_end,
)
from ._openai import openai_caller
from ._openai_errors import OpenAIError, OpenAIRoute, resolve_model, stream_headers
from ._responses import SSE_EVENT, openai_errors
from ._stream_body import wait_finished

__all__ = ["ResponsesRequest", "responses_router"]

_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
_ID = re.compile(_ID_PATTERN[1:-1])
ResponseId = Annotated[str, Path(min_length=1, max_length=200, pattern=_ID_PATTERN)]


class _ResponsesRoute(OpenAIRoute, PlainLocations):
    """OpenAI's error shape, with params named as OpenAI names them."""


responses_router = APIRouter(prefix="/v1", tags=["openai"], route_class=_ResponsesRoute)

_RESPONSE = {
    "description": "A response object, or with stream: true the Responses API's events",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": SSE_EVENT},
    },
}


def _json(body: dict[str, Any], stream_id: str) -> Response:
    return Response(orjson.dumps(body), 200, stream_headers(stream_id), "application/json")


def _not_found(response_id: str) -> OpenAIError:
    message = f"Response with id '{response_id}' not found."
    return OpenAIError(404, message, param="response_id", code="not_found")


async def _info(request: Request, response_id: str, *, cancel: bool = False) -> StreamInfo:
    """The stream behind ``response_id`` if the caller may read (or cancel) it; another key's
    stream is a 404, as one that does not exist."""
    if not _ID.fullmatch(response_id):
        raise _not_found(response_id)
    try:
        info = await state_of(request).store.get(response_id)
    except StreamNotFoundError:
        raise _not_found(response_id) from None
    caller = caller_of(request)
    if not (caller.may_cancel(info) if cancel else caller.may_read(info)):
        raise _not_found(response_id)
    return info


async def _snapshot(state: GatewayState, stream_id: str) -> tuple[ResponseEvents, dict[str, Any]]:
    try:
        return await gather(state, stream_id)
    except StreamNotFoundError:
        raise _not_found(stream_id) from None
    except StoreError as exc:  # a gap (events no longer kept) or the store is down
        error = OpenAIError.from_gateway(exc.to_dict())
        raise OpenAIError(max(error.status, 502), error.message, code=error.code) from None


@responses_router.post(
    "/responses",
    summary="Create a response (OpenAI Responses API)",
    response_model=None,
    responses={200: _RESPONSE, **openai_errors(400, 401, 404, 409, 413, 429, 502, 503, 504)},
)
async def create_response(
    request: Request,
    body: Annotated[ResponsesRequest, Body()],
    owner: Annotated[str | None, Depends(openai_caller)],
) -> Response:
    """OpenAI's Responses API; ``stream: true`` answers its typed events, ``background: true``
    answers at once. The response id is the gateway stream's id."""
    state, security = state_of(request), security_of(request)
    route = resolve_model(state, body.model)
    chat = chat_request(body, route)
    check_messages(state, chat)
    policy = body.on_disconnect or state.settings.streams.on_disconnect
    echo = request_echo(body)
    info = await start_response(
        state,
        security,
        route,
        chat,
        owner=owner,
        on_disconnect="continue" if body.background else policy,
        echo=echo,
    )
    if body.stream:
        return ResponseStream(state, security, info.id, hold=True)
    if body.background:
        events = ResponseEvents(info.id)
        start = {"model": route.name, "created": int(info.created), "responses": echo}
        events.translate(StoredEvent.build(1, "start", orjson.dumps(start).decode()))
        return _json(events.response(), info.id)
    if not await wait_disconnect_or_end(state, info.id, request.receive):
        return Response(status_code=499)  # nobody reads it; the access log says what happened
    events, error = await _snapshot(state, info.id)
    if error:
        return OpenAIError.from_gateway(error).response(info.id)
    return _json(events.response(), info.id)


@responses_router.get(
    "/responses/{response_id}",
    summary="Retrieve a response, or resume its stream (OpenAI Responses API)",
    response_model=None,
    responses={200: _RESPONSE, **openai_errors(400, 401, 404, 429, 502, 503)},
)
async def retrieve_response(
    request: Request,
    response_id: ResponseId,
    owner: Annotated[str | None, Depends(openai_caller)],
    stream: Annotated[bool, Query()] = False,
    starting_after: Annotated[int | None, Query(ge=0, le=2**53 - 1)] = None,
) -> Response:
    """The response as it stands (status, output, usage), built from the stored stream; with
    ``stream=true`` its events numbered above ``starting_after``, then live ones."""
    state = state_of(request)
    info = await _info(request, response_id)
    if stream:
        after = -1 if starting_after is None else starting_after
        return ResponseStream(state, security_of(request), info.id, after=after)
    events, _ = await _snapshot(state, info.id)
    return _json(events.response(), info.id)


@responses_router.post(
    "/responses/{response_id}/cancel",
    summary="Cancel a response (OpenAI Responses API)",
    response_model=None,
    responses={
        200: {
            "description": "The response, cancelled",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **openai_errors(400, 401, 404, 429, 502, 503),
    },
)
async def cancel_response(
    request: Request,
    response_id: ResponseId,
    owner: Annotated[str | None, Depends(openai_caller)],
) -> Response:
    """Stop the generation (the upstream request is closed, on whichever instance runs it) and
    answer the response; ``status`` is ``cancelled`` once the producer has confirmed (within a
    second), else still ``in_progress``."""
    state = state_of(request)
    info = await _info(request, response_id, cancel=True)
    if info.status is StreamStatus.RUNNING:
        try:
            await state.jobs.cancel(info.id, "client")
        except StreamNotFoundError:
            raise _not_found(response_id) from None
        await wait_finished(state, info.id, info.last_event_id, 1.0)
    events, _ = await _snapshot(state, info.id)
    return _json(events.response(), info.id)
