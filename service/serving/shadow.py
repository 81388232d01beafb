"""Shadow: a candidate version reads a sampled share of live requests after they are
answered; its answers are never returned, only stored beside the served ones, so that its
agreement with them and (once feedback arrives) its accuracy can be compared.

It is shed first: a sampled request whose turn comes while the batcher has work, or while
the previous shadow forward still runs, is skipped and counted. Its forward runs on a
thread of its own, never in the served model's batches.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.feedback.recorder import Recorder
from service.runtime.metrics import Metrics
from service.serving.model import Classifier
from service.vision.preprocess import Scan
from service.vision.reading import Reading, read

logger = logging.getLogger(__name__)


class Shadow:
    """One candidate model, its sampling rate and its one forward thread."""

    def __init__(
        self,
        model: Classifier,
        rate: float,
        idle: Callable[[], bool],
        recorder: Recorder,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.rate = rate
        self._idle = idle
        self._recorder = recorder
        self._metrics = metrics
        self._running = False
        self._random = random.Random()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")

    def sample(self) -> bool:
        """Whether this request is one of the shadow's share."""
        return self._random.random() < self.rate

    async def run(self, request_id: str, scans: list[Scan | None]) -> None:
        """Read `scans` (None for a file that could not be read) with the candidate and
        store its answers; called once the served answer has been sent."""
        if self._running or not self._idle():
            self._count("shed")
            return
        self._running = True
        try:
            loop = asyncio.get_running_loop()
            readings = await loop.run_in_executor(self._pool, self._read, scans)
        except Exception as exc:  # the candidate's failure must never touch serving
            logger.warning("shadow v%s failed: %s", self.model.version, exc)
            self._count("failed")
            return
        finally:
            self._running = False
        self._count("run")
        self._recorder.record_readings(request_id, "shadow", self.model.version, readings)

    def _read(self, scans: list[Scan | None]) -> list[Reading | None]:
        glyphs = [g.pixels for s in scans if s is not None for g in s.inputs]
        rows: list[list[float]] = []
        if glyphs:
            rows = self.model.predict_pixels(np.stack(glyphs)).tolist()
        out: list[Reading | None] = []
        start = 0
        for s in scans:
            if s is None:
                out.append(None)
                continue
            end = start + len(s.inputs)
            out.append(read(s, rows[start:end], self.model.reject_threshold))
            start = end
        return out

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.shadow_runs.labels(outcome).inc()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
