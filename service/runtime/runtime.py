"""Runtime: what one worker runs between start-up and shutdown, in the order it happens.

`start()` loads the model (the fleet's version with several workers), starts the batcher,
the data plane, the gauge sampler, gRPC and the signal handlers, and only then turns ready;
`stop()` turns readiness off, drains and stops them in reverse. The HTTP app's lifespan is
these two calls; the routes and the gRPC servicer read the published state (`dataplane`,
`fleet`, `shutting_down`) from the app state they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from service.config import Settings
from service.runtime import process
from service.runtime.fleet import Fleet, FleetMember
from service.runtime.logging_config import flush_logs
from service.runtime.metrics import Metrics
from service.serving.batching import Batcher, InlineWhenIdle
from service.serving.dataplane import DataPlane
from service.serving.repository import ModelRepository

logger = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 0.1


class Runtime:
    """One worker's serving objects and their lifecycle (start once, stop once)."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRepository,
        metrics: Metrics,
        state: Any,
        *,
        in_flight: Callable[[], int],
        alone: Callable[[], bool],
        shared: Fleet | None = None,
    ) -> None:
        self.settings, self.models, self.metrics, self.state = settings, models, metrics, state
        self._in_flight, self._alone, self._shared = in_flight, alone, shared
        self.fleet: FleetMember | None = None
        self.batcher: Batcher | None = None
        self.plane: DataPlane | None = None
        self._grpc: Any = None
        self._sampler: asyncio.Task[None] | None = None
        self._restore_process: Callable[[], None] = lambda: None
        self._remove_hup: Callable[[], None] = lambda: None

    async def start(self) -> None:
        settings, models, metrics = self.settings, self.models, self.metrics
        self._restore_process = process.tune(settings)
        loop = asyncio.get_running_loop()
        # Load: the fleet's version when this is one of several workers.
        shared = self._shared
        fleet = FleetMember(shared, models, settings.reload_timeout_s) if shared else None
        self.fleet = fleet
        if not models.loaded:
            await asyncio.to_thread(fleet.load_desired if fleet else models.start)
        models.subscribe(lambda m: metrics.set_model(m.name, m.version, str(m.device)))
        # Start: the batcher, the data plane, gRPC, the signal handlers.
        batcher = self.batcher = self._new_batcher()
        await batcher.start()
        metrics.track(in_flight=self._in_flight, queue_depth=lambda: batcher.queued_images)
        self._sampler = asyncio.create_task(_sample_gauges(metrics), name="gauges")
        self.plane = DataPlane(settings, models, batcher, metrics)
        self._grpc = await self._start_grpc()
        self._remove_hup = process.on_hangup(loop, lambda: _reload(loop, models, fleet))
        # NOTE: with several workers a SIGTERM to the whole group reaches the workers as the
        # parent closes the shared listener (service/runtime/supervisor.py). A worker that
        # closed at once would reset connections still in the backlog and close fresh ones
        # whose request it had not read yet: it waits a moment for the parent's filter.
        process.on_stop_signals(
            loop,
            lambda: setattr(self.state, "shutting_down", True),
            process.WORKER_STOP_DELAY_S if settings.workers > 1 else 0,
        )
        if fleet is not None and fleet.join():
            _reload(loop, models, fleet)  # a reload was published while loading
        process.freeze_startup_objects()
        # Ready.
        self.state.dataplane, self.state.fleet = self.plane, fleet
        self.state.shutting_down = False
        if self._grpc is not None:
            await self._grpc.refresh()  # SERVING now, not at the watcher's next look
        clf = models.current
        logger.info(
            "ready: %s v%s on %s (versions %s, policy %s; batching=%s, max_batch_size=%d)",
            clf.name, clf.version, clf.device, ", ".join(models.served.models), models.policy,
            settings.batching, settings.max_batch_size,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.batcher is None or self.plane is None:
            raise RuntimeError("Runtime.stop() before start()")
        timeout_s = self.settings.drain_timeout_s
        # Drain: readiness 503, refuse new RPCs, finish what is queued.
        self.state.shutting_down = True
        self._remove_hup()
        grpc_stopped = None
        if self._grpc is not None:
            # Refuse new RPCs at once; running ones finish while the batcher drains.
            grpc_stopped = asyncio.create_task(self._grpc.stop(timeout_s))
        if not await self.batcher.drain(timeout_s):
            logger.warning("drain timeout: failing %d queued images", self.batcher.queued_images)
        if grpc_stopped is not None:
            await grpc_stopped
        # Stop.
        await self.batcher.stop(timeout_s=0)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.metrics.refresh()
        self.plane.close()
        self.state.dataplane = None
        self._restore_process()
        logger.info("stopped")
        # A worker process ends by re-raising SIGTERM: write the queued lines first.
        flush_logs()

    async def _start_grpc(self) -> Any:
        """The gRPC front end on this worker's loop, or None when MNIST_GRPC_PORT is 0."""
        if not self.settings.grpc_port:
            return None
        from service.rpc.server import GrpcServer  # grpcio is only imported when it is used

        server = GrpcServer(self.state, self.settings, self.metrics)
        self.state.grpc_port = await server.start()
        return server

    def _new_batcher(self) -> Batcher:
        settings, models = self.settings, self.models
        return Batcher(
            lambda: models.current,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_size=settings.max_queue_size,
            request_timeout_s=settings.request_timeout_s,
            enabled=settings.batching,
            observer=self.metrics,
            # NOTE: CPU only: measured there (docs/decisions.md); on CUDA the
            # forward is asynchronous and its synchronisation belongs off the event loop.
            inline=InlineWhenIdle(self._alone)
            if settings.inline_when_idle and models.current.device.type == "cpu"
            else None,
        )


def _reload(
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


async def _sample_gauges(metrics: Metrics, every_s: float = GAUGE_INTERVAL_S) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(every_s)
