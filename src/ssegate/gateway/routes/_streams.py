"""The streams API: start, follow (resumable), status and cancel of detached generations.

With API keys on, a stream belongs to the key that started it: any other caller gets the same
404 as for a stream that does not exist. Starting one also returns a read token for it (see
``_auth.py``), accepted as ``?token=`` on its events and status URLs, for reading only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ..._jobs import ShuttingDownError
from ...providers import ChatRequest, Provider
from ...store import (
    StoreFullError,
    StreamInfo,
    StreamNotFoundError,
    StreamStatus,
)
from .._auth import Caller, GatewaySecurity, caller_of, security_of
from .._errors import ApiError
from .._limits import PromptLimitError, check_prompt
from .._models import UnknownModelError
from .._state import GatewayState, state_of
from ._json_values import WHOLE, JsonValue, JsonValueError, check_json_values
from ._responses import EventStream, errors, event_stream
from ._stream_body import (
    STREAM_ID_HEADER,
    event_stream_response,
    refuse_another_subscriber,
    wait_finished,
)

__all__ = [
    "StreamRequest",
    "StreamsRoute",
    "json_body",
    "router",
    "start_stream",
]

log = logging.getLogger("ssegate.streams")


class StreamsRoute(APIRoute):
    """A route that says what is wrong with a body FastAPI could not decode (bytes that are
    not UTF-8, -16 or -32), where FastAPI says only "There was an error parsing the body"."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def streams_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except JsonValueError as exc:
                raise ApiError(
                    400, "invalid_value", exc.message, extra={"param": exc.param}
                ) from None
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
                    raise ApiError(
                        400, "invalid_json", "the request body is not valid JSON text (UTF-8)"
                    ) from None
                if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
                    raise ApiError(
                        400, "invalid_json", "the request body nests too deeply"
                    ) from None
                raise

        return streams_handler


router = APIRouter(prefix="/v1/streams", tags=["streams"], route_class=StreamsRoute)

_READ_TOKEN_HEADER = "x-ssegate-read-token"


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, JsonValue]] | None = Field(default=None)


class StreamRequest(BaseModel):
    """Body of ``POST /v1/streams``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # How many, and how long: --max-messages and --max-prompt-chars (422 past them).
    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000), WHOLE] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    on_disconnect: Literal["cancel", "continue"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        check_json_values(data)  # JsonValueError (400) for what no upstream can take
        return data


class CreatedStream(BaseModel):
    """The ``201`` body of ``POST /v1/streams``."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["stream"]
    status: str
    model: str
    created: float
    events_url: str
    status_url: str
    token: str | None = None
    token_expires_at: int | None = None


def _parse_last_event_id(header: str | None, query: str | None) -> int:
    """Where the client is: the ``Last-Event-ID`` header when it is sent, else the query.

    The query only says where a first connection starts. ``EventSource`` reconnects to the
    same URL, query included, with the header set to the last id it got: preferring the
    query would replay the same events forever.
    """
    raw = (header if header else query or "").strip()
    if not raw:
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be a non-negative integer")
    return int(raw)


async def json_body(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Refuse a body not declared as JSON (FastAPI would not parse it, and say something less
    helpful). ``async``, though it awaits nothing: FastAPI runs a plain ``def`` dependency in
    a worker thread, a thread hand-off per request."""
    media = (content_type or "").partition(";")[0].strip().lower()
    json_like = media.startswith("application/") and media.endswith("+json")
    if media == "application/json" or json_like:
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"the body must be JSON (Content-Type: application/json), not {media or 'empty'!r}",
    )


def _wants_event_stream(accept: str | None) -> bool:
    return accept is not None and "text/event-stream" in accept.lower()


async def start_stream(
    state: GatewayState,
    security: GatewaySecurity,
    body: StreamRequest,
    owner: str | None,
    *,
    tools: list[dict[str, Any]] | None = None,
    start_fields: dict[str, Any] | None = None,
) -> StreamInfo:
    """Check the limits and the model, and start a generation owned by ``owner``.

    ``tools`` (OpenAI function tools) go to the provider; ``start_fields`` are added to the
    stream's ``start`` event (another front door's ids).
    """
    if state.draining:
        raise ApiError(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )
    settings = state.settings
    try:
        check_prompt(
            body.messages,
            max_messages=settings.limits.max_messages,
            max_chars=settings.limits.max_prompt_chars,
        )
    except PromptLimitError as exc:
        raise ApiError(422, exc.code, exc.message) from None
    try:
        route = state.models.resolve(body.model)
    except UnknownModelError:
        raise ApiError(404, "model_not_found", f"model {body.model!r} does not exist") from None
    request = ChatRequest(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        model=route.upstream_model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        tools=tools,
    )
    provider: Provider = route.provider
    content_log = security.content_log
    logged = content_log.wrap(provider) if content_log is not None else None
    try:
        with security.quota.reserve(owner):
            info = await state.jobs.start(
                logged or provider,
                request,
                model_label=route.name,
                start_extra=_start_extra(security, start_fields or {}),
                owner=owner,
                on_disconnect=body.on_disconnect or settings.streams.on_disconnect,
                grace=settings.streams.disconnect_grace,
                max_duration=settings.streams.max_stream_duration,
            )
    except ShuttingDownError:
        raise ApiError(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        ) from None
    except StoreFullError:
        raise ApiError(
            503, "store_full", "too many streams; try again later", headers={"Retry-After": "1"}
        ) from None
    if content_log is not None and logged is not None:
        # Before the job's task first runs (start() only scheduled it): its answer line
        # carries the id.
        logged.stream_id = info.id
        content_log.prompt(info.id, owner, request.messages)
    return info


def _start_extra(
    security: GatewaySecurity, fields: dict[str, Any]
) -> Callable[[str], dict[str, Any]] | None:
    """The ``start`` event carries the stream's read token (when keys are on), so a page that
    started with ``fetch()`` can resume with ``EventSource`` after a reload; and ``fields``."""
    tokens = security.tokens
    if tokens is None and not fields:
        return None

    def extra(stream_id: str) -> dict[str, Any]:
        if tokens is None:
            return dict(fields)
        token, expires = tokens.issue(stream_id)
        return {**fields, "token": token, "token_expires_at": expires}

    return extra


_STREAM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


async def _readable(request: Request, stream_id: str, *, cancel: bool = False) -> StreamInfo:
    """The stream's info if the caller may read it (or cancel it, with ``cancel``); a stream
    of another key is ``StreamNotFoundError``, exactly as one that does not exist."""
    if not _STREAM_ID.fullmatch(stream_id):
        raise StreamNotFoundError(stream_id)  # not a stream id: the store is not asked
    caller: Caller = caller_of(request)
    info = await state_of(request).store.get(stream_id)
    allowed = caller.may_cancel(info) if cancel else caller.may_read(info)
    if not allowed:
        raise StreamNotFoundError(stream_id)
    return info


@router.post(
    "",
    status_code=201,
    summary="Start a generation",
    response_model=None,
    responses={
        201: {"description": "The stream was created", "model": CreatedStream},
        200: event_stream("With Accept: text/event-stream: the stream itself"),
        **errors(400, 401, 404, 413, 415, 422, 429, 503),
    },
    dependencies=[Depends(json_body)],
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
    security = security_of(request)
    info = await start_stream(state, security, body, caller_of(request).owner)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    query = ""
    if security.tokens is not None:
        token, expires = security.tokens.issue(info.id)
        headers[_READ_TOKEN_HEADER] = token
        extra = {"token": token, "token_expires_at": expires}
        query = f"?token={token}"  # URL-safe as it is
    if _wants_event_stream(accept):
        return event_stream_response(state, security, info.id, 0, headers=headers)
    return JSONResponse(
        {
            "id": info.id,
            "object": "stream",
            "status": info.status.value,
            "model": info.model,
            "created": info.created,
            "events_url": f"/v1/streams/{info.id}/events{query}",
            "status_url": f"/v1/streams/{info.id}{query}",
            **extra,
        },
        status_code=201,
        headers={"Location": f"/v1/streams/{info.id}", STREAM_ID_HEADER: info.id, **headers},
    )


# What _parse_last_event_id accepts, for the schema (the route checks it with its own message).
_EVENT_ID: dict[str, Any] = {"type": "string", "pattern": r"^\s*[0-9]{0,18}\s*$"}


@router.get(
    "/{stream_id}/events",
    summary="Follow a stream (SSE, resumable)",
    response_model=None,
    response_class=EventStream,
    responses={
        204: {"description": "The stream has ended and the client has its last event"},
        **errors(400, 401, 404, 409, 429, 503),
    },
)
async def stream_events(
    request: Request,
    stream_id: str,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", json_schema_extra=_EVENT_ID)
    ] = None,
    last_event_id: Annotated[str | None, Query(max_length=32, json_schema_extra=_EVENT_ID)] = None,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Events with id > ``Last-Event-ID`` (the header, else ``?last_event_id=``), then live ones.

    ``204`` when the stream is finished and the client already has its last event. With API
    keys on, send the key that started the stream, or the stream's read ``token``.
    """
    state = state_of(request)
    after = _parse_last_event_id(last_event_id_header, last_event_id)
    info = await _readable(request, stream_id)
    if after > info.last_event_id:
        raise ApiError(
            409,  # the id is well-formed; the stream has not got that far
            "invalid_last_event_id",
            f"Last-Event-ID {after} is beyond the stream's last event ({info.last_event_id})",
        )
    if info.status is not StreamStatus.RUNNING and after == info.last_event_id:
        return Response(status_code=204, headers={STREAM_ID_HEADER: stream_id})
    refuse_another_subscriber(state, info)
    return event_stream_response(state, security_of(request), stream_id, after)


@router.get("/{stream_id}", summary="Stream status", responses=errors(400, 401, 404, 503))
async def stream_status(
    request: Request,
    stream_id: str,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Status JSON: running / done / error / cancelled, counts, usage."""
    info = await _readable(request, stream_id)
    return info.to_dict()


@router.delete(
    "/{stream_id}",
    summary="Stop a generation",
    responses={
        202: {"description": "Cancel requested; the producer has not confirmed yet"},
        **errors(401, 404, 503),
    },
)
async def cancel_stream(request: Request, stream_id: str) -> JSONResponse:
    """Stop the generation: the upstream request is closed; subscribers get ``cancelled``.

    Answers with the status once the stream has ended (within a second), or ``202`` with
    ``cancel_requested`` if the producer (maybe another instance) has not confirmed yet.
    """
    state = state_of(request)
    info = await _readable(request, stream_id, cancel=True)
    if info.status is StreamStatus.RUNNING:
        await state.jobs.cancel(stream_id, "client")
        info = await wait_finished(state, stream_id, info.last_event_id, 1.0)
    status = 200 if info.status is not StreamStatus.RUNNING else 202
    return JSONResponse(info.to_dict(), status_code=status)
