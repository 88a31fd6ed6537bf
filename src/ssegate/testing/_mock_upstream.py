"""A mock LLM upstream: a real HTTP/1.1 server on loopback with fault modes.

It speaks three wire formats, streamed with chunked transfer encoding:

* OpenAI: ``POST /v1/chat/completions`` (SSE; ``stream: false`` gets one JSON completion),
  ``GET /v1/models``;
* Anthropic: ``POST /v1/messages`` (SSE, ``stream: true`` only);
* Ollama: ``POST /api/chat`` (NDJSON), ``GET /api/tags``;

plus ``GET /_mock/requests[?since=N]``: the records below as JSON, for tests in other processes.

**Scenario directives.** What a request gets is chosen per request, so it works from another
process: ``[[name]]`` or ``[[name:value]]`` anywhere in the model name, in an ``x-mock``
header, or in the last user message (later sources win, all over the defaults given to
:class:`MockUpstream`). An unknown directive gets HTTP 400.

=====================  =====================================================================
``tokens:N``           answer tokens (default 8): ``tok0 tok1 …``
``lang:L``             token words: ``en`` (``tok3 ``), ``zh`` (``第3个词 ``), ``emoji``
                       (``🚀3 ``), ``mixed`` (``tok3·中文·🚀 ``)
``text:T``             stream ``T`` (split after whitespace) instead; ``T`` cannot hold ``]``
``stamp``              every token is ``"<seq>:<time.time_ns() at send> "`` (benchmarks)
``interval_ms:F``      pause between tokens; ``delay_ms:F`` before the first one
``header_delay_ms:F``  pause before the response headers
``reasoning:N``        N reasoning tokens (``think0 …``) before the answer
``reasoning_field:F``  OpenAI only: ``reasoning_content`` (default) or ``reasoning``
``tool_call[:name]``   then one tool call (default ``get_weather``), finish ``tool_calls``
``finish:R``           the finish reason to report (format's own word for Anthropic)
``usage:off``          send no usage
``fault:F``            a fault, see below; ``after:K`` = tokens sent before it fires
=====================  =====================================================================

Faults: ``http_NNN`` (that status with the format's own error body; 429 adds
``retry-after``; 401 for OpenAI echoes the key, as a redaction test), ``stream_error`` (an
error inside the 200 stream: OpenAI error object, Anthropic ``overloaded_error`` event, Ollama
error line; the body then ends), ``stall`` (after K tokens, default 0: silence, connection kept
open), ``drop`` (after K tokens close the TCP connection, body unfinished), ``reset`` (same with
an RST), ``malformed`` / ``unknown_shape`` (after K tokens one bad-JSON / unknown-shape chunk,
then the rest as normal), ``no_end`` (a complete body without the end marker: no ``[DONE]``,
``message_stop`` or ``done: true``), ``slow_headers`` (headers after ``header_delay_ms``,
default an hour), ``hangup`` (close the connection without any response). ``after`` defaults
to 2 (0 for ``stall``).

Usage is deterministic: ``prompt_tokens`` counts the whitespace-separated words of all
messages (and Anthropic's ``system``), ``completion_tokens`` the reasoning and answer tokens
sent plus one for a tool call. With ``MockUpstream(api_key=...)`` a request must present that
key (``authorization: Bearer`` or ``x-api-key``) or gets the format's 401.

For connection refused, use a closed port (:func:`closed_port_url`); for a connect timeout,
:func:`blackhole_url` gives a listening socket whose accept queue is full, so the kernel drops
SYNs and ``connect()`` hangs (Linux; elsewhere use a tiny connect timeout).

**Records.** Every request (but ``/_mock/*``) gets a :class:`MockRequest`: method, path,
headers, JSON body, scenario, the text and reasoning sent, and wall-clock times
(``time.time()``) when it started, when the response ended and when the client's connection
closed. Disconnects are seen at once (asyncio ``connection_lost``), not polled.

It is built for load (1,000 concurrent streams on 2 cores): one asyncio protocol per
connection on uvloop when installed, each response a plain generator driven by loop timers —
no task per stream, no framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
import orjson

_log = logging.getLogger("ssegate.testing.mock_upstream")

# ---------------------------------------------------------------------------------------------
# Scenarios: what to stream, chosen per request by [[directives]]
# ---------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::([^\]]*))?\]\]")
_FAULTS = re.compile(
    r"http_[1-5][0-9][0-9]|stream_error|stall|drop|reset|malformed|unknown_shape|no_end"
    r"|slow_headers|hangup"
)
_WORDS = {"en": "tok{} ", "zh": "第{}个词 ", "emoji": "🚀{} ", "mixed": "tok{}·中文·🚀 "}
_TEXT_TOKEN = re.compile(r"\S+\s*|\s+")
_TOOL_ARGUMENTS = ('{"city": ', '"Paris", ', '"unit": "celsius"}')


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("1", "on", "true", "yes"):
        return True
    if value.lower() in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"not a flag: {value!r}")


def _required(convert: Callable[[str], Any]) -> Callable[[str | None], Any]:
    def parse(value: str | None) -> Any:
        if value is None:
            raise ValueError("needs a value")
        return convert(value)

    return parse


_CONVERTERS: dict[str, Callable[[str | None], Any]] = {
    "tokens": _required(int),
    "lang": _required(str),
    "text": _required(str),
    "stamp": _flag,
    "interval_ms": _required(float),
    "delay_ms": _required(float),
    "header_delay_ms": _required(float),
    "reasoning": _required(int),
    "reasoning_field": _required(str),
    "tool_call": lambda value: value or "get_weather",
    "finish": _required(str),
    "usage": _flag,
    "fault": _required(str),
    "after": _required(int),
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the mock streams for one request; see the module docstring for each field."""

    tokens: int = 8
    lang: str = "en"
    text: str | None = None
    stamp: bool = False
    interval_ms: float = 0.0
    delay_ms: float = 0.0
    header_delay_ms: float = 0.0
    reasoning: int = 0
    reasoning_field: str = "reasoning_content"
    tool_call: str | None = None
    finish: str | None = None
    usage: bool = True
    fault: str | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if min(self.tokens, self.reasoning, self.after or 0) < 0:
            raise ValueError("counts must be >= 0")
        if min(self.interval_ms, self.delay_ms, self.header_delay_ms) < 0:
            raise ValueError("delays must be >= 0")
        if self.lang not in _WORDS:
            raise ValueError(f"lang must be one of {sorted(_WORDS)}")
        if self.reasoning_field not in ("reasoning_content", "reasoning"):
            raise ValueError("reasoning_field must be reasoning_content or reasoning")
        if self.fault is not None and not _FAULTS.fullmatch(self.fault):
            raise ValueError(f"unknown fault {self.fault!r}")

    def apply(self, text: str) -> Scenario:
        """This scenario changed by the ``[[directives]]`` in ``text``; ``ValueError`` if bad."""
        changes: dict[str, Any] = {}
        for match in _DIRECTIVE.finditer(text):
            name, value = match.group(1), match.group(2)
            if name not in _CONVERTERS:
                raise ValueError(f"unknown mock directive [[{name}]]")
            try:
                changes[name] = _CONVERTERS[name](value)
            except ValueError as exc:
                raise ValueError(f"bad mock directive {match.group(0)}: {exc}") from None
        return replace(self, **changes) if changes else self

    @property
    def fault_after(self) -> int:
        """Tokens sent before an in-stream fault fires."""
        if self.after is not None:
            return self.after
        return 0 if self.fault == "stall" else 2

    def answer(self) -> tuple[int, Callable[[int], str]]:
        """How many answer tokens, and how to make token ``seq`` when it is sent (so that a
        ``stamp`` is the send time)."""
        if self.text is not None:
            words = _TEXT_TOKEN.findall(self.text)
            return len(words), words.__getitem__
        if self.stamp:
            return self.tokens, lambda seq: f"{seq}:{time.time_ns()} "
        return self.tokens, _WORDS[self.lang].format

    def think(self, seq: int) -> str:
        """Reasoning token ``seq``."""
        return f"思考{seq} " if self.lang == "zh" else f"think{seq} "


# ---------------------------------------------------------------------------------------------
# Records: what the mock received and did
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class MockRequest:
    """One request as the mock saw it. Times are ``time.time()`` seconds.

    ``ended_at`` is when the response was complete; ``closed_at`` when the client's
    connection closed (for keep-alive connections, possibly long after). ``server_closed`` is
    set when a ``drop``/``reset``/``hangup`` fault closed it.
    """

    index: int
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    connection: int
    started_at: float
    format: str | None = None
    scenario: Scenario | None = None
    status: int | None = None
    ended_at: float | None = None
    closed_at: float | None = None
    server_closed: bool = False
    tokens_sent: int = 0
    usage: dict[str, int] | None = None
    text_parts: list[str] = field(default_factory=list, repr=False)
    reasoning_parts: list[str] = field(default_factory=list, repr=False)
    closed: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def text(self) -> str:
        """The answer text sent so far."""
        return "".join(self.text_parts)

    @property
    def reasoning(self) -> str:
        """The reasoning text sent so far."""
        return "".join(self.reasoning_parts)

    @property
    def cancelled(self) -> bool:
        """Whether the client closed the connection before the response was complete."""
        return self.closed_at is not None and self.ended_at is None and not self.server_closed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what ``GET /_mock/requests`` returns)."""
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "json": self.json,
            "connection": self.connection,
            "format": self.format,
            "scenario": asdict(self.scenario) if self.scenario else None,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "closed_at": self.closed_at,
            "server_closed": self.server_closed,
            "cancelled": self.cancelled,
            "tokens_sent": self.tokens_sent,
            "usage": self.usage,
            "text": self.text,
            "reasoning": self.reasoning,
        }


class _State:
    """Shared by the server thread and the callers; ``cond`` guards ``records``."""

    def __init__(self, defaults: Scenario, api_key: str | None, max_records: int) -> None:
        self.defaults = defaults
        self.api_key = api_key
        self.max_records = max_records
        self.cond = threading.Condition()
        self.records: list[MockRequest] = []
        self.connections: set[_Connection] = set()
        self.connection_ids = itertools.count(1)
        self.stopped = False

    def record(self, request: _Request, connection: int) -> MockRequest:
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        with self.cond:
            rec = MockRequest(
                index=len(self.records),
                method=request.method,
                path=request.path,
                headers=request.headers,
                json=body,
                connection=connection,
                started_at=time.time(),
            )
            if len(self.records) < self.max_records:
                self.records.append(rec)
                self.cond.notify_all()
        return rec


# ---------------------------------------------------------------------------------------------
# Wire formats
# ---------------------------------------------------------------------------------------------


def _sse(data: bytes, event: bytes | None = None) -> bytes:
    head = b"event: " + event + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


def _prompt_tokens(body: dict[str, Any]) -> int:
    texts = [_content_text(m.get("content")) for m in body.get("messages") or []]
    texts.append(_content_text(body.get("system")))
    return max(1, sum(len(t.split()) for t in texts))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class _Format:
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


class _OpenAI(_Format):
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
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return _sse(orjson.dumps(chunk))

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def reasoning(self, text: str) -> bytes:
        return self._chunk({self.s.reasoning_field: text})

    def text(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def tool(self, name: str) -> bytes:
        start = {"index": 0, "id": "call_mock_0", "type": "function"}
        out = self._chunk({"tool_calls": [{**start, "function": {"name": name, "arguments": ""}}]})
        for piece in _TOOL_ARGUMENTS:
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
        out = self._chunk({}, finish)
        if usage and self.include_usage:
            counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            counts["total_tokens"] = usage[0] + usage[1]
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


class _Anthropic(_Format):
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
        for piece in ("", *_TOOL_ARGUMENTS):
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


class _Ollama(_Format):
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
        arguments = orjson.loads("".join(_TOOL_ARGUMENTS))
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


_FORMATS: dict[tuple[str, str], type[_Format]] = {
    ("POST", "/v1/chat/completions"): _OpenAI,
    ("POST", "/chat/completions"): _OpenAI,
    ("POST", "/v1/messages"): _Anthropic,
    ("POST", "/api/chat"): _Ollama,
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


def _json_response(status: int, obj: Any) -> bytes:
    return _response(status, orjson.dumps(obj), b"application/json")


def _error_response(fmt: str, status: int, model: str, key: str, message: str = "") -> bytes:
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
_STALL = object()  # write nothing more, keep the connection open
_DROP = object()  # close the connection (FIN) with the body unfinished
_RESET = object()  # abort the connection with an RST
_END = object()
_LAST_CHUNK = b"0\r\n\r\n"
_IN_STREAM = frozenset({"stream_error", "stall", "drop", "reset", "malformed", "unknown_shape"})
_TERMINAL = frozenset({"stream_error", "stall", "drop", "reset"})


def _head(content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n" % content_type
    )


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""


def _script(s: Scenario) -> Iterator[tuple[str, Any]]:
    """The abstract steps of a stream: sleep, reasoning, text, fault, tool, end."""
    fault = s.fault if s.fault in _IN_STREAM else None
    fault_at = s.fault_after
    sent = 0
    interval = s.interval_ms / 1000
    if s.delay_ms:
        yield "sleep", s.delay_ms / 1000
    count, answer = s.answer()
    plan = itertools.chain(
        (("reasoning", i) for i in range(s.reasoning)),
        (("text", i) for i in range(count)),
    )
    for kind, seq in plan:
        if fault and sent == fault_at:
            yield "fault", fault
            if fault in _TERMINAL:
                return
            fault = None
        if sent and interval:
            yield "sleep", interval
        yield kind, (s.think(seq) if kind == "reasoning" else answer(seq))
        sent += 1
    if fault:
        yield "fault", fault
        if fault in _TERMINAL:
            return
    if s.tool_call:
        yield "tool", s.tool_call
    yield "end", None


def _stream(rec: MockRequest, fmt: _Format) -> Iterator[object]:
    s = fmt.s
    yield _head(fmt.content_type)
    yield _chunk(fmt.opening())
    for kind, value in _script(s):
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
            yield _STALL if value == "stall" else _DROP
        elif value == "reset":
            yield 0.05  # let the tokens before it reach the client: an RST discards them
            yield _RESET
        else:
            yield _chunk(fmt.malformed() if value == "malformed" else fmt.unknown_shape())


def _completion(rec: MockRequest, fmt: _OpenAI) -> Iterator[object]:
    """A non-streaming OpenAI chat completion (``stream`` false or absent)."""
    s = fmt.s
    count, answer = s.answer()
    text = "".join(answer(i) for i in range(count))
    rec.text_parts.append(text)
    rec.tokens_sent = count
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if s.tool_call:
        function = {"name": s.tool_call, "arguments": "".join(_TOOL_ARGUMENTS)}
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
    yield _json_response(200, body)


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _presented_key(fmt: str, headers: dict[str, str]) -> str:
    if fmt == "anthropic":
        return headers.get("x-api-key", "")
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else ""


def _generation(state: _State, rec: MockRequest, request: _Request) -> Iterator[object]:
    fmt_type = _FORMATS[(request.method, request.path)]
    rec.format = fmt = fmt_type.name
    body = rec.json
    if not isinstance(body, dict):
        rec.status = 400
        yield _error_response(fmt, 400, "", "", "mock upstream: the body must be a JSON object")
        return
    model = str(body.get("model") or "mock-model")
    key = _presented_key(fmt, rec.headers)
    try:
        s = state.defaults.apply(model)
        s = s.apply(rec.headers.get("x-mock", ""))
        s = s.apply(_last_user_text(body.get("messages")))
    except ValueError as exc:
        rec.status = 400
        yield _error_response(fmt, 400, model, key, f"mock upstream: {exc}")
        return
    rec.scenario = s
    header_delay = s.header_delay_ms / 1000
    if s.fault == "slow_headers" and not header_delay:
        header_delay = 3600.0
    if header_delay:
        yield header_delay
    if s.fault == "hangup":
        yield _DROP
        return
    status = int(s.fault[5:]) if s.fault and s.fault.startswith("http_") else 200
    if status == 200 and state.api_key is not None and key != state.api_key:
        status = 401
    streaming = body.get("stream", fmt == "ollama")
    if status == 200 and not streaming and fmt != "openai":
        rec.status = 400
        yield _error_response(fmt, 400, model, key, "mock upstream: only stream=true is served")
        return
    rec.status = status
    if status != 200:
        yield _error_response(fmt, status, model, key)
        return
    format_ = fmt_type(rec, s, body)
    if streaming:
        yield from _stream(rec, format_)
    else:
        yield from _completion(rec, cast(_OpenAI, format_))


def _respond(state: _State, conn: _Connection, request: _Request) -> Iterator[object]:
    if request.path.startswith("/_mock/"):
        if request.method == "GET" and request.path == "/_mock/requests":
            since = int(parse_qs(request.query).get("since", ["0"])[0] or 0)
            with state.cond:
                records = list(state.records[since:])
            yield _json_response(200, [r.to_dict() for r in records])
        else:
            yield _json_response(404, {"error": {"message": "no such mock route"}})
        return
    rec = conn.track(state.record(request, conn.id))
    key = (request.method, request.path)
    if key in _FORMATS:
        yield from _generation(state, rec, request)
        return
    rec.status = 200
    if key in (("GET", "/v1/models"), ("GET", "/models")):
        models = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "ssegate-mock"}
            for name in ("mock-model", "mock-reasoner")
        ]
        yield _json_response(200, {"object": "list", "data": models})
    elif key == ("GET", "/api/tags"):
        tag = {"name": "mock-model", "model": "mock-model", "size": 0, "digest": "0" * 64}
        yield _json_response(200, {"models": [tag]})
    else:
        rec.status = 404
        message = f"mock upstream: no route {request.method} {request.path}"
        yield _json_response(404, {"error": {"message": message, "type": "not_found"}})


# ---------------------------------------------------------------------------------------------
# HTTP/1.1: a small request parser and one asyncio protocol per connection
# ---------------------------------------------------------------------------------------------

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parse(buf: bytearray) -> tuple[_Request | None, int, dict[str, str] | None]:
    """``(request, bytes used, headers)``; ``request`` is None until the body is complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise _BadRequest(431)
        return None, 0, None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest(400)
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = _dechunk(buf, start)
        if dechunked is None:
            return None, 0, headers
        body, used = dechunked
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest(400) from None
        if length > _MAX_BODY or length < 0:
            raise _BadRequest(413)
        if len(buf) - start < length:
            return None, 0, headers
        body, used = bytes(buf[start : start + length]), start + length
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    url = urlsplit(target)
    return _Request(method, url.path, url.query, headers, body, keep_alive), used, headers


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        except ValueError:
            raise _BadRequest(400) from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            return None if end < 0 else (bytes(body), end + 4)
        if eol + 4 + size > len(buf):
            return None
        body += buf[eol + 2 : eol + 2 + size]
        if len(body) > _MAX_BODY:
            raise _BadRequest(413)
        pos = eol + 4 + size


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, drives response generators with loop timers."""

    def __init__(self, state: _State, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.id = next(state.connection_ids)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.response: Iterator[object] | None = None
        self.record: MockRequest | None = None
        self.records: list[MockRequest] = []
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.paused = False
        self.waiting = False
        self.continued = False

    def track(self, rec: MockRequest) -> MockRequest:
        self.record = rec
        self.records.append(rec)
        return rec

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.response is None:
            self._next_request()
        elif len(self.buffer) > _MAX_HEAD + _MAX_BODY and self.transport:
            self.transport.abort()  # a client pipelining without bound

    def eof_received(self) -> bool:
        return False  # the client is done: close, which reports connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        now = time.time()
        self.state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.response is not None:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
            self.response = None
        for rec in self.records:
            rec.closed_at = now
            rec.closed.set()
        self.records.clear()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.waiting:
            self.waiting = False
            self._step()

    def _next_request(self) -> None:
        transport = self.transport
        while self.response is None and self.buffer and transport is not None:
            try:
                request, used, headers = _parse(self.buffer)
            except _BadRequest as exc:
                transport.write(_json_response(exc.status, {"error": {"message": "bad request"}}))
                transport.close()
                return
            if request is None:
                if headers and headers.get("expect", "").lower() == "100-continue":
                    if not self.continued:
                        self.continued = True
                        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            del self.buffer[:used]
            self.continued = False
            self.keep_alive = request.keep_alive
            self.response = _respond(self.state, self, request)
            self._step()

    def _step(self) -> None:
        self.timer = None
        response, transport = self.response, self.transport
        if response is None or transport is None:
            return
        out: list[bytes] = []
        try:
            while not self.paused:
                item = next(response, _END)
                if type(item) is bytes:
                    out.append(item)
                    continue
                if out:  # coalesce everything up to a pause into one write
                    transport.write(b"".join(out))
                    out.clear()
                if type(item) is float:
                    self.timer = self.loop.call_later(item, self._step)
                    return
                if item is _END:
                    self._finish()
                elif item is _DROP or item is _RESET:
                    if self.record is not None:
                        self.record.server_closed = True
                    if item is _RESET:
                        sock = transport.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        transport.abort()
                    else:
                        transport.close()
                return  # _END, _DROP, _RESET, _STALL
        except Exception:
            _log.exception("mock upstream response failed")
            transport.abort()
            return
        if out:
            transport.write(b"".join(out))
        self.waiting = True

    def _finish(self) -> None:
        if self.record is not None:
            self.record.ended_at = time.time()
        self.response = None
        self.record = None
        if not self.keep_alive and self.transport is not None:
            self.buffer.clear()  # nothing more is served on this connection
            self.transport.close()
        elif self.buffer:
            self.loop.call_soon(self._next_request)


# ---------------------------------------------------------------------------------------------
# Running it: in a background thread (tests) or blocking (CLI)
# ---------------------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is part of uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(
    state: _State,
    host: str,
    port: int,
    started: Callable[[asyncio.AbstractEventLoop, asyncio.Server], None],
    *,
    handle_signals: bool = False,
) -> None:
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        server = loop.run_until_complete(
            loop.create_server(lambda: _Connection(state, loop), host, port, backlog=4096)
        )
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, loop.stop)
        started(loop, server)
        try:
            loop.run_forever()
        finally:
            server.close()
            for conn in list(state.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0))  # let connection_lost callbacks run
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 8400,
    *,
    api_key: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    **defaults: Any,
) -> None:
    """Serve the mock upstream until SIGINT/SIGTERM (blocking; for ``ssegate mock-upstream``).

    ``defaults`` are :class:`Scenario` fields; ``on_ready`` gets the URL once listening (useful
    with ``port=0``). With ``api_key``, requests must present it (else HTTP 401).
    """
    state = _State(Scenario(**defaults), api_key, max_records=10_000)

    def started(loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        bound = server.sockets[0].getsockname()
        if on_ready is not None:
            on_ready(f"http://{_url_host(host)}:{bound[1]}")

    _serve(state, host, port, started, handle_signals=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class MockUpstream:
    """The mock upstream in a background thread, for tests and benchmarks::

        with MockUpstream(tokens=20, interval_ms=5) as mock:
            ... OpenAIProvider(ProviderConfig("openai", base_url=mock.url + "/v1")) ...
            close_time = mock.wait_for_close(0)

    ``defaults`` are :class:`Scenario` fields (settable later through :attr:`defaults`).
    ``max_records`` bounds the records kept (later requests are served, not recorded).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_records: int = 100_000,
        **defaults: Any,
    ) -> None:
        self.host = host
        self._port = port
        self._state = _State(Scenario(**defaults), api_key, max_records)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.url = ""

    @property
    def defaults(self) -> Scenario:
        """The scenario requests start from before their own directives."""
        return self._state.defaults

    @defaults.setter
    def defaults(self, scenario: Scenario) -> None:
        self._state.defaults = scenario

    def start(self) -> MockUpstream:
        """Start serving; returns ``self`` once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def started(loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
            self._loop = loop
            self.port = server.sockets[0].getsockname()[1]
            self.url = f"http://{_url_host(self.host)}:{self.port}"
            ready.set()

        def run() -> None:
            try:
                _serve(self._state, self.host, self._port, started)
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="ssegate-mock-upstream", daemon=True)
        self._thread.start()
        ready.wait(20)
        if failure or not self.url:
            raise RuntimeError("mock upstream did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Stop serving and abort open connections; pending waits end too."""
        with self._state.cond:
            self._state.stopped = True
            self._state.cond.notify_all()
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[MockRequest]:
        """A snapshot of the records, in arrival order."""
        with self._state.cond:
            return list(self._state.records)

    def clear(self) -> None:
        """Forget the records (indexes start again at 0)."""
        with self._state.cond:
            self._state.records.clear()

    def wait_for_request(self, index: int, timeout: float | None = 5.0) -> MockRequest:
        """Block until request ``index`` has arrived; ``TimeoutError`` after ``timeout``."""
        state = self._state
        with state.cond:
            arrived = state.cond.wait_for(
                lambda: len(state.records) > index or state.stopped, timeout
            )
            if not arrived:
                raise TimeoutError(f"request {index} did not arrive within {timeout}s")
            if len(state.records) <= index:
                raise RuntimeError("the mock upstream stopped")
            return state.records[index]

    def wait_for_close(self, index: int, timeout: float | None = 5.0) -> float:
        """Block until request ``index``'s connection closed; return when (``time.time()``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = self.wait_for_request(index, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not rec.closed.wait(left) or rec.closed_at is None:
            raise TimeoutError(f"the connection of request {index} is still open")
        return rec.closed_at

    async def wait_for_close_async(self, index: int) -> float:
        """:meth:`wait_for_close` without blocking the event loop; bound it with
        ``anyio.fail_after()``.

        The wait runs in a worker thread that a cancel abandons; it ends at the latest when
        the mock stops (which closes every connection).
        """
        return await anyio.to_thread.run_sync(
            self.wait_for_close, index, None, abandon_on_cancel=True
        )


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def blackhole_url() -> Iterator[str]:
    """A loopback URL where ``connect()`` hangs, for connect-timeout tests.

    A socket listens with a backlog of 0 and never accepts; once its accept queue is full,
    Linux drops further SYNs, so a client's connect times out exactly as with an unreachable
    host. (On systems that answer instead, the client connects and then waits for a response.)
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(8):  # fill the accept queue until a connect no longer completes
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(address)
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                break
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
