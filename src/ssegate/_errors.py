"""The root of ssegate's exceptions, and the errors of the library face.

Every error carries its wire form: a stable ``code`` (used in ``error`` events and JSON error
bodies) and ``retryable`` (whether the same request may succeed later), so a job turns any of
them into an ``error`` event without a lookup table. The tree, and where each branch lives::

    SsegateError                      code="internal"        (ssegate)
    ├── SseProtocolError              code="protocol"        (ssegate) the decoder met a bound
    ├── EmitterClosedError            code="emitter_closed"  (ssegate) send() after complete
    ├── UpstreamError                 code="upstream_error"  (ssegate.providers)
    │   ├── UpstreamConnectError      code="upstream_unreachable" or
    │   │                             "upstream_connect_timeout"   (retryable)
    │   ├── UpstreamTimeoutError      code="upstream_timeout"      (retryable)
    │   ├── UpstreamHTTPError         code by status: upstream_auth, upstream_not_found,
    │   │                             upstream_rate_limited, upstream_unavailable,
    │   │                             upstream_bad_request
    │   ├── UpstreamProtocolError     code="upstream_protocol"  malformed or truncated stream
    │   └── UpstreamStreamError       code from the provider's in-stream error object
    ├── StoreError                    code="store_error"     (ssegate.store)
    │   ├── StreamNotFoundError       code="not_found"
    │   ├── StoreUnavailableError     code="store_unavailable"  (retryable)
    │   ├── StoreFullError            code="store_full"         (retryable)
    │   ├── StreamGapError            code="gap"            events after Last-Event-ID trimmed
    │   ├── ProducerLostError         code="producer_lost"  the producer's lease expired
    │   └── IllegalTransitionError    code="illegal_transition"
    └── ShuttingDownError             code="shutting_down"  (retryable) the job manager is
                                      draining: no new generation (the gateway's 503)

Lower-layer exceptions (httpx, redis) are translated into these at the module that talks to
that layer and never travel further.
"""

from __future__ import annotations

__all__ = ["EmitterClosedError", "ShuttingDownError", "SseProtocolError", "SsegateError"]


class SsegateError(Exception):
    """Root of every error ssegate raises on purpose.

    ``message`` is what clients are told; ``detail`` (the message unless given) is what the log
    gets: it may name addresses and lower-layer exceptions, which clients never see.
    """

    code: str = "internal"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.detail = detail or message
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


class ShuttingDownError(SsegateError):
    """No new generation: the gateway is draining or closed."""

    code = "shutting_down"
    retryable = True
