"""The gateway's limits: request body size, prompt size, request rate and running streams per
key, subscribers per stream, and the memory a slow client may hold.

Each limit answers with a JSON error that says which limit was hit (docs/security.md):

=========================  ======  ==================================  ====================
limit                      status  code                                setting
=========================  ======  ==================================  ====================
request body bytes         413     ``payload_too_large``               ``max_body_bytes``
messages per request       422     ``too_many_messages``               ``max_messages``
prompt characters          422     ``prompt_too_long``                 ``max_prompt_chars``
requests per second / key  429     ``rate_limited`` + ``Retry-After``  ``rate_limit``,
                                                                       ``rate_burst``
running streams / key      429     ``too_many_streams`` + Retry-After  ``max_streams_per_key``
subscribers per stream     429     ``too_many_subscribers``            ``max_subscribers_…``
=========================  ======  ==================================  ====================

(The OpenAI-compatible routes answer the two prompt limits with 400, as OpenAI does.)

Per-key limits hold per process: with several instances behind a load balancer, a key may run
``max_streams_per_key`` streams and make ``rate_limit`` requests per second on *each*.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._jobs import JobObserver
from .._response import CloseReason, EventSourceResponse
from ..store import StreamInfo, StreamStatus
from ._errors import ApiError

__all__ = [
    "BodyLimitMiddleware",
    "EventStreamTracker",
    "JsonCORSMiddleware",
    "PromptLimitError",
    "RateLimiter",
    "StreamQuota",
    "TrackedEventSourceResponse",
    "check_prompt",
]


# -- request body ------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    """Raised from ``receive()`` once the body passes the limit (FastAPI turns other exceptions
    raised while reading the body into a 400, so the middleware answers this one itself)."""


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, counting bytes as they arrive.

    ``Content-Length`` over the limit is refused before a byte is read; a body without one
    (chunked) or one that lies is cut off as soon as the count passes the limit, so the app
    never holds more than ``max_bytes`` of one request in memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": f"the request body is larger than {self.max_bytes} bytes",
                    "type": "invalid_request_error",
                    "param": None,
                }
            },
            status_code=413,
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The server (h11/httptools) has refused a malformed Content-Length already.
                if value.strip().isdigit() and int(value) > self.max_bytes:
                    await self._refusal()(scope, receive, send)
                    return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The app answered something of its own after the body was cut (a 400 for a
                # body it could not parse): the client gets the 413 instead.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._refusal()(scope, receive, send)


# -- prompt size -------------------------------------------------------------------------------


class PromptLimitError(Exception):
    """A request's messages are over a limit; ``code``, ``message`` and ``param`` say which."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        # Content parts: only text counts here (an image's bytes are bounded by the body
        # size limit, and are not characters the model reads).
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
        return total
    return 0


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def check_prompt(messages: Sequence[Any], *, max_messages: int, max_chars: int) -> None:
    """Raise :class:`PromptLimitError` if there are more than ``max_messages`` messages or
    their text is longer than ``max_chars`` characters (0 disables either check).

    ``messages`` are pydantic models or dicts with ``content`` (a string or content parts) and
    optionally ``tool_calls``, whose arguments count as text too.
    """
    if max_messages and len(messages) > max_messages:
        raise PromptLimitError(
            "too_many_messages",
            f"too many messages: {len(messages)} (the limit is {max_messages})",
            "messages",
        )
    if not max_chars:
        return
    total = 0
    for message in messages:
        total += _text_chars(_field(message, "content"))
        for call in _field(message, "tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                total += len(function["arguments"])
        if total > max_chars:
            raise PromptLimitError(
                "prompt_too_long",
                f"the messages hold more than {max_chars} characters of text",
                "messages",
            )


# -- request rate ------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per identity: ``rate`` requests per second, bursts of up to ``burst``.

    Memory is bounded: at most ``max_identities`` buckets are kept, the least recently used
    one is dropped first (a dropped bucket comes back full, which only errs on the lenient
    side, and only for an identity idle longer than every other).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._max = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, identity: str) -> float:
        """Take one request from ``identity``'s bucket: ``0.0`` if allowed, else the seconds
        until the next request would be."""
        now = self._clock()
        tokens, last = self._buckets.pop(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[identity] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


# -- running streams per key -------------------------------------------------------------------


class StreamQuota(JobObserver):
    """Counts running streams per owner (a :class:`JobObserver` of the job manager) and
    refuses a new one past ``limit`` (0: no limit) with 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._owners: dict[str, str] = {}

    def running(self, owner: str) -> int:
        """How many streams ``owner`` runs in this process."""
        return self._running[owner]

    @contextmanager
    def reserve(self, owner: str | None) -> Iterator[None]:
        """Hold a place for one more stream of ``owner`` while it is being started.

        Raises :class:`ApiError` 429 when the owner is at the limit. Streams being started
        count too, so concurrent requests can't all pass the check before any has started.
        """
        if owner is None or not self.limit:
            yield
            return
        if self._running[owner] + self._pending[owner] >= self.limit:
            raise ApiError(
                429,
                "too_many_streams",
                f"this key already runs {self.limit} streams, the most it may; "
                "wait for one to finish or cancel one",
                headers={"Retry-After": "5"},
            )
        self._pending[owner] += 1
        try:
            yield
        finally:
            self._pending[owner] -= 1
            if not self._pending[owner]:
                del self._pending[owner]

    def on_start(self, info: StreamInfo) -> None:
        if info.owner is not None:
            self._owners[info.id] = info.owner
            self._running[info.owner] += 1

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        owner = self._owners.pop(stream_id, None)
        if owner is not None:
            self._running[owner] -= 1
            if self._running[owner] <= 0:
                del self._running[owner]


# -- slow clients ------------------------------------------------------------------------------


class EventStreamTracker:
    """The gateway's open event-stream responses: how many bytes they hold for slow clients,
    and how many ended for each :class:`CloseReason` (``send_timeout``: a client that stopped
    reading and was dropped)."""

    def __init__(self) -> None:
        self._live: set[EventSourceResponse] = set()
        self.closed: Counter[CloseReason] = Counter()
        #: Called with each response once it has ended (keep them quick).
        self.on_close: list[Callable[[EventSourceResponse], None]] = []

    def live(self) -> list[EventSourceResponse]:
        """The responses streaming now."""
        return list(self._live)

    def _opened(self, response: EventSourceResponse) -> None:
        self._live.add(response)

    def _closed(self, response: EventSourceResponse) -> None:
        self._live.discard(response)
        if response.close_reason is not None:
            self.closed[response.close_reason] += 1
        for callback in self.on_close:
            callback(response)


class TrackedEventSourceResponse(EventSourceResponse):
    """An :class:`EventSourceResponse` that a :class:`EventStreamTracker` counts while open."""

    def __init__(self, *args: Any, tracker: EventStreamTracker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._tracker._opened(self)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._tracker._closed(self)


# -- CORS ----------------------------------------------------------------------------------------


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in JSON like every other error."""

    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200 or not isinstance(response, PlainTextResponse):
            return response
        reason = bytes(response.body).decode("utf-8", "replace")
        refused = JSONResponse(
            {"error": {"code": "cors_refused", "message": reason}}, status_code=400
        )
        refused.headers["vary"] = "Origin"
        return refused
