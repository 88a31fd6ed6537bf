"""The request of ``POST /v1/responses`` (OpenAI's Responses API) and its provider request.

:class:`ResponsesRequest` validates the body strictly, as OpenAI types it: ``"stream": "yes"``
or ``"temperature": "0.5"`` are refused with a 400 naming the param, not coerced. A field this
gateway does not implement (``previous_response_id``, ``conversation``, ``prompt``, non-function
tools, ...) is a 400 ``unsupported_parameter`` naming it, never silently dropped.
:func:`chat_request` turns the input items into the chat messages every provider takes:
``instructions`` → a system message, ``function_call`` items → an assistant message's
``tool_calls``, ``function_call_output`` items → ``tool`` messages; ``reasoning`` items a client
sends back are dropped (no upstream of the gateway takes them back).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from starlette.responses import Response

from ...providers import ChatRequest
from .._models import ModelRoute
from ._json_values import MAX_INTEGER, WHOLE, JsonValue, check_json_values
from ._openai_errors import OpenAIError

__all__ = ["PlainLocations", "ResponsesRequest", "chat_request", "request_echo"]

_TEXT_PART = {"input_text", "output_text"}


class InputText(BaseModel):
    """``input_text`` content (``output_text`` too: an assistant turn sent back)."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["input_text", "output_text"]
    text: str


class RefusalPart(BaseModel):
    """A ``refusal`` content part of an assistant turn sent back."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["refusal"]
    refusal: str


_Part = Annotated[InputText | RefusalPart, Field(discriminator="type")]


class MessageItem(BaseModel):
    """A message: ``{"role", "content"}``, ``type`` ``message`` or left out."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Part]


class FunctionCallItem(BaseModel):
    """A function call the model made earlier (sent back with its output)."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=128)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """The output of a function call, for the model."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=200)
    output: str | list[InputText]


class ReasoningItem(BaseModel):
    """A reasoning item sent back: accepted and not sent upstream."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    type: Literal["reasoning"]


def _item_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(BaseModel):
    """A function tool (the only kind of tool the gateway offers)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class ToolChoiceFunction(BaseModel):
    """``{"type": "function", "name"}``: call this function."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)


class ReasoningConfig(BaseModel):
    """``reasoning``: the effort goes to OpenAI-compatible upstreams as ``reasoning_effort``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(BaseModel):
    """``text.format``: plain text only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]


class TextConfig(BaseModel):
    """``text``: the output format (plain text) and verbosity (ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


#: What ``_messages`` checks, said in the schema: some item is not a reasoning item.
_NOT_ONLY_REASONING: dict[str, Any] = {
    "contains": {"not": {"required": ["type"], "properties": {"type": {"const": "reasoning"}}}}
}

_Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class ResponsesRequest(BaseModel):
    """Body of ``POST /v1/responses``; fields not listed here are refused (400, naming them)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: (
        str | Annotated[list[InputItem], Field(min_length=1, json_schema_extra=_NOT_ONLY_REASONING)]
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_INTEGER), WHOLE] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    metadata: _Metadata | None = None
    stream: bool | None = False
    background: bool | None = False
    store: bool | None = None
    user: str | None = Field(default=None, max_length=512)
    safety_identifier: str | None = Field(default=None, max_length=512)
    prompt_cache_key: str | None = Field(default=None, max_length=512)
    include: list[str] | None = Field(default=None, max_length=16)
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    #: ssegate's own: what a dropped connection does (default: the gateway's policy; with
    #: ``background`` always ``continue``).
    on_disconnect: Literal["cancel", "continue"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        check_json_values(data)  # JsonValueError (400) for what no upstream can take
        if isinstance(data, dict):
            for name in data:
                if name not in cls.model_fields:
                    message = f"Unsupported parameter: '{name}' is not supported by this gateway."
                    raise OpenAIError(400, message, param=name, code="unsupported_parameter")
        return data


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, InputText) else p.refusal for p in content)


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    for item in body.input:
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text(item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    if all(isinstance(item, ReasoningItem) for item in body.input):
        raise OpenAIError(
            400, "input must hold at least one message or tool output.", param="input"
        )
    return messages


def _tool_choice(body: ResponsesRequest, kind: str) -> Any:
    choice = body.tool_choice
    if choice is None or not body.tools:
        return None
    if kind == "anthropic":
        if isinstance(choice, ToolChoiceFunction):
            return {"type": "tool", "name": choice.name}
        return {"type": {"required": "any"}.get(choice, choice)}
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _extra(body: ResponsesRequest, kind: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    choice = _tool_choice(body, kind)
    if kind == "openai":
        optional = {
            "top_p": body.top_p,
            "tool_choice": choice,
            "parallel_tool_calls": body.parallel_tool_calls if body.tools else None,
            "reasoning_effort": body.reasoning.effort if body.reasoning else None,
        }
        extra = {k: v for k, v in optional.items() if v is not None}
    elif kind == "anthropic":
        if body.top_p is not None:
            extra["top_p"] = body.top_p
        if body.parallel_tool_calls is False and body.tools:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            extra["tool_choice"] = choice
    elif kind == "ollama":
        options = {
            "num_predict": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
        }
        if options := {k: v for k, v in options.items() if v is not None}:
            extra["options"] = options
    return extra


def chat_request(body: ResponsesRequest, route: ModelRoute) -> ChatRequest:
    """The provider request for ``body`` on ``route``'s upstream."""
    tools = [
        {
            "type": "function",
            "function": t.model_dump(exclude_none=True, exclude={"type"}),
        }
        for t in body.tools or ()
    ]
    return ChatRequest(
        messages=_messages(body),
        model=route.upstream_model,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        tools=tools or None,
        extra=_extra(body, route.kind),
    )


def request_echo(body: ResponsesRequest) -> dict[str, Any]:
    """What a Response object repeats of its request (kept in the stream's ``start`` event)."""
    choice = body.tool_choice
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "tool_choice": choice.model_dump() if isinstance(choice, ToolChoiceFunction) else choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "metadata": body.metadata or {},
        "background": bool(body.background),
        "store": body.store,
        "user": body.user,
    }


def _field_names(model: type[BaseModel], names: set[str], seen: set[type[BaseModel]]) -> set[str]:
    seen.add(model)
    for name, info in model.model_fields.items():
        names.add(name)
        for kind in _models_in(info.annotation):
            if kind not in seen:
                _field_names(kind, names, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


#: The names a location may hold: the fields of the request and of every model in it.
_FIELDS = _field_names(ResponsesRequest, set(), set())


def _plain(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union branch names (``str``, ``list[...]``, tags), so the
    param reads as OpenAI names it: ``input[0].content[0]``."""
    return tuple(p for p in loc if isinstance(p, int) or p == "body" or p in _FIELDS)


class PlainLocations(APIRoute):
    """Validation errors with plain locations, the deepest first (for a union, the branch
    that got furthest says best what is wrong); put before ``OpenAIRoute`` in the bases."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def plain_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = [{**e, "loc": _plain(tuple(e.get("loc", ())))} for e in exc.errors()]
                errors.sort(key=lambda e: -len(e["loc"]))
                raise RequestValidationError(errors, body=exc.body) from None

        return plain_handler
