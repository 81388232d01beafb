"""Metrics on their own: cached labelled children and the sampled gauges."""

from __future__ import annotations

import pytest
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_gauges_follow_their_sources_at_every_scrape() -> None:
    metrics = Metrics()
    state = {"in_flight": 3, "queued": 17}
    metrics.track(in_flight=lambda: state["in_flight"], queue_depth=lambda: state["queued"])
    samples = _samples(metrics)
    assert samples[("mnist_in_flight_requests", ())] == 3
    assert samples[("mnist_queue_depth", ())] == 17
    state.update(in_flight=0, queued=0)
    samples = _samples(metrics)
    assert samples[("mnist_in_flight_requests", ())] == 0
    assert samples[("mnist_queue_depth", ())] == 0


def test_refresh_without_sources_leaves_the_gauges_alone() -> None:
    metrics = Metrics()
    metrics.refresh()
    assert _samples(metrics)[("mnist_queue_depth", ())] == 0


def test_observe_request_counts_per_route_method_and_status() -> None:
    metrics = Metrics()
    for status in (200, 200, 413):
        metrics.observe_request("/v1/predict", "POST", status, 0.003)
    samples = _samples(metrics)
    ok = (("method", "POST"), ("route", "/v1/predict"), ("status", "200"))
    bad = (("method", "POST"), ("route", "/v1/predict"), ("status", "413"))
    assert samples[("mnist_requests_total", ok)] == 2
    assert samples[("mnist_requests_total", bad)] == 1
    route = (("route", "/v1/predict"),)
    assert samples[("mnist_request_latency_seconds_count", route)] == 3
    assert samples[("mnist_request_latency_seconds_sum", route)] == pytest.approx(0.009)


def test_every_gauge_is_dropped_when_its_worker_dies(monkeypatch, tmp_path) -> None:
    """With several workers a dead worker's gauge files are removed by mark_process_dead,
    which knows only the `live*` modes: a gauge in another mode would outlive its worker."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    gauges = {
        name: value._multiprocess_mode
        for name, value in vars(metrics).items()
        if isinstance(value, Gauge)
    }
    assert len(gauges) == 3, gauges
    assert all(mode.startswith("live") for mode in gauges.values()), gauges
