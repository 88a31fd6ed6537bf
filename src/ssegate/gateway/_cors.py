"""Cross-origin requests: Starlette's CORS with JSON refusals, configured from the settings."""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, Response

__all__ = ["JsonCORSMiddleware"]


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in JSON like every other error."""

    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200 or not isinstance(response, PlainTextResponse):
            return response
        reason = bytes(response.body).decode("utf-8", "replace")
        refused = JSONResponse(
            {"error": {"code": "cors_refused", "message": reason}}, status_code=400
        )
        refused.headers["vary"] = "Origin"
        return refused
