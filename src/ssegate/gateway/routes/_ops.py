"""Operations: ``/healthz`` (the process answers), ``/readyz`` (it should get traffic),
``/metrics`` (Prometheus text format; see ``gateway/_metrics.py`` for the series)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .._state import state_of

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", response_model=None)
async def readyz(request: Request) -> JSONResponse:
    """200 when the gateway should get new streams; 503 while draining or the store is down."""
    state = state_of(request)
    checks = await state.readiness()
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_model=None)
async def metrics(request: Request) -> Response:
    """This instance's series in the Prometheus text format (OpenMetrics if asked for)."""
    body, content_type = state_of(request).metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
