"""What the HTTP providers share: :class:`ProviderConfig`, one streaming POST, fault mapping.

Every httpx exception is translated here into the :mod:`ssegate._errors` tree, so none leaves
``providers/``:

=====================================  ===========================================================
httpx (or upstream behaviour)          ssegate error (``code``, ``retryable``)
=====================================  ===========================================================
``ConnectError`` (refused, DNS, TLS)   ``UpstreamConnectError`` (``upstream_unreachable``, yes)
``ConnectTimeout``                     ``UpstreamConnectError`` (``upstream_connect_timeout``, yes)
``PoolTimeout``                        ``UpstreamConnectError`` (``upstream_unreachable``, yes)
``ReadTimeout`` / ``WriteTimeout``     ``UpstreamTimeoutError`` (``upstream_timeout``, yes): no
                                       byte for ``idle_timeout`` seconds, headers included
``RemoteProtocolError``/``ReadError``  ``UpstreamProtocolError`` "connection dropped" (yes)
status not 2xx                         ``UpstreamHTTPError`` (code from the status), with the
                                       upstream's own message from a bounded read of its body
``InvalidURL``/``UnsupportedProtocol`` ``UpstreamConnectError`` (``upstream_unreachable``, no)
=====================================  ===========================================================

Messages (what clients are told) say what happened without the upstream's address or the
exception behind it; the error's ``detail`` (what the log gets, with the stream id) names the
upstream by ``host:port`` and the lower-layer exception. Both pass through :func:`redact`, so
neither the API key, configured header values, nor URL credentials reach logs or clients.
An upstream's own error message is told to clients only where it is about the request itself
(HTTP 400, 413, 422: too long, a bad tool schema), never for our key, our quota or its faults.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import anyio
import httpx
import orjson

from .._errors import SseProtocolError
from ..codec import Decoder
from ._base import Delta, ReasoningDelta, TextDelta
from ._errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeoutError,
)
from ._transport import LeanTransport

__all__ = [
    "PROVIDER_KINDS",
    "HttpUpstream",
    "LineSplitter",
    "ProviderConfig",
    "SseParser",
    "StreamParser",
    "redact",
]

#: The provider kinds :func:`~ssegate.providers.create_provider` knows.
PROVIDER_KINDS = ("openai", "anthropic", "ollama", "demo")

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}
_ERROR_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 500
# How long to wait for the rest of the body after the upstream's end marker; reading it to the
# end lets httpx return the connection to the pool instead of closing it.
_DRAIN_SECONDS = 0.5
# Statuses whose upstream message is about the caller's request (too long, a bad tool schema),
# so the caller is told it; for the others (our key, our quota, its own faults) the log is.
_TOLD_STATUSES = frozenset({400, 413, 422})
# Stream error codes that mean "try again later".
_RETRYABLE_HINTS = ("overload", "rate_limit", "server_error", "api_error", "unavailable", "timeout")


@dataclass(frozen=True, slots=True, repr=False)
class ProviderConfig:
    """How to reach one LLM upstream.

    ``kind`` is one of ``openai`` (any OpenAI-compatible server), ``anthropic``, ``ollama``
    (native API) or ``demo`` (offline). ``base_url`` defaults per kind: for ``openai`` it
    includes ``/v1`` (requests go to ``{base_url}/chat/completions``); for ``anthropic`` and
    ``ollama`` it is the server root. ``connect_timeout`` bounds the TCP/TLS connect;
    ``idle_timeout`` is the longest silence accepted from the upstream, before and during the
    stream. ``headers`` are added to every request. ``max_connections`` bounds the pool;
    ``max_event_size`` bounds one SSE event or NDJSON line. ``default_max_tokens`` is sent to
    Anthropic (which requires ``max_tokens``) when the request has none. ``demo_rate`` is the
    demo model's speed in tokens per second (``None`` or ``0``: as fast as possible).
    ``coalesce`` merges the text (and reasoning) deltas that arrive in one read of the
    upstream into one delta, so a consumer that fell behind pays once per read, not once per
    token; a paced stream (a token per read) is unchanged.

    The repr hides ``api_key``, header values and URL credentials.
    """

    kind: str = "demo"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    max_connections: int = 1000
    max_event_size: int = 4 * 1024 * 1024
    default_max_tokens: int = 1024
    anthropic_version: str = "2023-06-01"
    demo_rate: float | None = 30.0
    coalesce: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ValueError(f"unknown provider kind {self.kind!r}; use one of {PROVIDER_KINDS}")
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("base_url must be an absolute http:// or https:// URL")
        if self.connect_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_connections < 1 or self.max_event_size < 1 or self.default_max_tokens < 1:
            raise ValueError("limits must be positive")
        if self.demo_rate is not None and self.demo_rate < 0:
            raise ValueError("demo_rate must be >= 0")
        # A plain dict would make the frozen config mutable through the back door.
        object.__setattr__(self, "headers", dict(self.headers))

    @property
    def resolved_base_url(self) -> str:
        """``base_url`` or the kind's default, without a trailing slash."""
        return (self.base_url or _DEFAULT_BASE_URLS.get(self.kind, "")).rstrip("/")

    @property
    def target(self) -> str:
        """``host:port`` of the upstream: how messages name it (never credentials or paths)."""
        parts = urlsplit(self.resolved_base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a message: the key, header values, URL password."""
        found = [self.api_key or "", *self.headers.values()]
        password = urlsplit(self.resolved_base_url).password if self.kind != "demo" else None
        found.append(password or "")
        return tuple(s for s in found if len(s) >= 4)

    def __repr__(self) -> str:
        url = self.resolved_base_url
        parts = urlsplit(url)
        if parts.username or parts.password:
            url = url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)
        key = "'***'" if self.api_key else "None"
        return (
            f"ProviderConfig(kind={self.kind!r}, base_url={url!r}, api_key={key}, "
            f"connect_timeout={self.connect_timeout}, idle_timeout={self.idle_timeout}, "
            f"headers={sorted(self.headers)!r})"
        )


_KEY_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every secret and anything looking like an API key replaced by ``***``,
    cut to a bounded length."""
    for secret in secrets:
        text = text.replace(secret, "***")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub("***", text)
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "…"
    return text


class LineSplitter:
    """Split a byte stream into lines (LF or CRLF), refusing a line longer than ``max_line``."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete, non-blank lines that ``data`` finishes, without line endings."""
        self._buffer += data
        if b"\n" not in data:
            self._check()
            return []
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        self._check()
        out = []
        for line in lines:
            if len(line) > self._max:
                raise UpstreamProtocolError(f"upstream line longer than {self._max} bytes")
            line = line.rstrip(b"\r")
            if line.strip():
                out.append(bytes(line))
        return out

    def flush(self) -> bytes:
        """The unterminated rest of the stream (empty if the stream ended with a newline)."""
        rest = bytes(self._buffer).strip()
        self._buffer.clear()
        return rest

    def _check(self) -> None:
        if len(self._buffer) > self._max:
            raise UpstreamProtocolError(f"upstream line longer than {self._max} bytes")


def sanitize_code(raw: object) -> str:
    """A provider's error type or code as one of our codes: ``upstream_<snake_case>``.

    The prefix keeps a hostile upstream from impersonating our own codes (``gap``…).
    """
    text = re.sub(r"[^a-z0-9]+", "_", str(raw).lower()).strip("_")[:60]
    if not text:
        return "upstream_error"
    return text if text.startswith("upstream_") else f"upstream_{text}"


def stream_error(message: object, code: object, secrets: tuple[str, ...]) -> UpstreamStreamError:
    """The error for an error object found inside a 200 stream."""
    sane = sanitize_code(code) if code else "upstream_error"
    text = message if isinstance(message, str) and message else "upstream reported an error"
    retryable = any(hint in sane for hint in _RETRYABLE_HINTS)
    return UpstreamStreamError(
        redact(f"upstream error in stream: {text}", secrets), code=sane, retryable=retryable
    )


def loads_chunk(data: str | bytes, what: str) -> dict[str, Any]:
    """Parse one JSON chunk, which must be an object; else :class:`UpstreamProtocolError`.

    ``bytes`` are UTF-8, invalid sequences read as U+FFFD (what an SSE decoder does).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        try:
            if text is data:
                raise
            obj = orjson.loads(text)  # orjson refuses invalid UTF-8 that we replace
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                redact(f"malformed JSON in {what}: {text[:80]!r}")
            ) from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"unexpected {what}: not a JSON object")
    return obj


def error_message(body: bytes) -> str:
    """The upstream's own message from an error body (OpenAI, Anthropic, Ollama, FastAPI…)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        # An HTML error page from a proxy says nothing useful in a one-line message.
        return "" if text.startswith("<") else " ".join(text.split())[:200]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        for candidate in (err, obj.get("message"), obj.get("detail")):
            if isinstance(candidate, str):
                return candidate
    return ""


def map_httpx_error(exc: Exception, config: ProviderConfig) -> UpstreamError:
    """Translate an httpx exception (never re-raised) into our error tree."""
    where = config.target
    # httpx's ReadError on a reset has an empty message; the OS error under it says more.
    reason = str(exc) or str(exc.__context__ or "")
    cause = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    detail = redact(f"{where}: {cause}", config.secrets())
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"timed out after {config.connect_timeout:g}s connecting to the upstream"
        return UpstreamConnectError(message, code="upstream_connect_timeout", detail=detail)
    if isinstance(exc, httpx.PoolTimeout):
        message = f"no free connection to the upstream (pool of {config.max_connections})"
        return UpstreamConnectError(message, detail=detail)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError("cannot connect to the upstream", detail=detail)
    if isinstance(exc, httpx.TimeoutException):
        message = f"the upstream sent nothing for {config.idle_timeout:g}s"
        return UpstreamTimeoutError(message, detail=detail)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return UpstreamProtocolError("connection dropped by the upstream", detail=detail)
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return UpstreamConnectError("the upstream URL is invalid", retryable=False, detail=detail)
    return UpstreamError("the upstream request failed", detail=detail)


class StreamParser(Protocol):
    """Turns one upstream's response bytes into deltas, for :meth:`HttpUpstream.stream_deltas`."""

    #: The upstream's end marker, as named in the "ended early" message.
    terminator: str
    #: Whether the end marker was seen.
    done: bool

    def feed(self, data: bytes) -> Iterator[Delta]:
        """Yield the deltas ``data`` completes, in order; raise ``UpstreamError`` at a fault."""
        ...

    def end(self) -> Iterator[Delta]:
        """The body ended: yield what an unterminated last line holds."""
        ...

    def final(self) -> Iterator[Delta]:
        """After the end marker: yield the usage (if any) and the :class:`Finish`."""
        ...


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    # Reading the body to its end lets httpx return the connection to the pool instead of
    # closing it; a server that keeps the body open after its end marker gets a short grace.
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            async for _ in chunks:
                pass
        except httpx.HTTPError:
            pass  # the answer is complete; only the connection is lost


class SseParser:
    """Base for SSE upstreams: reads events with :class:`~ssegate.codec.Decoder` (the WHATWG
    rules, bounded by ``max_event_size``) and hands each to :meth:`on_event`."""

    terminator = "end marker"

    def __init__(self, config: ProviderConfig) -> None:
        self.done = False
        self.secrets = config.secrets()
        self._decoder = Decoder(
            max_line_size=config.max_event_size, max_event_size=config.max_event_size
        )

    def feed(self, data: bytes) -> Iterator[Delta]:
        """Read ``data`` and hand each complete event to :meth:`on_event`."""
        try:
            events = self._decoder.feed(data)
        except SseProtocolError as exc:
            raise UpstreamProtocolError(f"upstream stream broke a bound: {exc}") from None
        for event in events:
            yield from self.on_event(event.event or "message", event.data or "")
            if self.done:
                return

    def on_event(self, event: str, data: str) -> Iterator[Delta]:
        """Yield the deltas of one upstream event: its type (``message`` when the upstream
        named none) and its data (subclasses)."""
        raise NotImplementedError

    def end(self) -> Iterator[Delta]:
        """An unterminated last SSE event is never dispatched (WHATWG): nothing to add."""
        return iter(())

    def final(self) -> Iterator[Delta]:
        """Subclasses yield usage and finish."""
        raise NotImplementedError


def coalesce(deltas: Iterable[Delta]) -> list[Delta]:
    """``deltas`` in order, each run of consecutive :class:`TextDelta` (or
    :class:`ReasoningDelta`) merged into one; every other delta is kept as it is."""
    out: list[Delta] = []
    run: list[str] = []  # the texts of the run that out[-1] started
    for delta in deltas:
        if isinstance(delta, (TextDelta, ReasoningDelta)):
            if run and type(out[-1]) is type(delta):
                run.append(delta.text)
                continue
            _end_run(out, run)
            run = [delta.text]
        else:
            _end_run(out, run)
            run = []
        out.append(delta)
    _end_run(out, run)
    return out


def _merged(deltas: Iterator[Delta]) -> tuple[list[Delta], UpstreamError | None]:
    """:func:`coalesce` of ``deltas`` and the ``UpstreamError`` that cut them short, if any."""
    read: list[Delta] = []
    try:
        for delta in deltas:
            read.append(delta)
    except UpstreamError as exc:
        return coalesce(read), exc
    return coalesce(read), None


def _end_run(out: list[Delta], run: list[str]) -> None:
    if len(run) > 1:
        text = "".join(run)
        out[-1] = TextDelta(text) if isinstance(out[-1], TextDelta) else ReasoningDelta(text)


def _proxied(url: str) -> bool:
    """Whether the environment names a proxy for ``url``'s scheme (``NO_PROXY`` aside)."""
    proxies = urllib.request.getproxies()
    scheme = urlsplit(url).scheme
    return bool(proxies.get(scheme) or proxies.get("all"))


class HttpUpstream:
    """One provider's HTTP side: its client (pool) and a streaming POST with fault mapping."""

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.secrets = config.secrets()
        self._owns_client = client is None
        # The pool keeps as many idle connections as it may open: after a wave of streams
        # ends, the next wave reuses them instead of reconnecting (a TLS handshake each).
        # An idle connection still closes after the transport's keep-alive expiry.
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        transport: httpx.AsyncBaseTransport | None = None
        if client is None and not _proxied(config.resolved_base_url):
            # Our own HTTP/1.1 transport reads many tokens per call; with a proxy configured
            # httpx's own transport (which applies it, and NO_PROXY) is used instead.
            transport = LeanTransport(
                max_connections=config.max_connections,
                max_keepalive=limits.max_keepalive_connections,
            )
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.idle_timeout,
                write=config.idle_timeout,
                pool=config.connect_timeout,
            ),
            limits=limits,
            transport=transport,
        )
        self._timeout = self.client.timeout.as_dict()
        # Per path: its parsed URL and the headers every request to it carries. httpx's
        # build_request() merges and parses them again on each call (50 us, measured), once
        # per generation: a burst of 1,000 generations paid it 1,000 times.
        self._targets: dict[str, tuple[httpx.URL, httpx.Headers]] = {}

    def _request(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> httpx.Request:
        target = self._targets.get(path)
        if target is None:
            url = httpx.URL(self.config.resolved_base_url + path)
            base = httpx.Headers(self.client.headers)
            base.update({"content-type": "application/json", **self.config.headers})
            target = self._targets[path] = (url, base)
        url, base = target
        all_headers = base.copy()
        if headers:
            all_headers.update(headers)
        return httpx.Request(
            "POST",
            url,
            content=orjson.dumps(body),
            headers=all_headers,
            extensions={"timeout": self._timeout},
        )

    @asynccontextmanager
    async def post_stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST ``body`` as JSON and yield the 2xx response, still unread.

        The response (and on an early exit, its TCP connection) is closed when the block
        exits. httpx exceptions raised inside the block are translated too.
        """
        try:
            response = await self.client.send(self._request(path, body, headers), stream=True)
            try:
                if not 200 <= response.status_code < 300:  # redirects are not followed either
                    raise await self._status_error(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # Some servers ignore "stream": true, or answer an error with a 200.
                    raise await self._json_instead_of_stream(response)
                yield response
            finally:
                await response.aclose()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise map_httpx_error(exc, self.config) from None

    async def stream_deltas(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], parser: StreamParser
    ) -> AsyncGenerator[Delta, None]:
        """POST ``body`` and yield what ``parser`` makes of the streamed response.

        With ``config.coalesce``, consecutive text (and reasoning) deltas from one read of the
        response are merged into one (:func:`coalesce`). The stream ends normally only once
        ``parser.done`` (the upstream's end marker was seen); then ``parser.final()`` (usage,
        finish) follows after the connection was released. Closing this generator early
        closes the TCP connection before ``aclose()`` returns: the request lives inside
        ``client.stream()`` and is never left half-read.
        """
        async with (
            self.post_stream(path, body, headers) as response,
            aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks,
        ):
            merge = self.config.coalesce
            async for chunk in chunks:
                if merge:
                    # Tokens that arrived together travel on as one delta: a consumer that is
                    # behind pays once per read, not once per token. What came before a fault
                    # in the same read is still delivered, then the fault.
                    deltas, error = _merged(parser.feed(chunk))
                    for delta in deltas:
                        yield delta
                    if error is not None:
                        raise error
                else:
                    for delta in parser.feed(chunk):
                        yield delta
                if parser.done:
                    break
            else:
                for delta in parser.end():
                    yield delta
            if not parser.done:
                message = f"the upstream ended the stream early (no {parser.terminator})"
                raise UpstreamProtocolError(message, detail=f"{self.config.target}: {message}")
            await _drain(chunks)
        for delta in parser.final():
            yield delta

    async def _read_bounded(self, response: httpx.Response) -> bytes:
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass  # the status says enough; the message is a bonus
        return bytes(body[:_ERROR_BODY_LIMIT])

    async def _status_error(self, response: httpx.Response) -> UpstreamHTTPError:
        status = response.status_code
        said = redact(error_message(await self._read_bounded(response)), self.secrets)
        text = f"the upstream answered HTTP {status}"
        detail = f"{self.config.target} answered HTTP {status}" + (f": {said}" if said else "")
        if said and status in _TOLD_STATUSES:
            text += f": {said}"
        return UpstreamHTTPError(text, status=status, detail=detail)

    async def _json_instead_of_stream(self, response: httpx.Response) -> UpstreamError:
        message = error_message(await self._read_bounded(response))
        if message:
            return stream_error(message, "error", self.secrets)
        text = "the upstream answered application/json instead of a stream"
        return UpstreamProtocolError(text, detail=f"{self.config.target}: {text}")

    async def aclose(self) -> None:
        """Close the connection pool if this object created it."""
        if self._owns_client:
            await self.client.aclose()
