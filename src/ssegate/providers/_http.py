"""The HTTP client the providers share: :class:`HttpUpstream`, one streaming POST, fault mapping.

How to reach the upstream is :class:`~ssegate.providers._config.ProviderConfig`; reading what
it sends is :mod:`~ssegate.providers._parsing`. This module runs the request.

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
upstream by ``host:port`` and the lower-layer exception. Both pass through
:func:`~ssegate.providers._config.redact`, so neither the API key, configured header values,
nor URL credentials reach logs or clients.
An upstream's own error message is told to clients only where it is about the request itself
(HTTP 400, 413, 422: too long, a bad tool schema), never for our key, our quota or its faults.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import httpx
import orjson

from ._base import Delta
from ._config import ProviderConfig, redact
from ._errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from ._parsing import StreamParser, coalesce, error_message, stream_error
from ._transport import LeanTransport

__all__ = ["HttpUpstream"]

_ERROR_BODY_LIMIT = 64 * 1024
# How long to wait for the rest of the body after the upstream's end marker; reading it to the
# end lets httpx return the connection to the pool instead of closing it.
_DRAIN_SECONDS = 0.5
# Statuses whose upstream message is about the caller's request (too long, a bad tool schema),
# so the caller is told it; for the others (our key, our quota, its own faults) the log is.
_TOLD_STATUSES = frozenset({400, 413, 422})


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


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    # Reading the body to its end lets httpx return the connection to the pool instead of
    # closing it; a server that keeps the body open after its end marker gets a short grace.
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            async for _ in chunks:
                pass
        except httpx.HTTPError:
            pass  # the answer is complete; only the connection is lost


def _merged(deltas: Iterator[Delta]) -> tuple[list[Delta], UpstreamError | None]:
    """:func:`coalesce` of ``deltas`` and the ``UpstreamError`` that cut them short, if any."""
    read: list[Delta] = []
    try:
        for delta in deltas:
            read.append(delta)
    except UpstreamError as exc:
        return coalesce(read), exc
    return coalesce(read), None


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
