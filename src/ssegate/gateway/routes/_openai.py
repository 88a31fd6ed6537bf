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
  was not, so an upstream that refuses *our* key is a 502, not a 401 (see ``_STATUS_BY_CODE``).
  Errors carry ``x-should-retry`` (the official SDKs obey it) from the fault's ``retryable``.
* ``reasoning_content`` carries reasoning text (as DeepSeek, Qwen and vLLM do).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..._errors import SsegateError, StoreError
from ..._response import EventStreamOptions
from ...codec import ServerSentEvent, encode
from ...providers import ChatRequest, Provider
from ...store import StoredEvent, StreamInfo
from .._auth import GatewaySecurity, caller_of, security_of
from .._errors import ApiError
from .._limits import PromptLimitError, TrackedEventSourceResponse, check_prompt
from .._models import ModelRoute, UnknownModelError
from .._state import GatewayState, state_of

__all__ = ["ChatCompletionRequest", "OpenAIError", "OpenAIRoute", "openai_caller", "router"]

log = logging.getLogger("ssegate.openai")

_STREAM_ID_HEADER = "x-ssegate-stream-id"


def _stream_headers(stream_id: str) -> dict[str, str]:
    # x-request-id too: the SDK exposes it as ``_request_id`` on every result.
    return {_STREAM_ID_HEADER: stream_id, "x-request-id": stream_id}


_FIRST_EVENT_WAIT = 10.0

# Gateway error codes → HTTP status. An upstream fault is a 502 unless a closer status says
# more: our caller's request was valid, the upstream failed (a 401 here would make the SDK raise
# AuthenticationError for a key the caller never sent). The upstream refusing the request
# itself (400/422: too long, bad tool schema) is the caller's to fix, so it stays a 400.
_STATUS_BY_CODE = {
    "upstream_bad_request": 400,
    "upstream_rate_limited": 429,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "upstream_connect_timeout": 504,
    "timeout": 504,
    "producer_lost": 503,
    "store_unavailable": 503,
    "store_full": 503,
    "shutting_down": 503,
}


# -- errors ---------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retryable: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _error_type(status)
        self.retryable = retryable
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(self, stream_id: str | None = None) -> Response:
        """The JSON response, with ``x-should-retry`` when retryability is known."""
        headers = dict(self.headers)
        if self.retryable is not None:
            headers["x-should-retry"] = "true" if self.retryable else "false"
        if stream_id is not None:
            headers.update(_stream_headers(stream_id))
        body = orjson.dumps({"error": self.to_dict()})
        return Response(body, self.status, headers, media_type="application/json")

    @classmethod
    def from_gateway(cls, error: dict[str, Any]) -> OpenAIError:
        """The error for a gateway error payload ``{"code", "message", "retryable"}``."""
        code = str(error.get("code") or "internal")
        status = _STATUS_BY_CODE.get(code, 502 if code.startswith("upstream_") else 500)
        retryable = bool(error.get("retryable"))
        headers = {"Retry-After": "1"} if status == 503 and retryable else None
        message = str(error.get("message") or code)
        return cls(status, message, code=code, retryable=retryable, headers=headers)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def _param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        message = "We could not parse the JSON body of your request: it is not valid JSON."
        return OpenAIError(400, message, code="invalid_json")
    parts = [f"{_param(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    first = errors[0] if errors else {}
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing":
        message = "The request body must be a JSON object (Content-Type: application/json)."
        return OpenAIError(400, message, code="invalid_value")
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return OpenAIError(
        400, "; ".join(parts) or "invalid request", code=code, param=_param(first.get("loc", ()))
    )


class OpenAIRoute(APIRoute):
    """A route whose every error is answered in OpenAI's shape (the SDK maps the status)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return _validation_error(exc).response()
            except ApiError as exc:
                return OpenAIError(
                    exc.status, exc.message, code=exc.code, headers=exc.headers
                ).response()
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
                    # Bytes FastAPI could not decode (not UTF-8/16/32): say so.
                    message = "We could not parse the JSON body of your request: it is not UTF-8."
                    return OpenAIError(400, message, code="invalid_json").response()
                message = exc.detail if isinstance(exc.detail, str) else "request failed"
                return OpenAIError(exc.status_code, message, headers=exc.headers).response()
            except SsegateError as exc:
                log.warning("request failed: %s (%s)", exc.code, exc.message)
                return OpenAIError.from_gateway(exc.to_dict()).response()
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return OpenAIError(500, "internal server error", code="internal").response()

        return openai_handler


async def openai_caller(request: Request) -> str | None:
    """Who is calling: the owner recorded on the streams they start (``None`` without auth).

    The gateway's ``AuthMiddleware`` has already answered a missing or bad key with OpenAI's
    401 (the SDK raises ``AuthenticationError``); this returns the key's owner id. An override
    (``app.dependency_overrides[openai_caller]``) that raises ``ApiError(401, ...)`` or
    ``OpenAIError(401, ...)`` is answered in OpenAI's shape too.
    """
    return caller_of(request).owner


# -- the request ----------------------------------------------------------------------------


class ChatMessage(BaseModel):
    """One message, as OpenAI defines it (extra fields pass through to the upstream)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    """A function tool's definition."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """A tool the model may call (only function tools)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds the final usage chunk."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``; unknown fields are kept (see the module doc)."""

    model_config = ConfigDict(extra="allow")

    # How many, and how long: --max-messages and --max-prompt-chars (400 past them).
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=512)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=512)
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = Field(default=None, max_length=32)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    #: ssegate's own: what a dropped connection does (default: the gateway's policy).
    on_disconnect: Literal["cancel", "continue"] | None = None


# Fields handled here, never forwarded as they are.
_HANDLED = frozenset(
    {
        "messages", "model", "stream", "stream_options", "max_tokens", "temperature", "tools",
        "n", "logprobs", "top_logprobs", "modalities", "audio", "functions", "function_call",
        "on_disconnect", "store", "metadata", "service_tier",
    }
)  # fmt: skip


def _refuse_unsupported(body: ChatCompletionRequest, route: ModelRoute) -> None:
    if body.n not in (None, 1):
        raise OpenAIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
    if body.logprobs or body.top_logprobs:
        param = "logprobs" if body.logprobs else "top_logprobs"
        raise OpenAIError(
            400, "logprobs are not supported.", param=param, code="unsupported_parameter"
        )
    if body.audio is not None or "audio" in (body.modalities or ()):
        param = "audio" if body.audio is not None else "modalities"
        raise OpenAIError(
            400, "Audio output is not supported.", param=param, code="unsupported_parameter"
        )
    if body.functions is not None or body.function_call is not None:
        param = "functions" if body.functions is not None else "function_call"
        message = "functions and function_call are deprecated and not supported: use tools."
        raise OpenAIError(400, message, param=param, code="unsupported_parameter")
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema" and not fmt.json_schema:
        raise OpenAIError(
            400,
            "json_schema is required with type json_schema.",
            param="response_format.json_schema",
        )
    if fmt is not None and fmt.type != "text" and route.kind == "anthropic":
        message = f"response_format {fmt.type} is not supported by model {route.name!r}."
        raise OpenAIError(400, message, param="response_format", code="unsupported_value")


def _chat_request(body: ChatCompletionRequest, route: ModelRoute) -> ChatRequest:
    """The provider request for ``body``: fields mapped onto what ``route``'s upstream speaks."""
    _refuse_unsupported(body, route)
    given = body.model_dump(exclude_none=True)
    limit = body.max_completion_tokens or body.max_tokens
    max_tokens = body.max_tokens
    extra: dict[str, Any] = {}
    if route.kind == "openai":
        extra = {k: v for k, v in given.items() if k not in _HANDLED}
    elif route.kind == "anthropic":
        max_tokens = limit
        extra = _anthropic_extra(body, given)
    elif route.kind == "ollama":
        max_tokens = limit
        extra = _ollama_extra(body, given, limit)
    return ChatRequest(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        model=route.upstream_model,
        max_tokens=max_tokens,
        temperature=body.temperature,
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        extra=extra,
    )


def _stops(stop: str | list[str] | None) -> list[str] | None:
    return [stop] if isinstance(stop, str) else (stop or None)


def _anthropic_extra(body: ChatCompletionRequest, given: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if body.top_p is not None:
        extra["top_p"] = body.top_p
    if isinstance(given.get("top_k"), int):
        extra["top_k"] = given["top_k"]
    if stops := _stops(body.stop):
        extra["stop_sequences"] = stops
    choice: dict[str, Any] | None = None
    if isinstance(body.tool_choice, str):
        choice = {"type": {"required": "any"}.get(body.tool_choice, body.tool_choice)}
    elif isinstance(body.tool_choice, dict) and isinstance(body.tool_choice.get("function"), dict):
        choice = {"type": "tool", "name": body.tool_choice["function"].get("name", "")}
    if body.parallel_tool_calls is False and body.tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and body.tools:
        extra["tool_choice"] = choice
    if body.user:
        extra["metadata"] = {"user_id": body.user}
    return extra


def _ollama_extra(
    body: ChatCompletionRequest, given: dict[str, Any], limit: int | None
) -> dict[str, Any]:
    # Ollama's build_body replaces "options" wholesale with ours: repeat its two fields.
    options: dict[str, Any] = {"num_predict": limit, "temperature": body.temperature}
    for name in ("top_p", "seed", "presence_penalty", "frequency_penalty", "top_k"):
        options[name] = given.get(name)
    options["stop"] = _stops(body.stop)
    extra: dict[str, Any] = {}
    if options := {k: v for k, v in options.items() if v is not None}:
        extra["options"] = options
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        extra["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema:
        extra["format"] = fmt.json_schema.get("schema") or {"type": "object"}
    return extra


# -- starting ----------------------------------------------------------------------------------


def _resolve(state: GatewayState, name: str | None) -> ModelRoute:
    try:
        return state.models.resolve(name)
    except UnknownModelError:
        message = f"The model `{name}` does not exist or you do not have access to it."
        raise OpenAIError(404, message, param="model", code="model_not_found") from None


def _check_prompt(state: GatewayState, body: ChatCompletionRequest) -> None:
    settings = state.settings
    try:
        check_prompt(
            body.messages, max_messages=settings.max_messages, max_chars=settings.max_prompt_chars
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
    settings = state.settings
    provider: Provider = route.provider
    content_log = security.content_log
    logged = content_log.wrap(provider) if content_log is not None else None
    # ShuttingDownError and StoreFullError are SsegateErrors: OpenAIRoute answers them (503);
    # the per-key quota's ApiError becomes OpenAI's 429.
    with security.quota.reserve(owner):
        info = await state.jobs.start(
            logged or provider,
            chat,
            model_label=route.name,
            owner=owner,
            on_disconnect="continue"
            if (policy or settings.on_disconnect) == "continue"
            else "cancel",
            grace=settings.disconnect_grace,
            max_duration=settings.max_stream_duration,
        )
    if content_log is not None and logged is not None:
        logged.stream_id = info.id  # before the job's task first runs
        content_log.prompt(info.id, owner, chat.messages)
    return info


# -- gateway events → OpenAI chunks ---------------------------------------------------------


def _data(event: StoredEvent) -> dict[str, Any]:
    data = orjson.loads(event.data)
    return data if isinstance(data, dict) else {}


def _tool_call(data: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"index": data.get("index", 0)}
    function: dict[str, Any] = {}
    if data.get("id") is not None:
        call["id"] = data["id"]
        call["type"] = "function"
    if data.get("name") is not None:
        function["name"] = data["name"]
    function["arguments"] = data.get("arguments", "")
    call["function"] = function
    return call


def _cancelled_error(data: dict[str, Any]) -> OpenAIError:
    cause = data.get("cause") or "client"
    message = f"The generation was cancelled ({cause})."
    retryable = cause == "shutdown"
    return OpenAIError(503 if retryable else 409, message, code="cancelled", retryable=retryable)


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


_DONE = encode(ServerSentEvent(data="[DONE]"))


class _Chunks:
    """Stored gateway events → ``chat.completion.chunk`` SSE events (bytes)."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        self._head = head[:-1]
        # Every chunk is this prefix + delta + suffix: built once, not per token.
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._usage_null = b',"usage":null' if include_usage else b""
        self._include_usage = include_usage
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        tail = b',"logprobs":null,"finish_reason":' + orjson.dumps(finish) + b"}]"
        payload = self._prefix + orjson.dumps(delta) + tail + self._usage_null + b"}"
        return encode(ServerSentEvent(data=payload.decode()))

    def error(self, error: OpenAIError) -> bytes:
        """The in-stream error object that ends the stream."""
        self.finished = True
        return encode(ServerSentEvent(data=orjson.dumps({"error": error.to_dict()}).decode()))

    def translate(self, event: StoredEvent) -> list[bytes]:
        """The SSE bytes for one stored event (none for ``usage``, held for the end)."""
        kind = event.event
        if kind == "delta":
            return [self._chunk({"content": _data(event).get("text", "")})]
        if kind == "reasoning":
            return [self._chunk({"reasoning_content": _data(event).get("text", "")})]
        if kind == "tool_call":
            return [self._chunk({"tool_calls": [_tool_call(_data(event))]})]
        if kind == "start":
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "usage":
            self._usage = _data(event)
            return []
        if kind == "done":
            self.finished = True
            out = [self._chunk({}, str(_data(event).get("finish_reason") or "stop"))]
            if self._include_usage and self._usage is not None:
                usage = orjson.dumps(_usage(self._usage))
                payload = self._head + b',"choices":[],"usage":' + usage + b"}"
                out.append(encode(ServerSentEvent(data=payload.decode())))
            out.append(_DONE)
            return out
        if kind == "error":
            return [self.error(OpenAIError.from_gateway(_data(event)))]
        if kind == "cancelled":
            return [self.error(_cancelled_error(_data(event)))]
        return []  # an event type this version does not know


async def _first_events(state: GatewayState, stream_id: str, wait: float) -> list[StoredEvent]:
    """The events up to the first one after ``start``, waiting at most ``wait`` seconds.

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


async def _chunk_stream(
    state: GatewayState, stream_id: str, head: list[StoredEvent], chunks: _Chunks
) -> AsyncIterator[bytes]:
    for event in head:
        for item in chunks.translate(event):
            yield item
    if chunks.finished:
        return
    try:
        async with aclosing(state.store.follow(stream_id, head[-1].id if head else 0)) as events:
            async for event in events:
                for item in chunks.translate(event):
                    yield item
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
        self._chunks = _Chunks(f"chatcmpl-{info.id}", model, int(info.created), include_usage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, stream_id = self._state, self._info.id
        interval = state.settings.heartbeat_interval or None
        wait = min(_FIRST_EVENT_WAIT, interval or _FIRST_EVENT_WAIT)
        async with state.store.subscriber(stream_id):
            response: Response
            try:
                head = await _first_events(state, stream_id, wait)
            except StoreError as exc:
                response = OpenAIError.from_gateway(exc.to_dict()).response(stream_id)
            else:
                if head and head[-1].event == "error":
                    response = OpenAIError.from_gateway(_data(head[-1])).response(stream_id)
                else:
                    settings = state.settings
                    response = TrackedEventSourceResponse(
                        _chunk_stream(state, stream_id, head, self._chunks),
                        headers=_stream_headers(stream_id),
                        options=EventStreamOptions(max_buffer_bytes=settings.client_buffer_bytes),
                        ping_interval=interval,
                        retry=None,
                        send_timeout=settings.send_timeout or None,
                        shutdown=state.shutdown,
                        tracker=self._security.event_streams,
                    )
            await response(scope, receive, send)


# -- non-streaming --------------------------------------------------------------------------


class _Completion:
    """Gathers a stream's events into one ``chat.completion``."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason = "stop"
        self.error: OpenAIError | None = None

    def add(self, event: StoredEvent) -> None:
        kind = event.event
        if kind == "delta":
            self.text.append(_data(event).get("text", ""))
        elif kind == "reasoning":
            self.reasoning.append(_data(event).get("text", ""))
        elif kind == "tool_call":
            data = _data(event)
            call = self.tools.setdefault(
                int(data.get("index", 0)), {"id": None, "name": "", "arguments": []}
            )
            call["id"] = data.get("id") or call["id"]
            call["name"] = data.get("name") or call["name"]
            call["arguments"].append(data.get("arguments", ""))
        elif kind == "usage":
            self.usage = _data(event)
        elif kind == "done":
            self.finish_reason = str(_data(event).get("finish_reason") or "stop")
        elif kind == "error":
            self.error = OpenAIError.from_gateway(_data(event))
        elif kind == "cancelled":
            self.error = _cancelled_error(_data(event))

    def body(self, info: StreamInfo, model: str) -> dict[str, Any]:
        text = "".join(self.text)
        tool_calls = [
            {
                "id": call["id"] or f"call_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for index, call in sorted(self.tools.items())
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not tool_calls else None,
            "refusal": None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return {
            "id": f"chatcmpl-{info.id}",
            "object": "chat.completion",
            "created": int(info.created),
            "model": model,
            "choices": [choice],
            "usage": _usage(self.usage) if self.usage is not None else None,
        }


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _complete(
    state: GatewayState, info: StreamInfo, model: str, receive: Receive
) -> Response:
    """Follow the stream to its end and answer one ``chat.completion``.

    A client that leaves stops our subscription, so ``on_disconnect`` applies as for SSE.
    """
    result = _Completion()
    failure: StoreError | None = None
    disconnected = False
    async with state.store.subscriber(info.id), anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal disconnected
            await _wait_disconnect(receive)
            disconnected = True
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            async with aclosing(state.store.follow(info.id, 0)) as events:
                async for event in events:
                    result.add(event)
        except StoreError as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if disconnected:
        return Response(status_code=499)  # nobody reads it; the access log says what happened
    if failure is not None:
        return OpenAIError.from_gateway(failure.to_dict()).response(info.id)
    if result.error is not None:
        return result.error.response(info.id)
    body = orjson.dumps(result.body(info, model))
    return Response(body, 200, _stream_headers(info.id), media_type="application/json")


# -- routes ---------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in (
        (400, "Invalid request (OpenAI error shape)"),
        (401, "Bad or missing API key"),
        (404, "Unknown model"),
        (429, "The upstream rate-limited us"),
        (502, "The upstream failed"),
        (503, "Overloaded or shutting down"),
    )
}


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    response_model=None,
    responses=_ERRORS,
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
    _check_prompt(state, body)
    route = _resolve(state, body.model)
    chat = _chat_request(body, route)
    info = await _start(state, security, route, chat, owner, body.on_disconnect)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _CompletionStream(state, security, info, route.name, include_usage)
    return await _complete(state, info, route.name, request.receive)


def _model_object(route: ModelRoute, created: int) -> dict[str, Any]:
    return {"id": route.name, "object": "model", "created": created, "owned_by": route.owned_by}


@router.get("/models", summary="List models (OpenAI-compatible)", responses=_ERRORS)
async def list_models(
    request: Request, owner: Annotated[str | None, Depends(openai_caller)]
) -> dict[str, Any]:
    """The public models, the default first."""
    models = state_of(request).models
    return {"object": "list", "data": [_model_object(route, models.created) for route in models]}


@router.get(
    "/models/{model_id:path}", summary="Retrieve a model (OpenAI-compatible)", responses=_ERRORS
)
async def retrieve_model(
    request: Request, model_id: str, owner: Annotated[str | None, Depends(openai_caller)]
) -> dict[str, Any]:
    """One public model, or 404 ``model_not_found``."""
    state = state_of(request)
    return _model_object(_resolve(state, model_id), state.models.created)
