"""The upstream's errors: anything the LLM upstream did, each with its ``code`` and
``retryable`` (the tree is drawn in :mod:`ssegate._errors`). httpx exceptions become these in
this package and never leave it."""

from __future__ import annotations

from .._errors import SsegateError

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
]


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
        detail: str | None = None,
    ):
        super().__init__(message, code=code, retryable=retryable, detail=detail)
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

    def __init__(self, message: str, *, status: int, detail: str | None = None):
        if status in _STATUS_CODES:
            code, retryable = _STATUS_CODES[status]
        elif status >= 500:
            code, retryable = "upstream_unavailable", True
        else:
            code, retryable = "upstream_error", False
        super().__init__(message, code=code, retryable=retryable, status=status, detail=detail)


class UpstreamProtocolError(UpstreamError):
    """The upstream's stream was malformed, of an unknown shape, or ended too early."""

    code = "upstream_protocol"
    retryable = True


class UpstreamStreamError(UpstreamError):
    """The upstream sent an error object inside a 200 stream (e.g. ``overloaded_error``)."""

    code = "upstream_error"
