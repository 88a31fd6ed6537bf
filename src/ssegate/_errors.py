"""The ssegate exception tree.

Every error carries its wire form: a stable ``code`` (used in ``error`` events and JSON error
bodies) and ``retryable`` (whether the same request may succeed later), so a job turns any of
them into an ``error`` event without a lookup table::

    SsegateError                      code="internal"
    ├── SseProtocolError              code="protocol"        the SSE decoder met a bound
    ├── EmitterClosedError            code="emitter_closed"  send() after complete/disconnect
    ├── UpstreamError                 code="upstream_error"  anything the LLM upstream did
    │   ├── UpstreamConnectError      code="upstream_unreachable" or
    │   │                             "upstream_connect_timeout"   (retryable)
    │   ├── UpstreamTimeoutError      code="upstream_timeout"      (retryable)
    │   ├── UpstreamHTTPError         code by status: upstream_auth, upstream_not_found,
    │   │                             upstream_rate_limited, upstream_unavailable,
    │   │                             upstream_bad_request
    │   ├── UpstreamProtocolError     code="upstream_protocol"  malformed or truncated stream
    │   └── UpstreamStreamError       code from the provider's in-stream error object
    └── StoreError                    code="store_error"
        ├── StreamNotFoundError       code="not_found"
        ├── StoreUnavailableError     code="store_unavailable"  (retryable)
        ├── StoreFullError            code="store_full"         (retryable)
        ├── StreamGapError            code="gap"            events after Last-Event-ID trimmed
        ├── ProducerLostError         code="producer_lost"  the producer's lease expired
        └── IllegalTransitionError    code="illegal_transition"
    ShuttingDownError                 code="shutting_down"  (retryable) draining, no new work

Lower-layer exceptions (httpx, redis) are translated into these at the module that talks to
that layer and never travel further.
"""

from __future__ import annotations

__all__ = [
    "EmitterClosedError",
    "IllegalTransitionError",
    "ProducerLostError",
    "ShuttingDownError",
    "SseProtocolError",
    "SsegateError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "StreamGapError",
    "StreamNotFoundError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
]


class SsegateError(Exception):
    """Root of every error ssegate raises on purpose."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, object]:
        """The ``error`` event payload: ``{"code", "message", "retryable"}``."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class SseProtocolError(SsegateError):
    """The bytes being decoded break a bound (line or event too long)."""

    code = "protocol"


class EmitterClosedError(SsegateError):
    """``send()`` on an emitter that is complete, timed out, or whose client went away.

    The Python counterpart of the ``IOException`` Spring's ``SseEmitter.send`` throws.
    """

    code = "emitter_closed"


class UpstreamError(SsegateError):
    """The LLM upstream failed; ``status`` is its HTTP status when there was one."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        status: int | None = None,
    ):
        super().__init__(message, code=code, retryable=retryable)
        self.status = status


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, DNS, TLS, connect timeout)."""

    code = "upstream_unreachable"
    retryable = True


class UpstreamTimeoutError(UpstreamError):
    """The upstream went silent for longer than the idle timeout."""

    code = "upstream_timeout"
    retryable = True


_STATUS_CODES: dict[int, tuple[str, bool]] = {
    400: ("upstream_bad_request", False),
    401: ("upstream_auth", False),
    403: ("upstream_auth", False),
    404: ("upstream_not_found", False),
    408: ("upstream_timeout", True),
    413: ("upstream_bad_request", False),
    422: ("upstream_bad_request", False),
    429: ("upstream_rate_limited", True),
}


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status; ``code`` follows from the status."""

    def __init__(self, message: str, *, status: int):
        if status in _STATUS_CODES:
            code, retryable = _STATUS_CODES[status]
        elif status >= 500:
            code, retryable = "upstream_unavailable", True
        else:
            code, retryable = "upstream_error", False
        super().__init__(message, code=code, retryable=retryable, status=status)


class UpstreamProtocolError(UpstreamError):
    """The upstream's stream was malformed, of an unknown shape, or ended too early."""

    code = "upstream_protocol"
    retryable = True


class UpstreamStreamError(UpstreamError):
    """The upstream sent an error object inside a 200 stream (e.g. ``overloaded_error``)."""

    code = "upstream_error"


class StoreError(SsegateError):
    """The stream store failed."""

    code = "store_error"


class StreamNotFoundError(StoreError):
    """No such stream (never existed, expired, or not yours)."""

    code = "not_found"


class StoreUnavailableError(StoreError):
    """The store's backend (Redis) cannot be reached right now."""

    code = "store_unavailable"
    retryable = True


class StoreFullError(StoreError):
    """The store holds as many streams as it may."""

    code = "store_full"
    retryable = True


class StreamGapError(StoreError):
    """Events after ``after`` are no longer kept (the stream was capped and trimmed).

    ``first_id`` is the oldest id still kept. A resuming client is told so (an ``error`` event
    with code ``gap``) rather than silently missing events.
    """

    code = "gap"

    def __init__(self, stream_id: str, *, after: int, first_id: int):
        super().__init__(
            f"stream {stream_id}: events after id {after} are no longer kept "
            f"(the oldest kept id is {first_id})"
        )
        self.stream_id = stream_id
        self.after = after
        self.first_id = first_id


class ProducerLostError(StoreError):
    """The stream is still ``running`` but its producer's lease expired: no event will come."""

    code = "producer_lost"


class IllegalTransitionError(StoreError):
    """A status transition the table forbids, e.g. appending to a finished stream."""

    code = "illegal_transition"


class ShuttingDownError(SsegateError):
    """No new generation: the gateway is draining or closed."""

    code = "shutting_down"
    retryable = True
