"""DataPlane: the one inference path shared by the /v1 and /v2 routes.

Routes hand it image files or pixel arrays; it decodes them on a thread pool (off the event
loop, in parallel with inference), submits them to the batcher and returns probabilities
with the model version that produced them. It also owns hot reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.batching import Batcher
from service.card import list_versions
from service.config import Settings
from service.errors import InvalidImage, ServiceError
from service.metrics import Metrics
from service.model import Classifier, ModelLoadError, resolve_version
from service.preprocess import ImageLimits, Scan, scan
from service.reading import Reading, read

logger = logging.getLogger(__name__)

#: A lone file this small is decoded on the event loop: the thread hop costs more than the
#: decode (~50 us). Measured with wrk on 28x28 PNGs, one worker: c=1 p50 2.47 -> 2.16 ms,
#: c=64 1,190 -> 1,870 req/s. Anything larger, or several files, goes to the thread pool.
_INLINE_BYTES = 4096


@dataclass
class NamedFile:
    filename: str
    data: bytes


class ReloadRefused(ServiceError):
    status_code = 409
    code = "reload_refused"


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        classifier: Classifier,
        batcher: Batcher,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.batcher = batcher
        self.metrics = metrics
        self.limits = ImageLimits(
            max_bytes=settings.max_file_bytes,
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_image_frames,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        self._reload_lock = asyncio.Lock()
        self.classifier = classifier
        self.ready = True

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    @classifier.setter
    def classifier(self, value: Classifier) -> None:
        self._classifier = value
        self.batcher.model = value  # the batch loop picks it up at its next batch
        if self.metrics is not None:
            self.metrics.set_model(value.name, value.version, str(value.device))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- images

    def _decode_one(self, data: bytes, one_digit: bool) -> Scan | BaseException:
        try:
            return scan(data, self.limits, one_digit)
        except Exception as exc:  # returned, not raised: one bad file must not hide the rest
            return exc

    def _decode_many(self, blobs: list[bytes], one_digit: bool) -> list[Scan | BaseException]:
        return [self._decode_one(b, one_digit) for b in blobs]

    async def decode_images(self, files: list[NamedFile], one_digit: bool = False) -> list[Scan]:
        """Each file's scan, or one ServiceError naming every file that could not be decoded.

        A decodable file with nothing to read is a scan without glyphs, not an error.
        """
        outcomes: list[Scan | BaseException]
        if len(files) == 1 and len(files[0].data) <= _INLINE_BYTES:
            outcomes = [self._decode_one(files[0].data, one_digit)]
        else:
            # One pool task per thread, each decoding a contiguous slice of the files: a task
            # per file cost ~40 us of scheduling each (64-file requests, measured).
            loop = asyncio.get_running_loop()
            n = min(len(files), self.settings.preprocess_threads)
            bounds = [len(files) * i // n for i in range(n + 1)]
            chunks = [[f.data for f in files[bounds[i] : bounds[i + 1]]] for i in range(n)]
            parts = await asyncio.gather(
                *(loop.run_in_executor(self._pool, self._decode_many, c, one_digit) for c in chunks)
            )
            outcomes = [o for part in parts for o in part]
        failures = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        if failures:
            raise _combine(files, failures)
        return outcomes  # type: ignore[return-value]

    # ---------------------------------------------------------------- inference

    async def infer(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Classifier]:
        """Probabilities [N,10] for [N,28,28] pixels in [0,1], through the batcher."""
        tensor = torch.as_tensor(pixels, dtype=torch.float32)
        probs, model = await self.batcher.submit(tensor)
        if self.metrics is not None:
            self.metrics.images.labels(model.name, model.version).inc(len(probs))
        return probs, model

    async def predict_files(
        self, files: list[NamedFile], one_digit: bool = False
    ) -> tuple[list[Reading], Classifier]:
        """One reading per file, in order; all glyphs of all files go through one batch."""
        started = time.perf_counter()
        with self.batcher.incoming(len(files)):
            scans = await self.decode_images(files, one_digit)
        if self.metrics is not None:
            self.metrics.preprocess_latency.observe(time.perf_counter() - started)
        glyphs = [g.pixels for s in scans for g in s.glyphs]
        model = self.classifier
        rows: list[list[float]] = []
        if glyphs:
            # A lone glyph goes as a view: np.stack copies.
            pixels = glyphs[0][None] if len(glyphs) == 1 else np.stack(glyphs)
            probs, model = await self.infer(pixels)
            rows = probs.tolist()
        threshold = getattr(model.card.output, "reject_threshold", None)
        readings = []
        start = 0
        for s in scans:
            end = start + len(s.glyphs)
            readings.append(read(s, rows[start:end], threshold))
            start = end
        return readings, model

    # ---------------------------------------------------------------- versions

    def available_versions(self) -> list[str]:
        return [
            str(v) for v in list_versions(self.settings.model_repository, self.settings.model_name)
        ]

    async def reload(self, version: str | None = None) -> Classifier:
        """Load and warm a version beside the current one, then switch atomically.

        In-flight batches finish on the old model; a version that fails to load, verify or
        warm up is refused and the current one keeps serving.
        """
        async with self._reload_lock:
            current = self.classifier
            try:
                folder: Path = resolve_version(
                    self.settings.model_repository, self.settings.model_name, version
                )
                loop = asyncio.get_running_loop()
                new = await loop.run_in_executor(
                    None,
                    lambda: Classifier.load(
                        folder,
                        current.device,
                        half=self.settings.half_precision,
                        optimize=self.settings.optimize,
                        warmup_batch_sizes=_warmup_sizes(self.settings),
                    ),
                )
            except ModelLoadError as exc:
                logger.warning("reload refused, still serving v%s: %s", current.version, exc)
                raise ReloadRefused(f"reload refused: {exc}") from exc
            self.classifier = new
            logger.info("now serving %s v%s (was v%s)", new.name, new.version, current.version)
            return new


def _warmup_sizes(settings: Settings) -> tuple[int, ...]:
    sizes = {1, settings.max_batch_size}
    if settings.max_batch_size >= 8:
        sizes.add(8)
    return tuple(sorted(sizes))


def _combine(files: list[NamedFile], failures: list[tuple[int, BaseException]]) -> ServiceError:
    details = []
    first: ServiceError | None = None
    for index, exc in failures:
        if not isinstance(exc, ServiceError):
            # An unexpected decoder failure is still the file's fault, not the server's.
            logger.warning("unexpected error decoding file %d", index, exc_info=exc)
            exc = InvalidImage("the image could not be decoded")
        first = first or exc
        details.append({"index": index, "filename": files[index].filename, "error": exc.message})
    assert first is not None
    if len(files) == 1:
        return first
    error = type(first)(
        f"{len(failures)} of {len(files)} files were rejected; first: {first.message}",
    )
    error.details = details
    return error
