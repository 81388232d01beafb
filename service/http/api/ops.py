"""Operational routes: liveness, readiness and Prometheus metrics (never behind API keys)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.http.api.deps import MetricsDep
from service.wire.schemas.rest import HealthResponse

router = APIRouter(tags=["health"])


def readiness(request: Request) -> tuple[bool, str | None]:
    """Ready when the model is loaded and warm, the batch loop runs, and not shutting down."""
    return state_readiness(request.app.state)


def state_readiness(state: Any) -> tuple[bool, str | None]:
    """`readiness` from the app's state (shared with the gRPC front end)."""
    if getattr(state, "shutting_down", False):
        return False, "shutting down"
    plane = getattr(state, "dataplane", None)
    if plane is None:
        return False, "model not loaded"
    reason: str | None = plane.not_ready_reason()
    return reason is None, reason


@router.get("/v2/health/live", response_model=HealthResponse)
async def get_liveness() -> JSONResponse:
    """200 while the process is up."""
    body: HealthResponse = {"live": True}
    return JSONResponse(body)


@router.get(
    "/v2/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Not ready"}},
)
async def get_readiness(request: Request) -> JSONResponse:
    """200 when the model is loaded, warmed and serving; 503 otherwise."""
    ready, reason = readiness(request)
    body: HealthResponse = {"ready": ready}
    if ready:
        return JSONResponse(body)
    body["reason"] = reason or "not ready"
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", response_class=Response, include_in_schema=True)
async def get_metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition of request, batching and model metrics."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
