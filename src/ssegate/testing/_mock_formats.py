"""The wire formats of the mock upstream: OpenAI (SSE), Anthropic (SSE) and Ollama (NDJSON).

Each :class:`Format` makes the payloads of one streamed response; :func:`stream_response` and
:func:`completion_response` play a :class:`~ssegate.testing.Scenario` in a format as *wire
items* (bytes, a float pause, or :data:`STALL`/:data:`DROP`/:data:`RESET`) that the connection
writes; :func:`error_response` answers a status with the format's own error body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from ._mock_scenario import TOOL_ARGUMENTS, MockRequest, Scenario, script

__all__ = [
    "DROP",
    "FORMATS",
    "MOCK_ANNOTATION",
    "MOCK_FINGERPRINT",
    "MOCK_TOKEN_DETAILS",
    "RESET",
    "STALL",
    "AnthropicFormat",
    "Format",
    "OllamaFormat",
    "OpenAIFormat",
    "completion_response",
    "content_text",
    "error_response",
    "json_response",
    "stream_response",
]


def _sse(data: bytes, event: bytes | None = None) -> bytes:
    head = b"event: " + event + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = [content_text(m.get("content")) for m in body.get("messages") or []]
    texts.append(content_text(body.get("system")))
    return max(1, sum(len(t.split()) for t in texts))


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class Format:
    """One wire format: the payloads of a streamed response (before chunked encoding)."""

    name = ""
    content_type = b"text/event-stream"
    default_finish = "stop"
    tool_finish = "tool_calls"

    def __init__(self, rec: MockRequest, scenario: Scenario, body: dict[str, Any]) -> None:
        self.rec = rec
        self.s = scenario
        self.body = body
        self.model = str(body.get("model") or "mock-model")
        self.created = int(time.time())
        self.prompt_tokens = _prompt_tokens(body)

    def opening(self) -> bytes:
        return b""

    def reasoning(self, text: str) -> bytes:
        raise NotImplementedError

    def text(self, text: str) -> bytes:
        raise NotImplementedError

    def tool(self, name: str) -> bytes:
        raise NotImplementedError

    def stream_error(self) -> bytes:
        raise NotImplementedError

    def malformed(self) -> bytes:
        raise NotImplementedError

    def unknown_shape(self) -> bytes:
        raise NotImplementedError

    def closing(self, finish: str, usage: tuple[int, int] | None, terminator: bool) -> bytes:
        raise NotImplementedError


#: What ``[[openai_extras]]`` adds to OpenAI chunks (tests compare against these).
MOCK_FINGERPRINT = "fp_mock_0001"
MOCK_ANNOTATION: dict[str, Any] = {
    "type": "url_citation",
    "url_citation": {"start_index": 0, "end_index": 4, "url": "https://example.com/", "title": "E"},
}
MOCK_TOKEN_DETAILS: dict[str, Any] = {
    "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


class OpenAIFormat(Format):
    """OpenAI's chat completion chunks, as SSE ``data:`` lines ending with ``[DONE]``."""

    name = "openai"

    def __init__(self, rec: MockRequest, scenario: Scenario, body: dict[str, Any]) -> None:
        super().__init__(rec, scenario, body)
        self.id = f"chatcmpl-mock-{rec.index}"
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": MOCK_FINGERPRINT if self.s.openai_extras else None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.s.openai_extras:
            chunk["service_tier"] = "default"
        return _sse(orjson.dumps(chunk))

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def reasoning(self, text: str) -> bytes:
        return self._chunk({self.s.reasoning_field: text})

    def text(self, text: str) -> bytes:
        return self._chunk({"refusal" if self.s.refusal else "content": text})

    def tool(self, name: str) -> bytes:
        start = {"index": 0, "id": "call_mock_0", "type": "function"}
        out = self._chunk({"tool_calls": [{**start, "function": {"name": name, "arguments": ""}}]})
        for piece in TOOL_ARGUMENTS:
            out += self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        return out

    def stream_error(self) -> bytes:
        message = "The server had an error while processing your request. Sorry about that!"
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return _sse(orjson.dumps({"error": error}))

    def malformed(self) -> bytes:
        return (
            b'data: {"id": "chatcmpl-mock", "choices": [{"index": 0, "delta": {"content": "tok\n\n'
        )

    def unknown_shape(self) -> bytes:
        return _sse(b'{"object": "mystery", "answer": 42}')

    def closing(self, finish: str, usage: tuple[int, int] | None, terminator: bool) -> bytes:
        out = self._chunk({"annotations": [MOCK_ANNOTATION]}) if self.s.openai_extras else b""
        out += self._chunk({}, finish)
        if usage and self.include_usage:
            counts: dict[str, Any] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            counts["total_tokens"] = usage[0] + usage[1]
            if self.s.openai_extras:
                counts.update(MOCK_TOKEN_DETAILS)
            chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": counts,
            }
            out += _sse(orjson.dumps(chunk))
        return out + (b"data: [DONE]\n\n" if terminator else b"")


class AnthropicFormat(Format):
    """Anthropic's Messages stream: named SSE events, one content block per kind."""

    name = "anthropic"
    default_finish = "end_turn"
    tool_finish = "tool_use"

    def __init__(self, rec: MockRequest, scenario: Scenario, body: dict[str, Any]) -> None:
        super().__init__(rec, scenario, body)
        self.block = -1
        self.open_kind: str | None = None

    @staticmethod
    def _event(name: str, obj: dict[str, Any]) -> bytes:
        return _sse(orjson.dumps({"type": name, **obj}), name.encode())

    def _switch(self, kind: str, block: dict[str, Any]) -> bytes:
        if self.open_kind == kind:
            return b""
        out = self._close_block()
        self.block += 1
        self.open_kind = kind
        start = {"index": self.block, "content_block": block}
        return out + self._event("content_block_start", start)

    def _close_block(self) -> bytes:
        out = b""
        if self.open_kind == "thinking":
            delta = {"type": "signature_delta", "signature": "mock-signature"}
            out += self._event("content_block_delta", {"index": self.block, "delta": delta})
        if self.open_kind is not None:
            out += self._event("content_block_stop", {"index": self.block})
        self.open_kind = None
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", {"index": self.block, "delta": delta})

    def opening(self) -> bytes:
        usage = {"input_tokens": self.prompt_tokens, "output_tokens": 1} if self.s.usage else {}
        message: dict[str, Any] = {
            "id": f"msg_mock_{self.rec.index}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            **({"usage": usage} if usage else {}),
        }
        return self._event("message_start", {"message": message}) + self._event("ping", {})

    def reasoning(self, text: str) -> bytes:
        out = self._switch("thinking", {"type": "thinking", "thinking": ""})
        return out + self._delta({"type": "thinking_delta", "thinking": text})

    def text(self, text: str) -> bytes:
        out = self._switch("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": text})

    def tool(self, name: str) -> bytes:
        block = {"type": "tool_use", "id": "toolu_mock_0", "name": name, "input": {}}
        out = self._switch("tool_use", block)
        for piece in ("", *TOOL_ARGUMENTS):
            out += self._delta({"type": "input_json_delta", "partial_json": piece})
        return out

    def stream_error(self) -> bytes:
        return self._event(
            "error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}
        )

    def malformed(self) -> bytes:
        return (
            b"event: content_block_delta\n"
            b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", '
            b'"text": "tok\n\n'
        )

    def unknown_shape(self) -> bytes:
        return self._event("content_block_delta", {"index": 0, "delta": "mystery"})

    def closing(self, finish: str, usage: tuple[int, int] | None, terminator: bool) -> bytes:
        out = self._close_block()
        delta: dict[str, Any] = {"delta": {"stop_reason": finish, "stop_sequence": None}}
        if usage:
            delta["usage"] = {"output_tokens": usage[1]}
        out += self._event("message_delta", delta)
        return out + (self._event("message_stop", {}) if terminator else b"")


class OllamaFormat(Format):
    """Ollama's ``/api/chat`` stream: one JSON object a line, the last with ``done: true``."""

    name = "ollama"
    content_type = b"application/x-ndjson"
    tool_finish = "stop"

    def _line(self, message: dict[str, Any], **extra: Any) -> bytes:
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        obj = {"model": self.model, "created_at": created, "message": message, **extra}
        return orjson.dumps(obj) + b"\n"

    def reasoning(self, text: str) -> bytes:
        return self._line({"role": "assistant", "content": "", "thinking": text}, done=False)

    def text(self, text: str) -> bytes:
        return self._line({"role": "assistant", "content": text}, done=False)

    def tool(self, name: str) -> bytes:
        arguments = orjson.loads("".join(TOOL_ARGUMENTS))
        call = {"function": {"name": name, "arguments": arguments}}
        return self._line({"role": "assistant", "content": "", "tool_calls": [call]}, done=False)

    def stream_error(self) -> bytes:
        error = "an error was encountered while running the model: unexpected EOF"
        return orjson.dumps({"error": error}) + b"\n"

    def malformed(self) -> bytes:
        return b'{"model": "mock", "message": {"content": "tok\n'

    def unknown_shape(self) -> bytes:
        return b'{"object": "mystery", "answer": 42}\n'

    def closing(self, finish: str, usage: tuple[int, int] | None, terminator: bool) -> bytes:
        if not terminator:
            return b""
        counts = {"prompt_eval_count": usage[0], "eval_count": usage[1]} if usage else {}
        return self._line(
            {"role": "assistant", "content": ""},
            done=True,
            done_reason=finish,
            total_duration=1000,
            load_duration=10,
            **counts,
        )


FORMATS: dict[tuple[str, str], type[Format]] = {
    ("POST", "/v1/chat/completions"): OpenAIFormat,
    ("POST", "/chat/completions"): OpenAIFormat,
    ("POST", "/v1/messages"): AnthropicFormat,
    ("POST", "/api/chat"): OllamaFormat,
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_ANTHROPIC_MESSAGES = {
    401: "invalid x-api-key",
    404: "model: not found",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}
_OPENAI_ERRORS = {
    401: ("Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for {model}.", "requests", "rate_limit_exceeded"),
}


def _response(status: int, body: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
    reason = _REASONS.get(status, "Error").encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, content_type, len(body), extra)
    ) + body


def json_response(status: int, obj: Any) -> bytes:
    """A complete ``status`` response with ``obj`` as its JSON body."""
    return _response(status, orjson.dumps(obj), b"application/json")


def error_response(fmt: str, status: int, model: str, key: str, message: str = "") -> bytes:
    """``status`` with ``fmt``'s own error body."""
    extra = b"retry-after: 1\r\n" if status == 429 else b""
    if fmt == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        text = message or _ANTHROPIC_MESSAGES.get(status, kind)
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": text}}
    elif fmt == "ollama":
        default = f'model "{model}" not found, try pulling it first' if status == 404 else ""
        body = {"error": message or default or _REASONS.get(status, "error").lower()}
    else:
        text, kind, code = _OPENAI_ERRORS.get(
            status,
            ("The server had an error while processing your request.", "server_error", None),
        )
        if status < 500 and status not in _OPENAI_ERRORS:
            text, kind, code = "Invalid request.", "invalid_request_error", None
        text = message or text.format(key=key, model=model)
        body = {"error": {"message": text, "type": kind, "param": None, "code": code}}
    return _response(status, orjson.dumps(body), b"application/json", extra)


# ---------------------------------------------------------------------------------------------
# Responses: generators of wire items, driven by the connection
# ---------------------------------------------------------------------------------------------

# Items a response generator yields: bytes (written as is), a float (pause, seconds), or:
STALL = object()  # write nothing more, keep the connection open
DROP = object()  # close the connection (FIN) with the body unfinished
RESET = object()  # abort the connection with an RST
_LAST_CHUNK = b"0\r\n\r\n"


def _head(content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n" % content_type
    )


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""


def stream_response(rec: MockRequest, fmt: Format) -> Iterator[object]:
    """The wire items of a streamed response: ``rec``'s scenario played in ``fmt``."""
    s = fmt.s
    yield _head(fmt.content_type)
    yield _chunk(fmt.opening())
    for kind, value in script(s):
        if kind == "sleep":
            yield value
        elif kind == "text":
            rec.text_parts.append(value)
            rec.tokens_sent += 1
            yield _chunk(fmt.text(value))
        elif kind == "reasoning":
            rec.reasoning_parts.append(value)
            rec.tokens_sent += 1
            yield _chunk(fmt.reasoning(value))
        elif kind == "tool":
            yield _chunk(fmt.tool(value))
        elif kind == "end":
            finish = s.finish or (fmt.tool_finish if s.tool_call else fmt.default_finish)
            usage = (fmt.prompt_tokens, rec.tokens_sent + bool(s.tool_call))
            rec.usage = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            yield _chunk(fmt.closing(finish, usage if s.usage else None, s.fault != "no_end"))
            yield _LAST_CHUNK
        elif value == "stream_error":
            yield _chunk(fmt.stream_error())
            yield _LAST_CHUNK
        elif value in ("stall", "drop"):
            yield STALL if value == "stall" else DROP
        elif value == "reset":
            yield 0.05  # let the tokens before it reach the client: an RST discards them
            yield RESET
        else:
            yield _chunk(fmt.malformed() if value == "malformed" else fmt.unknown_shape())


def completion_response(rec: MockRequest, fmt: OpenAIFormat) -> Iterator[object]:
    """A non-streaming OpenAI chat completion (``stream`` false or absent)."""
    s = fmt.s
    count, answer = s.answer()
    text = "".join(answer(i) for i in range(count))
    rec.text_parts.append(text)
    rec.tokens_sent = count
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if s.tool_call:
        function = {"name": s.tool_call, "arguments": "".join(TOOL_ARGUMENTS)}
        message["tool_calls"] = [{"id": "call_mock_0", "type": "function", "function": function}]
    usage = {"prompt_tokens": fmt.prompt_tokens, "completion_tokens": rec.tokens_sent}
    rec.usage = dict(usage)
    finish = s.finish or ("tool_calls" if s.tool_call else "stop")
    body = {
        "id": fmt.id,
        "object": "chat.completion",
        "created": fmt.created,
        "model": fmt.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }
    yield json_response(200, body)
