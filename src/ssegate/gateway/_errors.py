"""JSON errors for the gateway's routes: ``{"error": {"code", "message"}}`` with the right status.

Bad input never yields a 500: request validation, malformed JSON, unknown routes and methods all
become 4xx JSON bodies here, and anything unexpected becomes a 500 JSON body without a traceback
(the traceback goes to the log).
"""

from __future__ import annotations

import logging
import re
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


def _documented_methods(request: Request) -> list[str] | None:
    """Every method ``/openapi.json`` lists for this path (Starlette's ``Allow`` names only the
    first route's, so ``OPTIONS /v1/streams/{id}`` said ``GET`` though ``DELETE`` exists);
    ``None`` for a path it does not document."""
    app: FastAPI = request.app
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = re.sub(
            r"\{[^}]+\}", "[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        )
        if re.fullmatch(pattern, request.url.path):
            return sorted(method.upper() for method in operations)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error the app can meet with a JSON body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", _validation_message(exc))
        if any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
            return error_response(422, "invalid_request", _validation_message(exc))
        # A query, path or header parameter: 400, as for the checks routes make themselves.
        missing = [e for e in errors if e.get("type") == "missing" or e.get("input") == ""]
        if missing:
            where, name = (*missing[0].get("loc", ()), "", "")[:2]
            message = f"{where} parameter {name!r} is required"
            return error_response(400, "missing_parameter", message)
        return error_response(400, "invalid_parameter", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (methods := _documented_methods(request)):
            headers["Allow"] = ", ".join(methods)
        if request.url.path.startswith("/v1/") and exc.status_code in (404, 405):
            # The OpenAI SDKs read these too: OpenAI's shape, which has our code and message.
            body = {"message": message, "type": "invalid_request_error", "param": None}
            return error_response(exc.status_code, code, message, headers=headers, extra=body)
        return error_response(exc.status_code, code, message, headers=headers)

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
