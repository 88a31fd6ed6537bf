"""Errors of the OpenAI-compatible API, answered in OpenAI's shape.

:class:`OpenAIError` carries the status, the ``error`` object and ``x-should-retry``;
:class:`OpenAIRoute` answers every error raised under a route with one. Upstream faults are
answered as a gateway would (see ``_STATUS_BY_CODE``): an upstream that refuses *our* key is a
502, not a 401.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..._errors import SsegateError
from .._errors import ApiError
from .._models import ModelRoute, UnknownModelError
from .._state import GatewayState
from ._json_values import JsonValueError

__all__ = ["OpenAIError", "OpenAIRoute", "resolve_model", "stream_headers"]

log = logging.getLogger("ssegate.openai")

_STREAM_ID_HEADER = "x-ssegate-stream-id"


def stream_headers(stream_id: str) -> dict[str, str]:
    """The headers that name the gateway stream behind a response."""
    # x-request-id too: the SDK exposes it as ``_request_id`` on every result.
    return {_STREAM_ID_HEADER: stream_id, "x-request-id": stream_id}


# Gateway error codes → HTTP status. An upstream fault is a 502 unless a closer status says
# more: our caller's request was valid, the upstream failed (a 401 here would make the SDK raise
# AuthenticationError for a key the caller never sent). The upstream refusing the request
# itself (400/422: too long, bad tool schema) is the caller's to fix, so it stays a 400.
_STATUS_BY_CODE = {
    "upstream_bad_request": 400,
    "upstream_rate_limited": 429,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "upstream_connect_timeout": 504,
    "timeout": 504,
    "producer_lost": 503,
    "store_unavailable": 503,
    "store_full": 503,
    "shutting_down": 503,
}


# -- errors ---------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retryable: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _error_type(status)
        self.retryable = retryable
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(self, stream_id: str | None = None) -> Response:
        """The JSON response, with ``x-should-retry`` when retryability is known."""
        headers = dict(self.headers)
        if self.retryable is not None:
            headers["x-should-retry"] = "true" if self.retryable else "false"
        if stream_id is not None:
            headers.update(stream_headers(stream_id))
        body = orjson.dumps({"error": self.to_dict()})
        return Response(body, self.status, headers, media_type="application/json")

    @classmethod
    def from_gateway(cls, error: dict[str, Any]) -> OpenAIError:
        """The error for a gateway error payload ``{"code", "message", "retryable"}``."""
        code = str(error.get("code") or "internal")
        status = _STATUS_BY_CODE.get(code, 502 if code.startswith("upstream_") else 500)
        retryable = bool(error.get("retryable"))
        headers = {"Retry-After": "1"} if status == 503 and retryable else None
        message = str(error.get("message") or code)
        return cls(status, message, code=code, retryable=retryable, headers=headers)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def _param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        message = "We could not parse the JSON body of your request: it is not valid JSON."
        return OpenAIError(400, message, code="invalid_json")
    parts = [f"{_param(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    first = errors[0] if errors else {}
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing":
        message = "The request body must be a JSON object (Content-Type: application/json)."
        return OpenAIError(400, message, code="invalid_value")
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return OpenAIError(
        400, "; ".join(parts) or "invalid request", code=code, param=_param(first.get("loc", ()))
    )


class OpenAIRoute(APIRoute):
    """A route whose every error is answered in OpenAI's shape (the SDK maps the status)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return _validation_error(exc).response()
            except JsonValueError as exc:
                return OpenAIError(
                    400, exc.message, param=exc.param, code="invalid_value"
                ).response()
            except ApiError as exc:
                return OpenAIError(
                    exc.status, exc.message, code=exc.code, headers=exc.headers
                ).response()
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
                    # Bytes FastAPI could not decode (not UTF-8/16/32): say so.
                    message = "We could not parse the JSON body of your request: it is not UTF-8."
                    return OpenAIError(400, message, code="invalid_json").response()
                if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
                    message = (
                        "We could not parse the JSON body of your request: it nests too deeply."
                    )
                    return OpenAIError(400, message, code="invalid_json").response()
                message = exc.detail if isinstance(exc.detail, str) else "request failed"
                return OpenAIError(exc.status_code, message, headers=exc.headers).response()
            except SsegateError as exc:
                log.warning("request failed: %s (%s)", exc.code, exc.detail)
                return OpenAIError.from_gateway(exc.to_dict()).response()
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return OpenAIError(500, "internal server error", code="internal").response()

        return openai_handler


def resolve_model(state: GatewayState, name: str | None) -> ModelRoute:
    """The model's route, or OpenAI's 404 ``model_not_found``."""
    try:
        return state.models.resolve(name)
    except UnknownModelError:
        message = f"The model `{name}` does not exist or you do not have access to it."
        raise OpenAIError(404, message, param="model", code="model_not_found") from None
