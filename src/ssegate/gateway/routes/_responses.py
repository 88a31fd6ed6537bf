"""What the routes answer, as ``/openapi.json`` says it: the error bodies, the statuses each
route really uses, and the media types that are not JSON (event streams, Prometheus text).

FastAPI documents a ``422`` with its own body on every route that has parameters; the gateway
answers a bad query, path or header with ``400`` and only a bad ``/v1/streams`` body with
``422``, in its own shape. :func:`document` removes FastAPI's entry, so each route lists only
the statuses declared here (a test runs schemathesis against the schema to keep it so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

__all__ = [
    "SSE_EVENT",
    "EventStream",
    "Metrics",
    "document",
    "errors",
    "event_stream",
    "openai_errors",
]


class _GatewayErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", title="GatewayErrorDetail")

    code: str
    message: str


class GatewayError(BaseModel):
    """``{"error": {"code", "message"}}``: the gateway's error body (``code`` is stable)."""

    error: _GatewayErrorDetail


class _OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(title="OpenAIErrorDetail")

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}``: OpenAI's error body."""

    error: _OpenAIErrorDetail


_REASONS = {
    400: "Bad request: the error says what is wrong",
    401: "A missing or bad API key (or read token)",
    404: "No such stream, model or route",
    405: "Method not allowed on this resource (see Allow)",
    409: "The request does not fit the resource's state",
    413: "Request body too large",
    415: "The body is not JSON",
    422: "The body is not a valid request",
    429: "Rate-limited (see Retry-After)",
    502: "The LLM upstream failed",
    503: "Overloaded, draining, or the store is unavailable (see Retry-After)",
    504: "The LLM upstream timed out",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``statuses``, in the gateway's error shape."""
    return {s: {"model": GatewayError, "description": _REASONS[s]} for s in statuses}


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``statuses``, in OpenAI's error shape."""
    return {s: {"model": OpenAIErrorBody, "description": _REASONS[s]} for s in statuses}


#: One server-sent event, as a client's parser gives it (the schema of an event-stream body).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def event_stream(description: str) -> dict[str, Any]:
    """A ``responses=`` entry for a ``text/event-stream`` body."""
    return {"description": description, "content": {"text/event-stream": {"schema": SSE_EVENT}}}


class EventStream(Response):
    """``response_class`` of the SSE routes, so their success is documented as an event stream
    of :data:`SSE_EVENT` (the handlers return their own responses)."""

    media_type = "text/event-stream"


class Metrics(Response):
    """``response_class`` of ``/metrics``: the Prometheus text format."""

    media_type = "text/plain"


def _fix_operation(responses: dict[str, Any]) -> None:
    content = responses.get("422", {}).get("content", {})
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    if ref.endswith("/HTTPValidationError"):
        del responses["422"]
    for status, response in responses.items():
        content = response.get("content", {})
        if status.isdigit() and int(status) >= 400 and "application/json" not in content:
            # FastAPI files an error model under the route's media type (an event stream's).
            response["content"] = {"application/json": next(iter(content.values()), {})}
        elif "text/event-stream" in content:
            content["text/event-stream"] = {"schema": SSE_EVENT}


def _without_fastapi_422(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            _fix_operation(operation.get("responses", {}))
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def document(app: FastAPI) -> None:
    """Make ``app.openapi()`` list only the statuses the routes declare (see the module doc)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_fastapi_422(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
