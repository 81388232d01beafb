"""DataPlane.infer: what the model is given, and a reload between normalising and the batch."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from service.config import Settings
from service.runtime.metrics import Metrics
from service.serving.dataplane import DataPlane
from service.serving.model import model_inputs
from service.wire.codec.triton import model_statistics


class _Model:
    def __init__(self, name: str, mean: float, std: float) -> None:
        self.name, self.version = name, "1"
        norm = SimpleNamespace(mean=mean, std=std)
        self.card = SimpleNamespace(input=SimpleNamespace(normalization=norm))

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        norm = self.card.input.normalization
        return model_inputs(pixels, norm.mean, norm.std)


class _Batcher:
    """Answers each submit with the next model of `served`, recording what it was given."""

    def __init__(self, served: list[_Model]) -> None:
        self.served = served
        self.given: list[torch.Tensor] = []

    async def submit(
        self, x: torch.Tensor, client: Any, admitted: bool, model: Any, timing: list[float]
    ) -> tuple[Any, _Model]:
        self.given.append(x)
        timing += (0.0, 0.0)
        return torch.zeros(len(x), 10), self.served.pop(0)


def _plane(current: _Model, batcher: _Batcher) -> DataPlane:
    settings = Settings(_env_file=None, grpc_port=0)  # type: ignore[call-arg]
    return DataPlane(settings, SimpleNamespace(current=current), batcher)  # type: ignore[arg-type]


PIXELS = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)


async def test_pixels_are_normalised_once_with_the_models_constants() -> None:
    model = _Model("a", 0.5, 0.25)
    batcher = _Batcher([model])
    _, used = await _plane(model, batcher).infer(PIXELS)
    assert used is model
    assert len(batcher.given) == 1
    np.testing.assert_array_equal(batcher.given[0].numpy(), (PIXELS - 0.5) / 0.25)


async def test_normalised_rows_go_to_the_model_as_they_are() -> None:
    model = _Model("a", 0.5, 0.25)
    batcher = _Batcher([model])
    await _plane(model, batcher).infer(PIXELS, normalized=True)
    np.testing.assert_array_equal(batcher.given[0].numpy(), PIXELS)


async def test_a_reload_to_other_constants_normalises_the_pixels_again_for_the_new_model() -> None:
    old, new = _Model("a", 0.5, 0.25), _Model("a", 0.1, 0.3)
    batcher = _Batcher([new, new])  # the reload lands between normalising and the batch
    _, used = await _plane(old, batcher).infer(PIXELS)
    assert used is new
    assert len(batcher.given) == 2
    np.testing.assert_allclose(batcher.given[1].numpy(), (PIXELS - 0.1) / 0.3, rtol=1e-6)


class _TimedBatcher(_Batcher):
    """Reports its own time in it, split between queue and forward, as the batcher does."""

    async def submit(
        self, x: torch.Tensor, client: Any, admitted: bool, model: Any, timing: list[float]
    ) -> tuple[Any, _Model]:
        start = time.perf_counter()
        await asyncio.sleep(0)
        spent = time.perf_counter() - start
        timing += (spent / 2, spent / 2)
        self.given.append(x)
        return torch.zeros(len(x), 10), self.served.pop(0)


async def test_statistics_stages_add_up_within_success() -> None:
    """Issue: V2 statistics showed compute_input above success. Every stage counts each
    request once, and input + queue + forward fit in the request's time."""
    model = _Model("a", 0.5, 0.25)
    metrics = Metrics()
    settings = Settings(_env_file=None, grpc_port=0)  # type: ignore[call-arg]
    repo = SimpleNamespace(current=model)
    plane = DataPlane(settings, repo, _TimedBatcher([model] * 3), metrics=metrics)  # type: ignore[arg-type]
    for _ in range(3):
        started = time.perf_counter()
        await asyncio.sleep(0)  # reading the input
        await plane.infer(PIXELS, started=started, input_s=time.perf_counter() - started)
    stats = model_statistics([model], metrics.registry)["model_stats"]  # type: ignore[list-item]
    assert [(s["name"], s["version"]) for s in stats] == [("a", "1")]
    assert stats[0]["inference_count"] == 3 * len(PIXELS)
    s = stats[0]["inference_stats"]
    stages = ("queue", "compute_input", "compute_infer")
    assert [s[k]["count"] for k in ("success", *stages)] == [3, 3, 3, 3]
    parts = sum(s[k]["ns"] for k in stages)
    assert 0 < s["compute_input"]["ns"] <= parts <= s["success"]["ns"]
