"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``GET /v1/models[/{id}]``.

Every completion is a gateway stream: it is started in the shared job manager, its response
carries ``x-ssegate-stream-id``, its ``id`` is ``chatcmpl-<stream id>``, and it can be
followed, resumed or cancelled under ``/v1/streams/{id}``. The SSE body is made by following
the store and translating gateway events into ``chat.completion.chunk`` objects, one chunk per
event, so after ``k`` chunks a client resumes with ``Last-Event-ID: k`` (the role chunk is the
``start`` event, id 1).

Where this departs from OpenAI's API (https://platform.openai.com/docs/api-reference/chat):

* One choice only: ``n`` > 1, ``logprobs``/``top_logprobs``, audio output and the deprecated
  ``functions``/``function_call`` are refused with 400. ``store``, ``metadata`` and
  ``service_tier`` are accepted and ignored (they concern the operator's upstream account).
  Other fields, known or not, go to OpenAI-compatible upstreams as they are (the upstream
  refuses what it can't do); Anthropic and Ollama upstreams get the ones they have a
  counterpart for, and the rest is ignored.
* A streaming response waits for the first event after ``start`` (up to 10 s, or the heartbeat
  interval if shorter) before choosing its status, so an upstream that refuses at once (429,
  401, 5xx) gets an HTTP error status, as OpenAI does; later faults arrive in the stream as
  ``data: {"error": {...}}`` (then the body ends, without ``[DONE]``). So does a cancel
  (``DELETE /v1/streams/{id}``), with code ``cancelled``.
* The SSE body has no ``retry:`` field (the SDK's decoder turns a lone ``retry:`` into an empty
  event and fails to parse it); heartbeats are ``: ping`` comments, which every client ignores.
* Upstream faults are answered as a gateway would: our caller's request was fine, the upstream
  was not, so an upstream that refuses *our* key is a 502, not a 401 (see ``_STATUS_BY_CODE``
  in ``_openai_errors``). Errors carry ``x-should-retry`` (the official SDKs obey it) from the
  fault's ``retryable``.
* ``reasoning_content`` carries reasoning text (as DeepSeek, Qwen and vLLM do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...providers import ChatRequest
from ...store import StoredEvent, StoreError, StreamInfo
from .._auth import GatewaySecurity, caller_of, security_of
from .._limits import PromptLimitError, check_prompt
from .._models import ModelRoute, UnknownModelError
from .._state import GatewayState, state_of
from ._anthropic import anthropic_model, anthropic_models
from ._anthropic_errors import AnthropicError
from ._doors import (
    ClientGone,
    door_event_stream,
    first_event_wait,
    first_events,
    follow_to_end,
    start_generation,
)
from ._openai_chunks import Chunks, Completion, event_data
from ._openai_errors import OpenAIError, OpenAIRoute, resolve_model, stream_headers
from ._openai_schema import ChatCompletionRequest, chat_request, check_shape
from ._responses import SSE_EVENT, openai_errors

__all__ = ["ChatCompletionRequest", "OpenAIError", "OpenAIRoute", "openai_caller", "router"]


async def openai_caller(request: Request) -> str | None:
    """Who is calling: the owner recorded on the streams they start (``None`` without auth).

    The gateway's ``AuthMiddleware`` has already answered a missing or bad key with OpenAI's
    401 (the SDK raises ``AuthenticationError``); this returns the key's owner id. An override
    (``app.dependency_overrides[openai_caller]``) that raises ``ApiError(401, ...)`` or
    ``OpenAIError(401, ...)`` is answered in OpenAI's shape too.
    """
    return caller_of(request).owner


# -- starting ----------------------------------------------------------------------------------


def _check_prompt(state: GatewayState, body: ChatCompletionRequest) -> None:
    settings = state.settings
    try:
        check_prompt(
            body.messages,
            max_messages=settings.limits.max_messages,
            max_chars=settings.limits.max_prompt_chars,
        )
    except PromptLimitError as exc:
        # 400, as OpenAI answers a context that is too long (the SDK's BadRequestError).
        raise OpenAIError(400, exc.message, code=exc.code, param=exc.param) from None


async def _start(
    state: GatewayState,
    security: GatewaySecurity,
    route: ModelRoute,
    chat: ChatRequest,
    owner: str | None,
    policy: str | None,
) -> StreamInfo:
    if state.draining:
        raise OpenAIError(
            503,
            "The gateway is shutting down.",
            code="shutting_down",
            retryable=True,
            headers={"Retry-After": "1"},
        )
    # ShuttingDownError and StoreFullError are SsegateErrors: OpenAIRoute answers them (503);
    # the per-key quota's ApiError becomes OpenAI's 429.
    return await start_generation(state, security, route, chat, owner=owner, on_disconnect=policy)


# -- streaming ------------------------------------------------------------------------------


async def _chunk_stream(
    state: GatewayState, stream_id: str, head: list[StoredEvent], chunks: Chunks
) -> AsyncIterator[bytes]:
    for event in head:
        for item in chunks.translate(event):
            yield item
    if chunks.finished:
        return
    after = head[-1].id if head else 0
    try:
        # What piled up while the client read goes out in one write (see _streams._events).
        async with aclosing(state.store.follow_batches(stream_id, after)) as batches:
            async for batch in batches:
                out = [item for event in batch for item in chunks.translate(event)]
                if out:
                    yield b"".join(out)
    except StoreError as exc:  # gap, producer lost, deleted, store down
        yield chunks.error(OpenAIError.from_gateway(exc.to_dict()))
    if not chunks.finished:
        yield chunks.error(OpenAIError(502, "The stream ended early.", code="incomplete"))


class _CompletionStream(Response):
    """A streaming completion: holds the status until the first event after ``start`` (or
    ``_FIRST_EVENT_WAIT``), then streams chunks — or answers an early ``error`` event with its
    own HTTP status. Counted as one subscriber throughout, so ``on_disconnect`` sees it."""

    def __init__(
        self,
        state: GatewayState,
        security: GatewaySecurity,
        info: StreamInfo,
        model: str,
        include_usage: bool,
    ) -> None:
        super().__init__(status_code=200)
        self._state = state
        self._security = security
        self._info = info
        self._chunks = Chunks(f"chatcmpl-{info.id}", model, int(info.created), include_usage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, stream_id = self._state, self._info.id
        wait = first_event_wait(state)
        async with state.store.subscriber(stream_id):
            response: Response
            try:
                head = await first_events(state, stream_id, wait)
            except StoreError as exc:
                response = OpenAIError.from_gateway(exc.to_dict()).response(stream_id)
            else:
                if head and head[-1].event == "error":
                    response = OpenAIError.from_gateway(event_data(head[-1])).response(stream_id)
                else:
                    response = door_event_stream(
                        state,
                        self._security,
                        stream_id,
                        _chunk_stream(state, stream_id, head, self._chunks),
                        stream_headers(stream_id),
                    )
            await response(scope, receive, send)


# -- non-streaming --------------------------------------------------------------------------


async def _complete(
    state: GatewayState, info: StreamInfo, model: str, receive: Receive
) -> Response:
    """Follow the stream to its end and answer one ``chat.completion``.

    A client that leaves stops our subscription, so ``on_disconnect`` applies as for SSE.
    """
    result = Completion()
    try:
        failure = await follow_to_end(state, info.id, receive, result.add)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the access log says what happened
    if failure is not None:
        return OpenAIError.from_gateway(failure.to_dict()).response(info.id)
    if result.error is not None:
        return result.error.response(info.id)
    body = orjson.dumps(result.body(info, model))
    return Response(body, 200, stream_headers(info.id), media_type="application/json")


# -- routes ---------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

_COMPLETION = {
    "description": "A chat.completion, or with stream: true chat.completion.chunk events",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": SSE_EVENT},
    },
}


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    response_model=None,
    responses={200: _COMPLETION, **openai_errors(400, 401, 404, 409, 413, 429, 502, 503, 504)},
)
async def create_chat_completion(
    request: Request,
    body: Annotated[ChatCompletionRequest, Body()],
    owner: Annotated[str | None, Depends(openai_caller)],
) -> Response:
    """OpenAI's Chat Completions; ``stream: true`` answers ``chat.completion.chunk`` events.

    Every completion is a gateway stream: see ``x-ssegate-stream-id`` and ``/v1/streams/{id}``.
    """
    state = state_of(request)
    security = security_of(request)
    check_shape(body)
    _check_prompt(state, body)
    route = resolve_model(state, body.model)
    chat = chat_request(body, route)
    info = await _start(state, security, route, chat, owner, body.on_disconnect)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _CompletionStream(state, security, info, route.name, include_usage)
    return await _complete(state, info, route.name, request.receive)


def _model_object(route: ModelRoute, created: int) -> dict[str, Any]:
    return {"id": route.name, "object": "model", "created": created, "owned_by": route.owned_by}


@router.get("/models", summary="List models (OpenAI-compatible)", responses=openai_errors(401, 429))
async def list_models(
    request: Request, owner: Annotated[str | None, Depends(openai_caller)]
) -> dict[str, Any]:
    """The public models, the default first (in Anthropic's shape with ``anthropic-version``)."""
    models = state_of(request).models
    if "anthropic-version" in request.headers:
        return anthropic_models(list(models), models.created)
    return {"object": "list", "data": [_model_object(route, models.created) for route in models]}


@router.get(
    "/models/{model_id:path}",
    summary="Retrieve a model (OpenAI-compatible)",
    response_model=None,
    responses={200: {"description": "The model"}, **openai_errors(401, 404, 429)},
)
async def retrieve_model(
    request: Request, model_id: str, owner: Annotated[str | None, Depends(openai_caller)]
) -> dict[str, Any] | Response:
    """One public model, or 404 ``model_not_found`` (Anthropic's shapes with
    ``anthropic-version``)."""
    state = state_of(request)
    if "anthropic-version" in request.headers:
        try:
            route = state.models.resolve(model_id)
        except UnknownModelError:
            return AnthropicError(404, f"model: {model_id}").response()
        return anthropic_model(route, state.models.created)
    return _model_object(resolve_model(state, model_id), state.models.created)
