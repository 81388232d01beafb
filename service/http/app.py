"""create_app(settings): the FastAPI application, its routes, middleware and error handlers;
its lifespan is the worker's Runtime (service/runtime/runtime.py) started and stopped."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.config import Settings
from service.errors import register_error_handlers
from service.http.api import docs, ops, rest
from service.http.api.guard import BodyBudget
from service.http.middleware import InFlight, RequestContextMiddleware, TracingMiddleware
from service.runtime import tracing
from service.runtime.fleet import Fleet
from service.runtime.metrics import Metrics
from service.runtime.runtime import Runtime
from service.serving.quota import QUOTA_FILE, Quota
from service.serving.repository import ModelRepository


def create_app(
    settings: Settings | None = None, repository: ModelRepository | None = None
) -> FastAPI:
    """Build the app. The lifespan loads the model (unless the repository handed in already
    serves one) and runs the batcher; nothing is loaded at import time. Works with
    `uvicorn --factory`."""
    settings = settings or Settings()
    models = repository or ModelRepository(settings)
    shared = Fleet.from_env()  # set by the supervisor of several workers
    metrics = Metrics()
    in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(
            settings, models, metrics, app.state,
            in_flight=lambda: in_flight.count, alone=in_flight.alone, shared=shared,
        )  # fmt: skip
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = ServingApp(
        title="mnist-serving",
        version=__version__,
        summary="Handwritten-digit model server: REST, KServe V2 / Open Inference Protocol.",
        lifespan=lifespan,
        docs_url=None,  # served by service.http.api.docs from local assets
        redoc_url=None,
        generate_unique_id_function=docs.operation_id,
        **_telemetry(settings),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = None
    app.state.fleet = None
    app.state.shutting_down = False
    app.state.api_keys = ring = settings.key_ring()
    # The keys' limits: in the fleet folder, shared by every worker, when there are several.
    app.state.quota = Quota(shared.folder / QUOTA_FILE if shared else None)
    app.state.quota.use(ring)
    app.state.body_budget = BodyBudget(settings.max_inflight_body_mib << 20)
    register_error_handlers(app)
    _document_body_models(app)
    app.include_router(ops.router)
    app.include_router(rest.router)
    from service.http.api import feedback

    app.include_router(feedback.router)
    from service.http.api import v2

    app.include_router(v2.router)
    app.include_router(v2.protected)
    if settings.admin_key:
        from service.http.api import admin

        app.include_router(admin.router)
    from service.http.api import web

    app.include_router(web.router)
    docs.install(app)
    static = Path(__file__).parent / "static"
    if static.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=static), name="static")
    if settings.cors_origins.strip():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    # One request context for the whole stack and for the lane, sharing the in-flight count.
    context: dict[str, Any] = {
        "metrics": metrics, "access_log": settings.access_log, "in_flight": in_flight,
    }  # fmt: skip
    app.add_middleware(RequestContextMiddleware, **context)
    # OTEL_* (service/runtime/tracing.py): the server span sits outside the request context.
    traced = tracing.configure()
    if not settings.cors_origins.strip() and not settings.opentelemetry:
        # CORS (preflights, headers) and FastAPI's telemetry act on every route: with either
        # on, every request takes the full stack.
        lane: ASGIApp = RequestContextMiddleware(rest.predict_lane, **context)
        app.add_lane(rest.predict_route, TracingMiddleware(lane) if traced else lane)
    if traced:
        app.add_middleware(TracingMiddleware)
    return app


class ServingApp(FastAPI):
    """FastAPI with lanes: a route's requests go straight to a plain ASGI app of its own
    (with the same request context middleware) instead of through Starlette's middleware
    stack and router, while nothing overrides a dependency (tests do, and then every
    request takes FastAPI's path). The route stays registered with FastAPI for the OpenAPI
    document and for that path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lanes: dict[tuple[str, str], tuple[ASGIApp, Any]] = {}

    def add_lane(self, route: APIRoute, lane: ASGIApp) -> None:
        for method in route.methods or ():
            self._lanes[(method, route.path)] = (lane, route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._lanes and not self.dependency_overrides:
            lane = self._lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                scope["app"] = self
                scope["route"] = lane[1]  # the route label of metrics, as the router sets
                await lane[0](scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _document_body_models(app: FastAPI) -> None:
    """Routes that read their JSON body themselves still document its schema."""
    from service.http.api.guard import add_body_schemas

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_body_schemas(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry switch (FastAPI versions that have it)."""
    # NOTE: with it on, FastAPI asks OpenTelemetry for its providers on every request,
    # even when no SDK is configured (cost: docs/decisions.md).
    if "telemetry" not in inspect.signature(FastAPI).parameters or settings.opentelemetry:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
