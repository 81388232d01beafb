"""create_app(settings): the FastAPI application, its lifespan and its error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__, process
from service.api import docs, ops, rest
from service.api.guard import BodyBudget
from service.batching import Batcher, InlineWhenIdle
from service.config import Settings
from service.dataplane import DataPlane
from service.errors import register_error_handlers
from service.fleet import Fleet, FleetMember
from service.logging_config import flush_logs
from service.metrics import Metrics
from service.middleware import InFlight, RequestContextMiddleware
from service.repository import ModelRepository

logger = logging.getLogger(__name__)


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
        restore_process = process.tune(settings)
        loop = asyncio.get_running_loop()
        # Load: the fleet's version when this is one of several workers.
        fleet = FleetMember(shared, models, settings.reload_timeout_s) if shared else None
        if not models.loaded:
            await asyncio.to_thread(
                fleet.load_desired if fleet else lambda: models.serve(models.load())
            )
        models.subscribe(lambda m: metrics.set_model(m.name, m.version, str(m.device)))
        # Start: the batcher, the data plane, gRPC, the signal handlers.
        batcher = _batcher(settings, models, metrics, in_flight)
        await batcher.start()
        metrics.track(in_flight=lambda: in_flight.count, queue_depth=lambda: batcher.queued_images)
        sampler = asyncio.create_task(_sample_gauges(metrics), name="gauges")
        plane = DataPlane(settings, models, batcher, metrics)
        grpc_server = await _start_grpc(app, settings, metrics)
        remove_hup = process.on_hangup(loop, lambda: _reload_on_hangup(loop, models, fleet))
        # NOTE: with several workers a SIGTERM to the whole group reaches the workers as the
        # parent closes the shared listener (service/supervisor.py). A worker that closed at
        # once would reset connections still in the backlog and close fresh ones whose
        # request it had not read yet: it waits a moment for the parent's filter to act.
        process.on_stop_signals(
            loop,
            lambda: setattr(app.state, "shutting_down", True),
            process.WORKER_STOP_DELAY_S if settings.workers > 1 else 0,
        )
        if fleet is not None and fleet.join():
            _reload_on_hangup(loop, models, fleet)  # a reload was published while loading
        process.freeze_startup_objects()
        # Ready.
        app.state.dataplane, app.state.fleet, app.state.shutting_down = plane, fleet, False
        if grpc_server is not None:
            await grpc_server.refresh()  # SERVING now, not at the watcher's next look
        clf = models.current
        logger.info(
            "ready: %s v%s on %s (batching=%s, max_batch_size=%d)",
            clf.name, clf.version, clf.device, settings.batching, settings.max_batch_size,
        )  # fmt: skip
        try:
            yield
        finally:
            # Drain: readiness 503, refuse new RPCs, finish what is queued.
            app.state.shutting_down = True
            remove_hup()
            if grpc_server is not None:
                # Refuse new RPCs at once; running ones finish while the batcher drains.
                grpc_stopped = asyncio.create_task(grpc_server.stop(settings.drain_timeout_s))
            drained = await batcher.drain(settings.drain_timeout_s)
            if not drained:
                logger.warning("drain timeout: failing %d queued images", batcher.queued_images)
            if grpc_server is not None:
                await grpc_stopped
            # Stop.
            await batcher.stop(timeout_s=0)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            metrics.refresh()
            plane.close()
            app.state.dataplane = None
            restore_process()
            logger.info("stopped")
            # A worker process ends by re-raising SIGTERM: write the queued lines first.
            flush_logs()

    app = ServingApp(
        title="mnist-serving",
        version=__version__,
        summary="Handwritten-digit model server: REST, KServe V2 / Open Inference Protocol.",
        lifespan=lifespan,
        docs_url=None,  # served by service.api.docs from local assets
        redoc_url=None,
        generate_unique_id_function=docs.operation_id,
        **_telemetry(settings),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = None
    app.state.fleet = None
    app.state.shutting_down = False
    app.state.api_keys = settings.api_key_list()
    app.state.body_budget = BodyBudget(settings.max_inflight_body_mib << 20)
    register_error_handlers(app)
    _document_body_models(app)
    app.include_router(ops.router)
    app.include_router(rest.router)
    from service.api import v2

    app.include_router(v2.router)
    if settings.admin_key:
        from service.api import admin

        app.include_router(admin.router)
    from service.api import web

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
    if not settings.cors_origins.strip() and not settings.opentelemetry:
        # CORS (preflights, headers) and FastAPI's telemetry act on every route: with either
        # on, every request takes the full stack.
        app.add_lane(rest.predict_route, RequestContextMiddleware(rest.predict_lane, **context))
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


async def _start_grpc(app: FastAPI, settings: Settings, metrics: Metrics) -> Any:
    """The gRPC front end on this worker's loop, or None when MNIST_GRPC_PORT is 0."""
    if not settings.grpc_port:
        return None
    from service.rpc.server import GrpcServer  # grpcio is only imported when it is used

    server = GrpcServer(app.state, settings, metrics)
    app.state.grpc_port = await server.start()
    return server


def _document_body_models(app: FastAPI) -> None:
    """Routes that read their JSON body themselves still document its schema."""
    from service.api.guard import add_body_schemas

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_body_schemas(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _batcher(
    settings: Settings, models: ModelRepository, metrics: Metrics, in_flight: InFlight
) -> Batcher:
    return Batcher(
        lambda: models.current,
        max_batch_size=settings.max_batch_size,
        max_batch_wait_ms=settings.max_batch_wait_ms,
        max_queue_size=settings.max_queue_size,
        request_timeout_s=settings.request_timeout_s,
        enabled=settings.batching,
        observer=metrics,
        # NOTE: CPU only: measured there (docs/decisions.md); on CUDA the
        # forward is asynchronous and its synchronisation belongs off the event loop.
        inline=InlineWhenIdle(in_flight.alone)
        if settings.inline_when_idle and models.current.device.type == "cpu"
        else None,
    )


def _reload_on_hangup(
    loop: asyncio.AbstractEventLoop, models: ModelRepository, fleet: FleetMember | None
) -> None:
    """SIGHUP: one worker reloads the pinned version or the newest; one of several reloads
    to the version the fleet publishes (the parent relays SIGHUP after publishing it)."""
    logger.info("SIGHUP: reloading model")
    if fleet is not None:
        task: asyncio.Task[object] = loop.create_task(fleet.follow())
    else:
        task = loop.create_task(models.reload())
    task.add_done_callback(lambda t: _log_reload(t, models))


def _log_reload(task: asyncio.Task[object], models: ModelRepository) -> None:
    if task.cancelled() or task.exception() is not None:
        return  # a refusal is logged by the repository
    logger.info("reload finished: serving v%s", models.current.version)


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry switch (FastAPI versions that have it)."""
    # NOTE: with it on, FastAPI asks OpenTelemetry for its providers on every request,
    # even when no SDK is configured (cost: docs/decisions.md).
    if "telemetry" not in inspect.signature(FastAPI).parameters or settings.opentelemetry:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


async def _sample_gauges(metrics: Metrics, every_s: float = 0.1) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(every_s)
