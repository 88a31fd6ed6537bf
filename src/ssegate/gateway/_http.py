"""uvicorn's httptools protocol with bounds on the request head and on the time to send it.

uvicorn (0.55) bounds neither: with httptools it buffers a request head of any size (an 8 MB
header was answered 200), and it has no read deadline at all: ``timeout_keep_alive`` only runs
*between* requests, after a response. A connection that never sends a byte, a head that stops
half-way, or a body that stops half-way was held for as long as the client liked. Here:

* the bytes of a request line and headers are counted as they arrive; past ``max_head_bytes``
  the connection gets ``431 Request Header Fields Too Large`` (JSON) and is closed;
* the head must arrive within ``head_timeout`` seconds of the connection opening (or of the
  next request's first byte on a kept-alive one): a silent connection is closed, a partial head
  gets ``408 Request Timeout`` (JSON);
* the body must arrive within ``body_timeout`` seconds of the head: else ``408`` if no response
  has started, and the connection is closed (the app sees a disconnect).

All before or beside the app: nothing here reads or delays a response.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BoundedHttpToolsProtocol", "bounded_http_protocol"]

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0


def _error_response(status: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that refuses request heads over ``max_head_bytes`` and
    requests whose head or body arrives too slowly."""

    max_head_bytes = DEFAULT_MAX_HEAD_BYTES
    head_timeout = DEFAULT_HEAD_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_body = False
        self._in_head = False  # a request has begun and its head is not complete
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.head_timeout, self._head_late)  # a silent connection is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            # Count only the head: a body sent in the same packet is not part of it.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    b"431 Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request head is larger than {self.max_head_bytes} bytes",
                )
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.head_timeout, self._head_late)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        self._arm(self.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # -- deadlines ---------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_late(self) -> None:
        self._deadline = None
        if self._responding():
            # The next request's head while a response streams (pipelining): it is read
            # once that response ends; check again later rather than cut the response.
            self._arm(self.head_timeout, self._head_late)
            return
        if not self._in_head:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(
            b"408 Request Timeout",
            "request_timeout",
            f"the request head did not arrive within {self.head_timeout:g} s",
        )

    def _body_late(self) -> None:
        self._deadline = None
        self._refuse(
            b"408 Request Timeout",
            "request_timeout",
            f"the request body did not arrive within {self.body_timeout:g} s",
        )

    def _refuse(self, status: bytes, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error unless this request's response has started (or
        a response is streaming); close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        between_requests = cycle is not None and cycle.response_complete and not self._in_body
        if not answered or between_requests:
            self.transport.write(_error_response(status, code, message))
        self.transport.close()


def bounded_http_protocol(
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    *,
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with the given bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout": head_timeout,
            "body_timeout": body_timeout,
        },
    )
