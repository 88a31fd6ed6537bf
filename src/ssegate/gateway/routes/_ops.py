"""Operations: ``/healthz`` (the process answers), ``/readyz`` (it should get traffic),
``/metrics`` (Prometheus text format; see ``gateway/_metrics.py`` for the series)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .._state import state_of
from ._responses import Metrics

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process serves HTTP."""
    return {"status": "ok"}


_READINESS = {"description": "Not ready: draining, or the store is down (same body)"}


@router.get("/readyz", summary="Readiness", response_model=None, responses={503: _READINESS})
async def readyz(request: Request) -> JSONResponse:
    """200 when the gateway should get new streams; 503 while draining or the store is down."""
    state = state_of(request)
    checks = await state.readiness()
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unready", "checks": checks},
        status_code=200 if ready else 503,
    )


_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text format, or OpenMetrics when the Accept header asks",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/openmetrics-text": {"schema": {"type": "string"}},
        },
    }
}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_model=None,
    response_class=Metrics,
    responses=_FORMATS,
)
async def metrics(request: Request) -> Response:
    """This instance's series in the Prometheus text format (OpenMetrics if asked for)."""
    body, content_type = state_of(request).metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
