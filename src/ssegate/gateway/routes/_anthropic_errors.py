"""Errors of the Anthropic Messages API door, answered in Anthropic's shape.

``{"type": "error", "error": {"type": ..., "message": ...}}`` with Anthropic's statuses
(https://docs.anthropic.com/en/api/errors): ``invalid_request_error`` 400,
``authentication_error`` 401, ``not_found_error`` 404, ``request_too_large`` 413,
``rate_limit_error`` 429, ``api_error`` 500, ``timeout_error`` 504, ``overloaded_error`` 529.
The official SDK picks its exception class from the status (``BadRequestError``,
``NotFoundError``, ``RateLimitError``, ``OverloadedError``…).

Upstream faults are answered as a gateway would, as on the Chat Completions door: an upstream
that refuses *our* key, answers 5xx, or fails in a way no closer status describes, is
``api_error`` with 502 (the SDK's ``InternalServerError``), not a 401 the caller could do
nothing about. An upstream that says it is overloaded (Anthropic's ``overloaded_error``), and a
gateway that is draining, full or has lost its store, is ``overloaded_error`` 529, which the SDK
retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..._errors import SsegateError
from ...codec import ServerSentEvent, encode
from .._errors import ApiError
from ._json_values import JsonValueError

__all__ = ["AnthropicError", "AnthropicErrorBody", "AnthropicRoute", "anthropic_errors"]

log = logging.getLogger("ssegate.anthropic")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Gateway error codes → HTTP status (see the module docstring).
_STATUS_BY_CODE = {
    "upstream_bad_request": 400,
    "upstream_rate_limited": 429,
    "upstream_rate_limit_error": 429,
    "upstream_overloaded_error": 529,
    "upstream_timeout": 504,
    "upstream_connect_timeout": 504,
    "timeout": 504,
    "producer_lost": 529,
    "store_unavailable": 529,
    "store_full": 529,
    "shutting_down": 529,
    "too_many_streams": 429,
    "rate_limited": 429,
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


class AnthropicError(Exception):
    """An error answered in Anthropic's shape, with ``x-should-retry`` when known."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        retryable: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type(status)
        self.retryable = retryable
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The whole error body: ``{"type": "error", "error": {"type", "message"}}``."""
        return {"type": "error", "error": {"type": self.type, "message": self.message}}

    def event(self) -> bytes:
        """The in-stream ``error`` event."""
        return encode(ServerSentEvent(data=orjson.dumps(self.to_dict()).decode(), event="error"))

    def response(self, extra_headers: Mapping[str, str] | None = None) -> Response:
        """The JSON response."""
        headers = dict(self.headers)
        if self.retryable is not None:
            headers["x-should-retry"] = "true" if self.retryable else "false"
        headers.update(extra_headers or {})
        body = orjson.dumps(self.to_dict())
        return Response(body, self.status, headers, media_type="application/json")

    @classmethod
    def from_gateway(cls, error: dict[str, Any]) -> AnthropicError:
        """The error for a gateway error payload ``{"code", "message", "retryable"}``."""
        code = str(error.get("code") or "internal")
        status = _STATUS_BY_CODE.get(code, 502 if code.startswith("upstream_") else 500)
        retryable = bool(error.get("retryable"))
        headers = {"Retry-After": "1"} if status in (429, 529) and retryable else None
        message = str(error.get("message") or code)
        return cls(status, message, retryable=retryable, headers=headers)

    @classmethod
    def from_api_error(cls, exc: ApiError) -> AnthropicError:
        """A gateway :class:`ApiError` (limits, quota, draining) in Anthropic's terms."""
        status = exc.status
        if status == 422:
            status = 400  # Anthropic answers every invalid request with 400
        elif status == 503:
            status = 529
        return cls(status, exc.message, headers=exc.headers)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _validation_error(exc: RequestValidationError) -> AnthropicError:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return AnthropicError(400, "The request body is not valid JSON.")
    first = errors[0] if errors else {}
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing":
        return AnthropicError(
            400, "The request body must be a JSON object (Content-Type: application/json)."
        )
    parts = [f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    return AnthropicError(400, "; ".join(parts) or "invalid request")


class AnthropicRoute(APIRoute):
    """A route whose every error is answered in Anthropic's shape (the SDK maps the status)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def anthropic_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except AnthropicError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return _validation_error(exc).response()
            except JsonValueError as exc:
                return AnthropicError(400, f"{exc.param}: {exc.message}").response()
            except ApiError as exc:
                return AnthropicError.from_api_error(exc).response()
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
                    return AnthropicError(400, "The request body is not UTF-8 JSON.").response()
                if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
                    return AnthropicError(400, "The request body nests too deeply.").response()
                message = exc.detail if isinstance(exc.detail, str) else "request failed"
                return AnthropicError(exc.status_code, message, headers=exc.headers).response()
            except SsegateError as exc:
                log.warning("request failed: %s (%s)", exc.code, exc.detail)
                return AnthropicError.from_gateway(exc.to_dict()).response()
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return AnthropicError(500, "internal server error").response()

        return anthropic_handler


# -- the schema ------------------------------------------------------------------------------


class _ErrorDetail(BaseModel):
    model_config = ConfigDict(title="AnthropicErrorDetail")

    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """``{"type": "error", "error": {"type", "message"}}``: Anthropic's error body."""

    type: Literal["error"]
    error: _ErrorDetail


_REASONS = {
    400: "invalid_request_error: the message says what is wrong",
    401: "authentication_error: a missing or bad API key",
    404: "not_found_error: no such model",
    409: "The generation was cancelled",
    413: "request_too_large: the body is too large",
    429: "rate_limit_error (see Retry-After)",
    500: "api_error: an internal error",
    502: "api_error: the LLM upstream failed",
    504: "timeout_error: the LLM upstream timed out",
    529: "overloaded_error: the upstream or the gateway is overloaded (see Retry-After)",
}


def anthropic_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``statuses``, in Anthropic's error shape."""
    return {s: {"model": AnthropicErrorBody, "description": _REASONS[s]} for s in statuses}
