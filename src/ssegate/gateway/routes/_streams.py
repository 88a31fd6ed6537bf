"""The streams API: start, follow (resumable), status and cancel of detached generations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from ..._errors import StoreFullError, StreamNotFoundError
from ..._jobs import ShuttingDownError
from ..._response import EventSourceResponse
from ...codec import ServerSentEvent, encode
from ...providers import ChatRequest
from ...store import ProducerLostError, StreamGapError, StreamStatus
from .._errors import ApiError
from .._models import UnknownModelError
from .._state import GatewayState, state_of

__all__ = ["StreamRequest", "event_stream_response", "router"]

log = logging.getLogger("ssegate.streams")
router = APIRouter(prefix="/v1/streams", tags=["streams"])

_STREAM_ID_HEADER = "x-ssegate-stream-id"


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = Field(default=None)


class StreamRequest(BaseModel):
    """Body of ``POST /v1/streams``."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1, max_length=1000)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    on_disconnect: Literal["cancel", "continue"] | None = None


def _parse_last_event_id(header: str | None, query: str | None) -> int:
    raw = query if query is not None else header
    if raw is None or raw == "":
        return 0
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be a non-negative integer")
    return int(raw)


async def _events(state: GatewayState, stream_id: str, after: int) -> AsyncIterator[bytes]:
    """The stored events after ``after``, encoded once by the store; faults as ``error``."""
    store = state.store
    async with store.subscriber(stream_id):
        try:
            async with aclosing(store.follow(stream_id, after)) as events:
                async for event in events:
                    yield event.encoded
        except StreamGapError as exc:
            yield _error_event("gap", exc.message, retryable=False)
        except ProducerLostError as exc:
            yield _error_event("producer_lost", exc.message, retryable=True)
        except StreamNotFoundError:
            yield _error_event("not_found", "the stream is gone", retryable=False)


def _error_event(code: str, message: str, *, retryable: bool) -> bytes:
    # No id: the client's Last-Event-ID stays at the last event it really has.
    data = orjson.dumps({"code": code, "message": message, "retryable": retryable}).decode()
    return encode(ServerSentEvent(data=data, event="error"))


def event_stream_response(
    state: GatewayState, stream_id: str, after: int, *, status_code: int = 200
) -> EventSourceResponse:
    """The SSE response that follows ``stream_id`` after event ``after``."""
    settings = state.settings
    return EventSourceResponse(
        _events(state, stream_id, after),
        status_code=status_code,
        headers={_STREAM_ID_HEADER: stream_id},
        ping_interval=settings.heartbeat_interval or None,
        retry=settings.retry_ms,
        shutdown=state.shutdown,
    )


def _wants_event_stream(accept: str | None) -> bool:
    return accept is not None and "text/event-stream" in accept.lower()


async def start_stream(state: GatewayState, body: StreamRequest, owner: str | None) -> Any:
    """Validate the model and start a generation; the route and the OpenAI routes share it."""
    if state.draining:
        raise ApiError(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )
    try:
        route = state.models.resolve(body.model)
    except UnknownModelError:
        raise ApiError(404, "model_not_found", f"model {body.model!r} does not exist") from None
    request = ChatRequest(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        model=route.upstream_model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    settings = state.settings
    try:
        return await state.jobs.start(
            route.provider,
            request,
            model_label=route.name,
            owner=owner,
            on_disconnect=body.on_disconnect or settings.on_disconnect,
            grace=settings.disconnect_grace,
            max_duration=settings.max_stream_duration,
        )
    except ShuttingDownError:
        raise ApiError(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        ) from None
    except StoreFullError:
        raise ApiError(
            503, "store_full", "too many streams; try again later", headers={"Retry-After": "1"}
        ) from None


@router.post(
    "",
    status_code=201,
    summary="Start a generation",
    response_model=None,
    responses={201: {"description": "The stream was created"}},
)
async def create_stream(
    request: Request,
    body: Annotated[StreamRequest, Body()],
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Start a generation detached from this connection.

    With ``Accept: text/event-stream`` the response is the event stream itself (its first
    event, ``start``, carries the stream id); otherwise ``201`` with the stream's URLs.
    """
    state = state_of(request)
    info = await start_stream(state, body, None)
    if _wants_event_stream(accept):
        return event_stream_response(state, info.id, 0)
    events_url = f"/v1/streams/{info.id}/events"
    return JSONResponse(
        {
            "id": info.id,
            "object": "stream",
            "status": info.status.value,
            "model": info.model,
            "created": info.created,
            "events_url": events_url,
            "status_url": f"/v1/streams/{info.id}",
        },
        status_code=201,
        headers={"Location": f"/v1/streams/{info.id}", _STREAM_ID_HEADER: info.id},
    )


@router.get("/{stream_id}/events", summary="Follow a stream (SSE, resumable)", response_model=None)
async def stream_events(
    request: Request,
    stream_id: str,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """Events with id > ``Last-Event-ID`` (header, or ``?last_event_id=``), then live ones.

    ``204`` when the stream is finished and the client already has its last event.
    """
    state = state_of(request)
    after = _parse_last_event_id(last_event_id_header, last_event_id)
    info = await state.store.get(stream_id)
    if after > info.last_event_id:
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"Last-Event-ID {after} is beyond the stream's last event ({info.last_event_id})",
        )
    if info.status is not StreamStatus.RUNNING and after == info.last_event_id:
        return Response(status_code=204, headers={_STREAM_ID_HEADER: stream_id})
    return event_stream_response(state, stream_id, after)


@router.get("/{stream_id}", summary="Stream status")
async def stream_status(request: Request, stream_id: str) -> dict[str, Any]:
    """Status JSON: running / done / error / cancelled, counts, usage."""
    info = await state_of(request).store.get(stream_id)
    return info.to_dict()


@router.delete("/{stream_id}", summary="Stop a generation")
async def cancel_stream(request: Request, stream_id: str) -> JSONResponse:
    """Stop the generation: the upstream request is closed; subscribers get ``cancelled``.

    Answers with the status once the stream has ended (within a second), or ``202`` with
    ``cancel_requested`` if the producer (maybe another instance) has not confirmed yet.
    """
    state = state_of(request)
    info = await state.store.get(stream_id)
    if info.status is StreamStatus.RUNNING:
        await state.jobs.cancel(stream_id, "client")
        info = await _wait_finished(state, stream_id, info.last_event_id, 1.0)
    status = 200 if info.status is not StreamStatus.RUNNING else 202
    return JSONResponse(info.to_dict(), status_code=status)


async def _wait_finished(state: GatewayState, stream_id: str, after: int, limit: float) -> Any:
    import anyio

    with anyio.move_on_after(limit):
        try:
            async with aclosing(state.store.follow(stream_id, after)) as events:
                async for _ in events:
                    pass
        except (StreamGapError, ProducerLostError):
            pass
    return await state.store.get(stream_id)
