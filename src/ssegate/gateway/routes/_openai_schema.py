"""The request of ``POST /v1/chat/completions`` and its mapping onto each upstream's fields.

:class:`ChatCompletionRequest` validates the body as OpenAI defines it (unknown fields are
kept); :func:`chat_request` refuses what the gateway can't do (one choice only, no logprobs,
no audio output, no ``functions``) and builds the provider request: OpenAI-compatible
upstreams get the other fields as they are, Anthropic and Ollama upstreams the ones they have a
counterpart for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...providers import ChatRequest
from .._models import ModelRoute
from ._json_values import MAX_INTEGER, WHOLE, JsonValue, check_json_values
from ._openai_errors import OpenAIError

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "FunctionDefinition",
    "ResponseFormat",
    "StreamOptions",
    "Tool",
    "chat_request",
    "check_shape",
]

# Strict, as OpenAI is: "stream": "yes", "max_tokens": true, "temperature": "0.5" are refused
# (400 naming the param), not coerced. Integers are still accepted for numbers. Free-form
# values are JsonValue, so the schema says which integers and numbers pass. Where a rule is
# checked in code (check_shape, _refuse_unsupported, for OpenAI's messages), the schema says it
# too (json_schema_extra), so that /openapi.json describes exactly what is accepted.

_ONLY_NULL: dict[str, Any] = {"type": "null"}
_CONTENT_REQUIRED = ("system", "developer", "user", "tool")
_MESSAGE_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {"properties": {"role": {"enum": list(_CONTENT_REQUIRED)}}},
            "then": {"required": ["content"], "properties": {"content": {"not": _ONLY_NULL}}},
        },
        {
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {
                "required": ["tool_call_id"],
                "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
            },
        },
    ]
}


class ChatMessage(BaseModel):
    """One message, as OpenAI defines it (extra fields pass through to the upstream)."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_MESSAGE_RULES)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, JsonValue]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, JsonValue]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    """A function tool's definition."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """A tool the model may call (only function tools)."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds the final usage chunk."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    include_usage: bool | None = None


_FORMAT_RULES: dict[str, Any] = {
    "if": {"properties": {"type": {"const": "json_schema"}}},
    "then": {
        "required": ["json_schema"],
        "properties": {"json_schema": {"type": "object", "minProperties": 1}},
    },
}


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_FORMAT_RULES)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, JsonValue] | None = None


_REQUEST_RULES: dict[str, Any] = {
    "if": {
        "required": ["stream_options"],
        "properties": {"stream_options": {"not": _ONLY_NULL}},
    },
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``; unknown fields are kept (see the module doc)."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_REQUEST_RULES)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    # How many, and how long: --max-messages and --max-prompt-chars (400 past them).
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INTEGER), WHOLE] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_INTEGER), WHOLE] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    # Refused in code with a clearer message than a bound's: n > 1, logprobs, audio output,
    # the deprecated functions.
    n: Annotated[int, WHOLE] | None = Field(
        default=None, json_schema_extra={"minimum": 1, "maximum": 1}
    )
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=512)
    tool_choice: Literal["none", "auto", "required"] | dict[str, JsonValue] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=512)
    seed: Annotated[int, Field(ge=-MAX_INTEGER, le=MAX_INTEGER), WHOLE] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = Field(default=None, json_schema_extra={"enum": [False, None]})
    top_logprobs: Annotated[int, WHOLE] | None = Field(
        default=None, json_schema_extra={"enum": [0, None]}
    )
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = Field(default=None, max_length=32)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = Field(
        default=None, json_schema_extra={"items": {"type": "string", "not": {"const": "audio"}}}
    )
    audio: dict[str, JsonValue] | None = Field(default=None, json_schema_extra=_ONLY_NULL)
    functions: list[dict[str, JsonValue]] | None = Field(default=None, json_schema_extra=_ONLY_NULL)
    function_call: str | dict[str, JsonValue] | None = Field(
        default=None, json_schema_extra=_ONLY_NULL
    )
    #: ssegate's own: what a dropped connection does (default: the gateway's policy).
    on_disconnect: Literal["cancel", "continue"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        check_json_values(data)  # JsonValueError (400) for what no upstream can take
        return data


def check_shape(body: ChatCompletionRequest) -> None:
    """Refuse what OpenAI refuses beyond types: a message without the content or
    ``tool_call_id`` its role needs, ``stream_options`` without ``stream``."""
    for i, message in enumerate(body.messages):
        if message.content is None and message.role in _CONTENT_REQUIRED:
            raise OpenAIError(
                400,
                f"messages[{i}]: a {message.role} message must have content.",
                param=f"messages[{i}].content",
                code="invalid_value",
            )
        if message.role == "tool" and not message.tool_call_id:
            raise OpenAIError(
                400,
                f"messages[{i}]: a tool message must have tool_call_id.",
                param=f"messages[{i}].tool_call_id",
                code="missing_required_parameter",
            )
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


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


def chat_request(body: ChatCompletionRequest, route: ModelRoute) -> ChatRequest:
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
    elif route.kind == "demo":
        max_tokens = limit  # as OpenAI does: LangChain sends max_completion_tokens
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
