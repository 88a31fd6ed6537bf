"""JSON errors for the gateway's routes: ``{"error": {"code", "message"}}`` with the right status.

Bad input never yields a 500: request validation, malformed JSON, unknown routes and methods all
become 4xx JSON bodies here, and anything unexpected becomes a 500 JSON body without a traceback
(the traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from .._errors import SsegateError
from ..store import StoreUnavailableError, StreamNotFoundError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger("ssegate.gateway")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise in a route to answer ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A JSON error response."""
    body: dict[str, Any] = {"code": code, "message": message}
    if extra:
        body.update(extra)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> str:
    messages = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        messages.append(f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}")
    return "; ".join(messages) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error the app can meet with a JSON body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        json_invalid = any(e.get("type") == "json_invalid" for e in exc.errors())
        status = 400 if json_invalid else 422
        code = "invalid_json" if json_invalid else "invalid_request"
        return error_response(status, code, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(StreamNotFoundError)
    async def _not_found(request: Request, exc: StreamNotFoundError) -> Response:
        return error_response(404, "not_found", "no such stream")

    @app.exception_handler(StoreUnavailableError)
    async def _store_down(request: Request, exc: StoreUnavailableError) -> Response:
        return error_response(
            503, exc.code, "the stream store is unavailable", headers={"Retry-After": "1"}
        )

    @app.exception_handler(SsegateError)
    async def _ssegate(request: Request, exc: SsegateError) -> Response:
        log.warning("request failed: %s (%s)", exc.code, exc.detail)
        status = 503 if exc.retryable else 500
        return error_response(status, exc.code, exc.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error")
