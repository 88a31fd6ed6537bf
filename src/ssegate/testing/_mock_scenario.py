"""Scenarios of the mock upstream: what it streams for one request, chosen by ``[[directives]]``
(the table is in the module docstring of ``ssegate.testing._mock_upstream``), the abstract
steps a scenario plays, and the record of what the mock received and did (:class:`MockRequest`).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["TOOL_ARGUMENTS", "MockRequest", "Scenario", "script"]

_DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::([^\]]*))?\]\]")
_FAULTS = re.compile(
    r"http_[1-5][0-9][0-9]|stream_error|stall|drop|reset|malformed|unknown_shape|no_end"
    r"|slow_headers|hangup"
)
_WORDS = {"en": "tok{} ", "zh": "第{}个词 ", "emoji": "🚀{} ", "mixed": "tok{}·中文·🚀 "}
_TEXT_TOKEN = re.compile(r"\S+\s*|\s+")
TOOL_ARGUMENTS = ('{"city": ', '"Paris", ', '"unit": "celsius"}')


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
    "openai_extras": _flag,
    "refusal": _flag,
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
    openai_extras: bool = False
    refusal: bool = False
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


# ---------------------------------------------------------------------------------------------
# Steps: a scenario as abstract steps, before any wire format
# ---------------------------------------------------------------------------------------------

_IN_STREAM = frozenset({"stream_error", "stall", "drop", "reset", "malformed", "unknown_shape"})
_TERMINAL = frozenset({"stream_error", "stall", "drop", "reset"})


def script(s: Scenario) -> Iterator[tuple[str, Any]]:
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
