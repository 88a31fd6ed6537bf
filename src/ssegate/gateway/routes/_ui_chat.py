"""The Vercel AI SDK's ``useChat`` talking to ssegate directly (its default transport,
``DefaultChatTransport``), resumable by chat id. Under ``--ui-chat-path`` (``/v1/ui/chat``):

* ``POST {path}`` takes what the transport sends, ``{id, messages, trigger, messageId}`` plus
  ssegate's own fields set with the transport's ``body`` option (``model``, ``system``,
  ``tools``, ``max_tokens``, ``temperature``, ``on_disconnect``), starts one gateway stream and
  answers with the UI message stream (header ``x-vercel-ai-ui-message-stream: v1``; the parts
  are in ``_ui_chat_parts``). The stream becomes the chat's active stream.
* ``GET {path}/{chatId}/stream`` (the transport's reconnect URL): ``204`` when the chat has no
  running stream, else that stream replayed from its start and followed live, on any
  instance sharing the store.
* ``DELETE {path}/{chatId}/stream``: stop the chat's generation. Aborting the fetch
  (``useChat``'s ``stop()``) only disconnects, as a reload does, so a page's Stop button calls
  this too; ``?stream_id=`` ignores a stop meant for an older stream (``409``).

The chat id → stream mapping is a store alias (:meth:`~ssegate.store.Store.set_alias`): it
ends with the stream and belongs to the key that started it (another key gets ``404`` on
``GET``/``DELETE`` and ``409`` when it posts to that chat id). A new message in a chat stops
the generation it replaces. Every stream is a gateway stream: ``x-ssegate-stream-id`` names it
(also the assistant message's id, unless the request continues an assistant message), and
``/v1/streams/{id}`` works on it. Errors are the gateway's JSON errors.

Where this departs from the AI SDK's own server helpers: upstream faults arrive in the stream
as an ``error`` part (status 200), never as an HTTP error; a stream is replayed from its start
on resume, which the default transport expects (``resumeStreamIsReplay``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from ...store import StoreError, StreamInfo, StreamNotFoundError, StreamStatus
from .._auth import GatewaySecurity, caller_of, security_of
from .._errors import ApiError
from .._event_streams import TrackedEventSourceResponse
from .._models import UnknownModelError
from .._state import GatewayState, state_of
from ._openai_schema import Tool
from ._responses import errors
from ._stream_body import STREAM_ID_HEADER, refuse_another_subscriber, wait_finished
from ._streams import StreamRequest, StreamsRoute, json_body, start_stream
from ._ui_chat_messages import MessageError, provider_messages
from ._ui_chat_parts import UIParts

__all__ = ["UIChatRequest", "UIMessage", "ui_chat_router"]

#: A chat id: what ``useChat`` makes (16 letters and digits), a UUID, or the like; one path
#: segment that needs no escaping and does not start with "." (so never "." or "..").
_CHAT_ID = re.compile(r"[A-Za-z0-9_~:-][A-Za-z0-9_.~:-]{0,199}")
_UI_STREAM_HEADER = "x-vercel-ai-ui-message-stream"
_CHAT_ID_PATTERN = r"^[A-Za-z0-9_~:-][A-Za-z0-9_.~:-]{0,199}$"
#: The chat id in a path, its form in the schema (the handlers check it too).
ChatIdPath = Annotated[str, Path(min_length=1, max_length=200, pattern=_CHAT_ID_PATTERN)]


class UIPart(BaseModel):
    """One part of a ``UIMessage``: its ``type``; the rest is checked when it is converted
    (parts of a type the upstream never sees, such as reasoning or data, are not sent back)."""

    model_config = ConfigDict(extra="allow")

    type: str


class UIMessage(BaseModel):
    """One ``UIMessage`` of the ``ai`` package."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=200)
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]
    metadata: Any = None


class UIChatRequest(BaseModel):
    """Body of ``POST /v1/ui/chat``: ``DefaultChatTransport``'s fields, then ssegate's own."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        description="The chat id (useChat's `id`).",
        min_length=1,
        max_length=200,
        pattern=_CHAT_ID_PATTERN,
    )
    messages: list[UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = Field(default=None, max_length=200)  # the SDK spells it so
    model: str | None = Field(default=None, min_length=1, max_length=200)
    system: str | None = None
    tools: list[Tool] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    on_disconnect: Literal["cancel", "continue"] | None = None


def _alias(chat_id: str) -> str:
    return f"ui-chat:{chat_id}"


def _checked_chat_id(chat_id: str) -> str:
    if not _CHAT_ID.fullmatch(chat_id):
        raise ApiError(
            400,
            "invalid_chat_id",
            "a chat id is 1 to 200 letters, digits and '_', '-', '.', '~', ':' "
            "(not starting with '.')",
        )
    return chat_id


async def _chat_stream(state: GatewayState, chat_id: str) -> StreamInfo | None:
    """The chat's current stream (running or not), if the store still keeps one."""
    stream_id = await state.store.get_alias(_alias(chat_id))
    if stream_id is None:
        return None
    try:
        return await state.store.get(stream_id)
    except StreamNotFoundError:
        return None


async def _owned_chat_stream(request: Request, chat_id: str, *, cancel: bool) -> StreamInfo | None:
    """:func:`_chat_stream`, ``404`` if it belongs to another key (as on ``/v1/streams``)."""
    info = await _chat_stream(state_of(request), _checked_chat_id(chat_id))
    caller = caller_of(request)
    if info is not None and not (caller.may_cancel(info) if cancel else caller.may_read(info)):
        raise ApiError(404, "chat_not_found", "no such chat")
    return info


# -- the stream ------------------------------------------------------------------------------


async def _ui_events(state: GatewayState, stream_id: str) -> AsyncIterator[bytes]:
    """The stream from its first event, as UI message stream parts; faults as an ``error``."""
    parts = UIParts()
    store = state.store
    try:
        async with store.subscriber(stream_id):
            # What piled up while the client read goes out in one write.
            async with aclosing(store.follow_batches(stream_id, 0)) as batches:
                async for batch in batches:
                    out = [part for event in batch for part in parts.translate(event)]
                    if out:
                        yield b"".join(out)
    except StoreError as exc:  # gone, gap, producer lost, store down: say so and end
        yield b"".join(parts.error(exc.message, exc.code))
        return
    if not parts.finished:
        yield b"".join(parts.error("the stream ended early", "incomplete"))


def _ui_stream_response(
    state: GatewayState, security: GatewaySecurity, stream_id: str
) -> TrackedEventSourceResponse:
    settings = state.settings.streams
    return TrackedEventSourceResponse(
        _ui_events(state, stream_id),
        headers={_UI_STREAM_HEADER: "v1", STREAM_ID_HEADER: stream_id},
        ping_interval=settings.heartbeat_interval or None,
        retry=None,  # no EventSource here: the transport reconnects through GET …/stream
        send_timeout=settings.send_timeout or None,
        shutdown=state.shutdown,
        stream_id=stream_id,
        tracker=security.event_streams,
    )


# -- routes ----------------------------------------------------------------------------------


def _stream_request(body: UIChatRequest, state: GatewayState) -> StreamRequest:
    """The generation's request: the UI messages as provider messages."""
    try:
        files = state.models.resolve(body.model).kind == "openai"
    except UnknownModelError:
        files = False  # start_stream answers 404 for the model
    try:
        messages = provider_messages(
            [m.model_dump() for m in body.messages], files=files, system=body.system
        )
        return StreamRequest.model_validate(
            {
                "messages": messages,
                "model": body.model,
                "max_tokens": body.max_tokens,
                "temperature": body.temperature,
                "on_disconnect": body.on_disconnect,
            }
        )
    except MessageError as exc:
        raise ApiError(422, "invalid_message", exc.message, extra={"param": exc.param}) from None
    except ValidationError as exc:
        raise ApiError(422, "invalid_message", f"messages: {exc.errors()[0]['msg']}") from None


async def send_messages(request: Request, body: Annotated[UIChatRequest, Body()]) -> Response:
    """Start a generation for the chat and stream it as UI message stream parts."""
    state, security, caller = state_of(request), security_of(request), caller_of(request)
    chat_id = _checked_chat_id(body.id)
    current = await _chat_stream(state, chat_id)
    if current is not None and not caller.may_cancel(current):
        raise ApiError(409, "chat_id_taken", "this chat id is in use by another API key")
    last = body.messages[-1]
    fields = {"ui_chat_id": chat_id}
    if last.role == "assistant":  # a continuation (tool results): the same message grows
        fields["ui_message_id"] = last.id
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    info = await start_stream(
        state,
        security,
        _stream_request(body, state),
        caller.owner,
        tools=tools,
        start_fields=fields,
    )
    settings = state.settings
    ttl = (
        settings.streams.max_stream_duration
        + settings.store.stream_ttl
        + (settings.store.lease_ttl or 15.0)
    )
    replaced = await state.store.set_alias(_alias(chat_id), info.id, ttl=ttl)
    if current is not None and replaced == current.id:
        # The chat moved on: stop its old answer if it still runs (only ever the caller's).
        with contextlib.suppress(StreamNotFoundError):
            await state.jobs.cancel(replaced, "client")
    return _ui_stream_response(state, security, info.id)


async def resume_stream(request: Request, chat_id: ChatIdPath) -> Response:
    """The chat's running stream from its start, then live; ``204`` when none is running."""
    state = state_of(request)
    info = await _owned_chat_stream(request, chat_id, cancel=False)
    if info is None or info.status is not StreamStatus.RUNNING:
        return Response(status_code=204)
    refuse_another_subscriber(state, info)
    return _ui_stream_response(state, security_of(request), info.id)


async def stop_stream(
    request: Request,
    chat_id: ChatIdPath,
    stream_id: Annotated[str | None, Query(max_length=200)] = None,
) -> JSONResponse:
    """Stop the chat's generation (the upstream request is closed); its status as JSON.

    ``202`` if the producer (maybe another instance) has not confirmed within a second.
    """
    state = state_of(request)
    info = await _owned_chat_stream(request, chat_id, cancel=True)
    if info is None:
        raise ApiError(404, "chat_not_found", "this chat has no stream")
    if stream_id is not None and stream_id != info.id:
        raise ApiError(409, "not_active", f"the chat's stream is {info.id}, not {stream_id}")
    if info.status is StreamStatus.RUNNING:
        await state.jobs.cancel(info.id, "client")
        info = await wait_finished(state, info.id, info.last_event_id, 1.0)
    status = 200 if info.status is not StreamStatus.RUNNING else 202
    return JSONResponse(info.to_dict(), status_code=status, headers={STREAM_ID_HEADER: info.id})


_UI_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The UI message stream (x-vercel-ai-ui-message-stream: v1)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def ui_chat_router(path: str = "/v1/ui/chat") -> APIRouter:
    """The ``useChat`` routes under ``path``."""
    router = APIRouter(prefix=path, tags=["ai-sdk"], route_class=StreamsRoute)
    router.add_api_route(
        "",
        send_messages,
        methods=["POST"],
        summary="Send useChat's messages (Vercel AI SDK UI message stream)",
        response_model=None,
        responses={**_UI_STREAM, **errors(400, 401, 404, 409, 413, 415, 422, 429, 503)},
        dependencies=[Depends(json_body)],
    )
    router.add_api_route(
        "/{chat_id}/stream",
        resume_stream,
        methods=["GET"],
        summary="Resume the chat's running stream (useChat resume: true)",
        response_model=None,
        responses={
            **_UI_STREAM,
            204: {"description": "The chat has no running stream"},
            **errors(400, 401, 404, 429, 503),
        },
    )
    router.add_api_route(
        "/{chat_id}/stream",
        stop_stream,
        methods=["DELETE"],
        summary="Stop the chat's generation",
        response_model=None,
        responses={
            202: {"description": "Cancel requested; the producer has not confirmed yet"},
            **errors(400, 401, 404, 409, 429, 503),
        },
    )
    return router
