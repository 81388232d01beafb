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
from service.runtime import process, tracing
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
        quota = getattr(self.state, "quota", None)
        self.plane = DataPlane(settings, models, batcher, metrics, quota)
        if settings.feedback:
            await self._start_feedback(self.plane)
        self._grpc = await self._start_grpc()
        self._remove_hup = process.on_hangup(loop, lambda: self._hangup(loop))
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
        if self.plane.shadow is not None:
            self.plane.shadow.close()
        if self.plane.recorder is not None:
            # The answers still queued are written before the process goes.
            await asyncio.to_thread(self.plane.recorder.stop, timeout_s)
        self.plane.close()
        self.state.dataplane = None
        self._restore_process()
        tracing.shutdown()  # sends the spans still buffered
        logger.info("stopped")
        # A worker process ends by re-raising SIGTERM: write the queued lines first.
        flush_logs()

    def _hangup(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGHUP: read the API keys again, then reload the model."""
        reload_keys(self.settings, self.state)
        _reload(loop, self.models, self.fleet)

    async def _start_feedback(self, plane: DataPlane) -> None:
        """The recorder (its store opened: a bad path or URL stops the start) and, when
        MNIST_SHADOW_VERSION names one, the shadow version loaded beside the served one."""
        from service.feedback.quality import QualityCollector
        from service.feedback.recorder import Recorder

        recorder = Recorder(self.settings, self.metrics)
        await asyncio.to_thread(recorder.start)
        self.metrics.add_collector(QualityCollector(lambda: recorder.snapshot))
        plane.recorder = recorder
        version = self.settings.shadow_version
        if version is None:
            return
        from service.serving.shadow import Shadow

        # NOTE: loaded through the repository like any version, but never served: the
        # repository keeps owning which model answers.
        candidate = await asyncio.to_thread(self.models.load, version)
        batcher = plane.batcher
        plane.shadow = Shadow(
            candidate, self.settings.shadow_rate, lambda: batcher.idle, recorder, self.metrics
        )
        logger.info(
            "shadow: v%s reads %.0f%% of /v1 requests beside v%s",
            candidate.version, 100 * self.settings.shadow_rate, self.models.current.version,
        )  # fmt: skip

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


def reload_keys(settings: Settings, state: Any) -> None:
    """Swap in the keys configured now; a file that no longer reads keeps the old ones.

    One assignment: a request already checked keeps the key it was checked with, and the
    next one sees the new ring (nothing is dropped)."""
    try:
        ring = settings.key_ring()
    except ValueError as exc:
        logger.error("SIGHUP: API keys not reloaded, keeping %d: %s", len(state.api_keys.keys), exc)
        return
    quota = getattr(state, "quota", None)
    if quota is not None:
        quota.use(ring)
    state.api_keys = ring
    logger.info("SIGHUP: %d API keys: %s", len(ring.keys), ", ".join(sorted(ring.names)) or "-")


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
