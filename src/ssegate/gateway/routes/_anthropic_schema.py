"""The request of ``POST /v1/messages`` and its translation into a provider request.

:class:`MessagesRequest` validates the body as Anthropic documents it
(https://docs.anthropic.com/en/api/messages), strictly: unknown fields, wrong types and
blocks of a kind the gateway cannot send on (images, documents, server tools) are a 400 naming
the field. :func:`chat_request` builds the provider's OpenAI-style request: ``system`` becomes a
system message, ``tool_use`` blocks an assistant's ``tool_calls``, ``tool_result`` blocks
``tool`` messages, Anthropic tools function tools; the sampling fields go to each upstream as
its own (``stop_sequences`` is OpenAI's ``stop``, ``metadata.user_id`` its ``user``).
``thinking`` goes to Anthropic upstreams as it is; other upstreams reason (or not) as their
model does, and their reasoning still arrives as ``thinking`` blocks. ``thinking`` and
``redacted_thinking`` blocks of earlier turns are accepted and not sent on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...providers import ChatRequest
from .._models import ModelRoute
from ._json_values import MAX_INTEGER, WHOLE, JsonValue, check_json_values

__all__ = ["MessagesRequest", "chat_request", "provider_messages"]

_Cache = dict[str, JsonValue] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextBlock(_Strict):
    """A ``text`` content block."""

    type: Literal["text"]
    text: str
    cache_control: _Cache = None
    citations: list[dict[str, JsonValue]] | None = None


class ToolUseBlock(_Strict):
    """A ``tool_use`` block of an assistant turn: a call the model made."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=128)
    input: dict[str, JsonValue]
    cache_control: _Cache = None


class ToolResultBlock(_Strict):
    """A ``tool_result`` block of a user turn: the answer to a ``tool_use``."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: _Cache = None


class ThinkingBlock(_Strict):
    """A ``thinking`` block of an earlier assistant turn (not sent on)."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Strict):
    """A ``redacted_thinking`` block of an earlier assistant turn (not sent on)."""

    type: Literal["redacted_thinking"]
    data: str


UserBlock = Annotated[TextBlock | ToolResultBlock, Field(discriminator="type")]
AssistantBlock = Annotated[
    TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")
]


class UserMessage(_Strict):
    """A user turn: text, and the results of the tools the model called."""

    role: Literal["user"]
    content: str | list[UserBlock]


class AssistantMessage(_Strict):
    """An assistant turn: text and tool calls (thinking blocks are dropped)."""

    role: Literal["assistant"]
    content: str | list[AssistantBlock]


InputMessage = Annotated[UserMessage | AssistantMessage, Field(discriminator="role")]


class Tool(_Strict):
    """A client tool: its name, description and JSON Schema for ``input``."""

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, JsonValue]
    cache_control: _Cache = None


class ToolChoice(_Strict):
    """``tool_choice``: ``auto``, ``any``, ``none``, or one ``tool`` by name."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "if": {"properties": {"type": {"const": "tool"}}},
            "then": {"required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    )

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1, max_length=128)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError("a tool_choice of type 'tool' needs the tool's name")
        return self


class Thinking(_Strict):
    """``thinking``: ``enabled`` with a token budget, ``adaptive`` or ``disabled``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "if": {"properties": {"type": {"const": "enabled"}}},
            "then": {
                "required": ["budget_tokens"],
                "properties": {"budget_tokens": {"type": "integer"}},
            },
        },
    )

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: Annotated[int, Field(ge=1024, le=MAX_INTEGER), WHOLE] | None = None

    @model_validator(mode="after")
    def _budgeted(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking of type 'enabled' needs budget_tokens")
        return self


class Metadata(_Strict):
    """``metadata``: the end user's opaque id."""

    user_id: str | None = Field(default=None, max_length=256)


class MessagesRequest(_Strict):
    """Body of ``POST /v1/messages`` (plus ssegate's ``on_disconnect``)."""

    model: str = Field(min_length=1, max_length=200)
    # How many, and how long: --max-messages and --max-prompt-chars (400 past them).
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INTEGER), WHOLE]
    system: str | list[TextBlock] | None = None
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: Annotated[int, Field(ge=0, le=MAX_INTEGER), WHOLE] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    tools: list[Tool] | None = Field(default=None, max_length=512)
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: Thinking | None = None
    #: ssegate's own: what a dropped connection does (default: the gateway's policy).
    on_disconnect: Literal["cancel", "continue"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        check_json_values(data)  # JsonValueError (400) for what no upstream can take
        return data


# -- translation ------------------------------------------------------------------------------


def _text(content: str | list[TextBlock] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(block.text for block in content)


def _user_messages(message: UserMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            text = _text(block.content)
            if block.is_error:
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        else:
            parts.append({"type": "text", "text": block.text})
    if parts:  # the text after the results, as Anthropic reads a mixed turn
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(message: AssistantMessage) -> dict[str, Any] | None:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
    if not texts and not calls:
        return None  # only thinking: nothing for the upstream
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return out


def provider_messages(body: MessagesRequest) -> list[dict[str, Any]]:
    """The OpenAI-style messages for the request's ``system`` and ``messages``."""
    out: list[dict[str, Any]] = []
    system = _text(body.system)
    if system:
        out.append({"role": "system", "content": system})
    for message in body.messages:
        if isinstance(message, UserMessage):
            out += _user_messages(message)
        elif (converted := _assistant_message(message)) is not None:
            out.append(converted)
    return out


def _function_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _anthropic_extra(body: MessagesRequest) -> dict[str, Any]:
    given = body.model_dump(
        include={"top_p", "top_k", "stop_sequences", "tool_choice", "metadata", "thinking"},
        exclude_none=True,
    )
    if not body.tools:
        given.pop("tool_choice", None)
    return given


def _openai_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name or ""}}
    return {"any": "required"}.get(choice.type, choice.type)


def _openai_extra(body: MessagesRequest) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if body.top_p is not None:
        extra["top_p"] = body.top_p
    if body.top_k is not None:
        extra["top_k"] = body.top_k  # vLLM, llama.cpp and others read it
    if body.stop_sequences:
        extra["stop"] = body.stop_sequences
    if body.tools and body.tool_choice is not None:
        extra["tool_choice"] = _openai_choice(body.tool_choice)
        if body.tool_choice.disable_parallel_tool_use:
            extra["parallel_tool_calls"] = False
    if body.metadata is not None and body.metadata.user_id:
        extra["user"] = body.metadata.user_id
    return extra


def _ollama_extra(body: MessagesRequest) -> dict[str, Any]:
    # Ollama's build_body replaces "options" wholesale with ours: repeat its two fields.
    options: dict[str, Any] = {
        "num_predict": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stop": body.stop_sequences or None,
    }
    options = {k: v for k, v in options.items() if v is not None}
    return {"options": options} if options else {}


def chat_request(body: MessagesRequest, route: ModelRoute) -> ChatRequest:
    """The provider request for ``body``, its fields mapped onto what ``route`` speaks."""
    extra: dict[str, Any] = {}
    tools = [_function_tool(tool) for tool in body.tools] if body.tools else None
    if route.kind == "anthropic":
        extra = _anthropic_extra(body)
    elif route.kind == "openai":
        extra = _openai_extra(body)
    elif route.kind == "ollama":
        extra = _ollama_extra(body)
    choice = body.tool_choice
    if choice is not None and choice.type == "none" and route.kind not in ("anthropic", "openai"):
        tools = None  # this upstream has no tool_choice: "none" is no tools
    return ChatRequest(
        messages=provider_messages(body),
        model=route.upstream_model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        tools=tools,
        extra=extra,
    )
