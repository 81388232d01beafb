"""Prometheus collectors on a per-app registry (multi-process aware)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_mp
from prometheus_client.registry import Collector

from service.runtime.logging_config import dropped_records

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: The stages of `mnist_model_request_seconds`, named as in Triton's statistics extension.
STAGES = ("success", "compute_input", "queue", "compute_infer")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """All collectors of one app. With several workers, prometheus-client's multiprocess mode
    (PROMETHEUS_MULTIPROC_DIR) aggregates every process's values at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._model_labels: tuple[str, str, str] | None = None
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._sources: tuple[Callable[[], int], Callable[[], int]] | None = None
        self._sampled: tuple[int, int] | None = None
        mp = multiprocess_dir() is not None
        r = self.registry
        # NOTE: every gauge takes a `live*` mode with several workers: only those files does
        # mark_process_dead remove when a worker dies (service/runtime/supervisor.py), and only
        # those may go while a scrape reads the folder; another mode would keep counting a
        # dead worker's value (tests/unit/test_metrics.py checks).
        live: Any = "livesum" if mp else "all"
        self.requests = Counter(
            "mnist_requests", "HTTP requests by route and status", ["route", "method", "status"],
            registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "mnist_request_latency_seconds", "End-to-end request latency", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.preprocess_latency = Histogram(
            "mnist_preprocess_seconds", "Decode and preprocessing time per request",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "mnist_queue_wait_seconds", "Time the oldest request of a batch waited",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "mnist_inference_seconds", "Forward-pass time per batch",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mnist_batch_size", "Images per forward pass", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "mnist_queue_depth", "Images queued or in the model", registry=r, multiprocess_mode=live
        )
        self.in_flight = Gauge(
            "mnist_in_flight_requests",
            "Requests being handled",
            registry=r,
            multiprocess_mode=live,
        )
        self.images = Counter(
            "mnist_images_predicted", "Images predicted", ["model", "version"], registry=r
        )
        # The statistics extension's per-version figures (service/wire/codec/triton.py): each
        # request that reached the model counts once in every stage, so the stages add up.
        self.model_requests = Counter(
            "mnist_model_requests", "Requests that reached the model, by version",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.model_request_seconds = Counter(
            "mnist_model_request_seconds",
            "Seconds those requests spent: in all (success), reading their input "
            "(compute_input), queued (queue), in forward passes (compute_infer)",
            ["model", "version", "stage"], registry=r,
        )  # fmt: skip
        self.model_executions = Counter(
            "mnist_model_executions", "Forward passes, by version", ["model", "version"],
            registry=r,
        )  # fmt: skip
        self._model_children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.log_dropped = Counter(
            "mnist_log_records_dropped",
            "Log records dropped because the log reader was not keeping up",
            registry=r,
        )
        self._log_dropped_seen = 0
        # NOTE: the key label holds only configured key names and "anonymous" (a request
        # without a valid key): bounded by the key file, never by what clients send.
        self.key_requests = Counter(
            "mnist_key_requests", "Requests by API key name and status (API keys on)",
            ["key", "status"], registry=r,
        )  # fmt: skip
        self._key_children: dict[tuple[str, int], Any] = {}
        self.feedback_answers = Counter(
            "mnist_feedback_answers",
            "Answers handed to the feedback store, by outcome: written, dropped (queue full), "
            "failed (database error)",
            ["outcome"],
            registry=r,
        )
        self.shadow_runs = Counter(
            "mnist_shadow_requests",
            "Sampled requests for the shadow version, by outcome: run, or shed (busy)",
            ["outcome"],
            registry=r,
        )
        self._collectors: list[Collector] = []
        self.model_info = Gauge(
            "mnist_model_info", "The served model (value 1)", ["name", "version", "device"],
            registry=r, multiprocess_mode="livemax" if mp else "all",
        )  # fmt: skip

    def observe_request(self, route: str, method: str, status: int, elapsed_s: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # NOTE: `labels()` takes a lock and builds a key on every call (docs/decisions.md).
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(elapsed_s)

    def _model(self, name: str, version: str) -> tuple[Any, ...]:
        key = (name, version)
        children = self._model_children.get(key)
        if children is None:
            children = (
                self.images.labels(name, version),
                self.model_requests.labels(name, version),
                *(self.model_request_seconds.labels(name, version, stage) for stage in STAGES),
                self.model_executions.labels(name, version),
            )
            self._model_children[key] = children
        return children

    def observe_model_request(
        self, name: str, version: str, images: int, total_s: float, input_s: float,
        queue_s: float, infer_s: float,
    ) -> None:  # fmt: skip
        """One request answered by `version`: its images and the seconds of each stage."""
        images_c, requests, success, compute_input, queue, compute_infer, _ = self._model(
            name, version
        )
        images_c.inc(images)
        requests.inc()
        success.inc(total_s)
        compute_input.inc(input_s)
        queue.inc(queue_s)
        compute_infer.inc(infer_s)

    def observe_caller(self, key: str, status: int) -> None:
        child = self._key_children.get((key, status))
        if child is None:
            child = self._key_children[(key, status)] = self.key_requests.labels(key, str(status))
        child.inc()

    # BatchObserver protocol
    def observe_batch(
        self, size: int, queue_wait_s: float, forward_s: float, model: Any = None
    ) -> None:
        self.batch_size.observe(size)
        self.queue_wait.observe(queue_wait_s)
        self.inference_latency.observe(forward_s)
        name, version = getattr(model, "name", None), getattr(model, "version", None)
        if isinstance(name, str) and isinstance(version, str):
            self._model(name, version)[-1].inc()

    def track(self, in_flight: Callable[[], int], queue_depth: Callable[[], int]) -> None:
        """Sources for the two gauges, read by `refresh` (the lifespan calls it 10 times a
        second, and every scrape calls it first)."""
        self._sources = (in_flight, queue_depth)

    def refresh(self) -> None:
        # NOTE: sampled rather than updated per request: with several workers every gauge
        # update writes a memory-mapped file, four per request (cost: docs/decisions.md).
        # A gauge read every 15 s loses nothing at 10 Hz.
        dropped = dropped_records()
        if dropped > self._log_dropped_seen:
            self.log_dropped.inc(dropped - self._log_dropped_seen)
            self._log_dropped_seen = dropped
        if self._sources is None:
            return
        values = (self._sources[0](), self._sources[1]())
        if values != self._sampled:
            self.in_flight.set(values[0])
            self.queue_depth.set(values[1])
            self._sampled = values

    def set_model(self, name: str, version: str, device: str) -> None:
        # NOTE: prometheus-client cannot clear labels in multi-process mode: zero the old ones.
        if self._model_labels is not None:
            self.model_info.labels(*self._model_labels).set(0)
        self._model_labels = (name, version, device)
        self.model_info.labels(name, version, device).set(1)

    def add_collector(self, collector: Collector) -> None:
        """A collector whose figures are the same whichever worker is scraped (computed
        from shared state, not summed over workers): shown by this worker's scrapes."""
        self._collectors.append(collector)
        if not multiprocess_dir():
            self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        self.refresh()
        if multiprocess_dir():
            registry = CollectorRegistry()
            prom_mp.MultiProcessCollector(registry)
            for collector in self._collectors:
                registry.register(collector)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
