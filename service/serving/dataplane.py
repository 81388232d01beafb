"""DataPlane: what every route asks of the server, shared by /v1, /v2 and gRPC.

Routes only translate their wire format. They hand the data plane image files or pixel
arrays; it decodes them on a thread pool (off the event loop, in parallel with inference),
submits them to the batcher and returns probabilities with the model that produced them.
It also answers readiness, looks models up by name and version, describes them, and holds
the request limits. The model itself belongs to the ModelRepository.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from service.config import Settings
from service.errors import (
    InferenceTimeout,
    InvalidImage,
    ModelNotFound,
    PayloadTooLarge,
    ServiceError,
)
from service.http.uploads import UploadLimits
from service.runtime import tracing
from service.runtime.metrics import Metrics
from service.serving.batching import Batcher
from service.serving.model import Classifier
from service.serving.quota import Quota
from service.serving.repository import ModelLoadError, ModelRepository
from service.vision.decode import DecodeBudget, ImageLimits, RequestBudget, cheap_to_decode
from service.vision.preprocess import Scan, scan
from service.vision.reading import Reading, read
from service.wire.codec import v2 as codec
from service.wire.schemas.rest import ErrorDetail, ModelsResponse
from service.wire.schemas.v2 import MetadataModelResponse

if TYPE_CHECKING:
    from service.feedback.recorder import Recorder
    from service.serving.shadow import Shadow

logger = logging.getLogger(__name__)


@dataclass
class NamedFile:
    filename: str
    data: bytes


@dataclass(frozen=True)
class V2Answer:
    """What `DataPlane.infer_v2` gives a front end to render."""

    tensors: list[codec.OutputTensor]
    model: Classifier
    images: int


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        batcher: Batcher,
        metrics: Metrics | None = None,
        quota: Quota | None = None,
    ) -> None:
        self.settings = settings
        #: The API keys' limits; only `charge` of images is the data plane's to call.
        self.quota = quota
        self.repository = repository
        self.batcher = batcher
        self.metrics = metrics
        self.limits = ImageLimits(
            max_bytes=settings.max_file_bytes,
            max_pixels=settings.max_image_pixels,
            max_aspect=settings.max_image_aspect,
            max_frames=settings.max_image_frames,
        )
        self.upload_limits = UploadLimits(
            settings.max_files, settings.max_file_bytes, settings.max_request_bytes
        )
        self.tensor_limits = codec.Limits.of(settings.max_queue_size, settings.max_files)
        self.decode_budget = DecodeBudget(
            settings.decode_memory_mib << 20, wait_s=settings.request_timeout_s
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        #: Keeps answers for feedback (MNIST_FEEDBACK); None when off.
        self.recorder: Recorder | None = None
        #: The candidate version that also reads sampled requests; None when off.
        self.shadow: Shadow | None = None

    @property
    def classifier(self) -> Classifier:
        """The served model (the repository's; a reload switches it between batches)."""
        return self.repository.current

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- readiness and models

    def not_ready_reason(self) -> str | None:
        """None while requests can be served; else why not (the batch loop has stopped)."""
        return None if self.batcher.alive else "inference loop stopped"

    def get_model(self, name: str, version: str | None = None) -> Classifier:
        """The served classifier `name` designates, in `version` (default: the default
        version); else 404 (model_not_found, or version_not_served)."""
        clf = self.classifier
        if name != clf.name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves {clf.name!r}")
        return self.repository.lookup(version)

    def version(self, version: str | None) -> Classifier:
        """The served model of `version` (the default for None), else 404 version_not_served:
        how /v1 selects a version, as V2 does by its path."""
        return self.repository.lookup(version)

    def served_models(self) -> list[Classifier]:
        """Every version served, oldest first."""
        return list(self.repository.served.models.values())

    def model_metadata(self, name: str, version: str | None = None) -> MetadataModelResponse:
        """The V2 $metadata_model_response of a served model (404 for any other): of the
        default version, listing every served version, or of the one named."""
        clf = self.get_model(name, version)
        served = None if version else list(self.repository.served.models)
        return codec.model_metadata(clf.card, served)

    def models_summary(self) -> ModelsResponse:
        """The /v1/models body: the default version's card, every version with its state
        (ready: served; available: on disk, not in the version policy), the limits."""
        clf = self.classifier
        card = clf.card
        settings = self.settings
        served = self.repository.served.models
        available = self.available_versions()
        return {
            "version_policy": str(self.repository.policy),
            "versions": [
                {
                    "version": v,
                    "state": "ready" if v in served else "available",
                    "default": v == clf.version,
                }
                for v in sorted({*available, *served}, key=int)
            ],  # fmt: skip
            "served": {
                "name": card.name,
                "version": card.version,
                "device": str(clf.device),
                "platform": card.platform,
                "accuracy": card.metrics.accuracy if card.metrics else None,
                "parameters": card.parameters,
                "mflops": card.mflops,
                "input": card.input.model_dump(mode="json"),
                "output": card.output.model_dump(mode="json"),
                "created_at": card.created_at.isoformat(),
                "sha256": card.sha256,
            },
            "available_versions": available,
            "limits": {
                "max_files": settings.max_files,
                "max_file_bytes": settings.max_file_bytes,
                "max_request_bytes": settings.max_request_bytes,
                "max_image_pixels": settings.max_image_pixels,
                "max_image_frames": settings.max_image_frames,
                "request_timeout_s": settings.request_timeout_s,
            },
            "batching": {
                "enabled": settings.batching,
                "max_batch_size": settings.max_batch_size,
                "max_batch_wait_ms": settings.max_batch_wait_ms,
                "max_queue_size": settings.max_queue_size,
            },
        }

    def check_file_count(self, count: int) -> None:
        """413 for a request that brings more than `max_files` images, before any is decoded."""
        if count > self.settings.max_files:
            raise PayloadTooLarge(f"too many files: at most {self.settings.max_files} per request")

    # ---------------------------------------------------------------- images

    def _decode_one(
        self, data: bytes, one_digit: bool = False, budget: RequestBudget | None = None
    ) -> Scan | ServiceError:
        try:
            return scan(data, self.limits, one_digit, budget or self.decode_budget)
        except ServiceError as exc:  # returned, not raised: one bad file must not hide the rest
            return _detached(exc)
        except Exception as exc:
            # An unexpected decoder failure is still the file's fault, not the server's.
            logger.warning("unexpected error decoding a file", exc_info=exc)
            return InvalidImage("the image could not be decoded")

    def _decode_many(
        self,
        blobs: list[bytes],
        abandoned: threading.Event,
        budget: RequestBudget,
        one_digit: bool = False,
        spent: list[tuple[int, float]] | None = None,
    ) -> list[Scan | ServiceError]:
        out: list[Scan | ServiceError] = []
        # CPU time of this thread, not wall time: threads decoding side by side slow each
        # other down, and admission wants what the work costs, not how it was shared.
        started = time.thread_time()
        for data in blobs:
            if abandoned.is_set():
                break  # the request was cancelled (client gone, deadline): stop spending CPU
            out.append(self._decode_one(data, one_digit, budget))
            if spent is not None:
                done = time.thread_time()
                spent.append((len(data), done - started))  # list.append: thread-safe
                started = done
        return out

    async def decode_images(
        self,
        files: list[NamedFile],
        one_digit: bool = False,
        per_file: bool = False,
        spent: list[tuple[int, float]] | None = None,
    ) -> list[Scan | ServiceError]:
        """Each file's scan, or one ServiceError naming every file that could not be decoded.

        With `per_file`, a file the client got wrong (a 4xx error) takes its error's place
        in a request of several files, and the others are still read; one file alone, or a
        failure of the server's (5xx), still fails the request. A decodable file with
        nothing to read is a scan without glyphs, not an error. `spent` gets each decoded
        file's size and the CPU seconds its decoding took (not the time the request waited
        for the threads: that wait is what admission estimates, not a cost).
        """
        outcomes: list[Scan | ServiceError]
        if len(files) == 1 and cheap_to_decode(files[0].data):
            # NOTE: the thread hop costs more than decoding a small plain PNG; the header,
            # not the byte count, says it is small (see docs/decisions.md).
            started = time.perf_counter()  # on the loop, alone: wall time is its CPU time
            outcomes = [self._decode_one(files[0].data, one_digit)]
            if spent is not None:
                spent.append((len(files[0].data), time.perf_counter() - started))
        else:
            # One pool task per thread, each decoding a contiguous slice of the files: a task
            # per file costs more in scheduling than a small file's decode.
            loop = asyncio.get_running_loop()
            n = min(len(files), self.settings.preprocess_threads)
            bounds = [len(files) * i // n for i in range(n + 1)]
            chunks = [[f.data for f in files[bounds[i] : bounds[i + 1]]] for i in range(n)]
            abandoned = threading.Event()
            budget = self.decode_budget.for_request(self.settings.max_request_pixels)
            try:
                # The request deadline covers decoding too: a request of many heavy images
                # must not hold the decode threads for longer than anyone would wait.
                async with asyncio.timeout(self.settings.request_timeout_s):
                    parts = await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                self._pool,
                                self._decode_many,
                                c,
                                abandoned,
                                budget,
                                one_digit,
                                spent,
                            )
                            for c in chunks
                        )
                    )
            except TimeoutError:
                raise InferenceTimeout(
                    f"images not decoded within the {self.settings.request_timeout_s:g} s "
                    "request deadline"
                ) from None
            finally:
                abandoned.set()  # a no-op when all is done; stops the threads when cancelled
            outcomes = [o for part in parts for o in part]
            del chunks, parts
        if any(isinstance(o, ServiceError) for o in outcomes) and not (
            per_file and _each_own_fault(outcomes)
        ):
            error = _combine(files, outcomes)
            del outcomes
            try:
                raise error
            finally:
                # NOTE: the traceback keeps this frame alive; without the error in its
                # locals there is no reference cycle, so the upload's bytes are freed by
                # reference counting as soon as the response is sent, not by a later GC.
                del error
        return outcomes

    # ---------------------------------------------------------------- inference

    async def infer(
        self,
        rows: np.ndarray,
        client: Hashable = None,
        admitted: bool = False,
        normalized: bool = False,
        version: str | None = None,
        started: float | None = None,
        input_s: float = 0.0,
    ) -> tuple[torch.Tensor, Classifier]:
        """Probabilities [N,C] for [N,28,28] rows, through the batcher, and the model that
        produced them.

        Rows are pixels in [0,1], normalised here with the model's mean and std, or, with
        `normalized`, the model's inputs already (the V2 FP32 tensor), which go to the model
        as they are. `client` keys the batcher's fair share and round-robin lanes. `version`:
        the served version to use (default: the default one, as of the batch). `started` (a
        perf_counter time, default now) and `input_s` (the time spent reading the input)
        go to the model's statistics with the request's queue and forward time.
        """
        started = time.perf_counter() if started is None else started
        named = self.repository.lookup(version) if version else None
        quota = self.quota
        if not admitted and quota is not None and quota.image_keys:
            quota.charge(client, len(rows))
        model = named or self.classifier
        timing: list[float] = []
        while True:
            x = torch.as_tensor(rows if normalized else model.inputs(rows))
            timing.clear()
            probs, used = await self.batcher.submit(x, client, admitted, named, timing)
            # NOTE: a reload between here and the batch may bring a model with other
            # constants: its rows are normalised again for it (rare, and never for FP32).
            if normalized or used is model or _same_inputs(used, model):
                break
            model = used
        if self.metrics is not None:
            self.metrics.observe_model_request(
                used.name, used.version, len(probs),
                time.perf_counter() - started, input_s, timing[0], timing[1],
            )  # fmt: skip
        return probs, used

    async def predict_files(
        self,
        files: list[NamedFile],
        client: Hashable = None,
        one_digit: bool = False,
        scans: list[Scan | None] | None = None,
        version: str | None = None,
    ) -> tuple[list[Reading | ServiceError], Classifier]:
        """One reading per file, in order, or the error of a file that could not be read (in
        a request of several: see `decode_images`); all glyphs and candidates go through one
        batch, on `version` (default: the default version). `scans`, when given, gets each file's
        scan (None where it failed), for the shadow."""
        started = time.perf_counter()
        named = self.repository.lookup(version) if version else None  # 404 before decoding
        quota = self.quota
        if quota is not None and quota.image_keys:
            quota.charge(client, len(files))  # a key's images per minute (or a 429)
        # Admission (or a 503) before any decoding: refused work must cost almost nothing.
        spent: list[tuple[int, float]] = []
        sizes = [len(f.data) for f in files]
        try:
            with self.batcher.incoming(len(files), client, sizes), tracing.span("decode"):
                outcomes = await self.decode_images(files, one_digit, per_file=True, spent=spent)
        finally:
            # Also when the deadline or a hang-up cut it short: the slowest decodes are the
            # ones admission most needs to have seen.
            self.batcher.admission.observe_decode(spent)
        decoded_s = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.preprocess_latency.observe(decoded_s)
        if scans is not None:
            scans.extend(o if isinstance(o, Scan) else None for o in outcomes)
        glyphs = [g.pixels for o in outcomes if isinstance(o, Scan) for g in o.inputs]
        model = named or self.classifier
        rows: list[list[float]] = []
        if glyphs:
            # A lone glyph goes as a view: np.stack copies.
            pixels = glyphs[0][None] if len(glyphs) == 1 else np.stack(glyphs)
            probs, model = await self.infer(
                pixels, client, admitted=True, version=version, started=started,
                input_s=decoded_s,
            )  # fmt: skip
            rows = probs.tolist()
        threshold = getattr(model.card.output, "reject_threshold", None)
        readings: list[Reading | ServiceError] = []
        start = 0
        for o in outcomes:
            if isinstance(o, ServiceError):
                readings.append(o)
                continue
            end = start + len(o.inputs)
            readings.append(read(o, rows[start:end], threshold))
            start = end
        return readings, model

    # ---------------------------------------------------------------- Open Inference Protocol

    async def infer_v2(
        self,
        req: codec.V2Request,
        client: Hashable = None,
        large: bool = False,
        version: str | None = None,
    ) -> V2Answer:
        """One V2 inference request, the same steps in the same order for REST and gRPC:
        plan the outputs, read the options, decode the input (on a thread when `large`:
        splitting BYTES and building rows grow with the body and would stall the loop),
        infer, encode the output tensors. The front end parses its wire format into `req`
        before and renders the tensors after. `version`: the version the path (or
        `model_version`) named."""
        started = time.perf_counter()
        plan = codec.plan_outputs(req)
        one_digit = codec.one_digit_option(req)
        first = codec.single_input(req)
        with tracing.span("decode"):
            if large:
                decoded = await asyncio.to_thread(codec.decode_input, first, self.tensor_limits)
            else:
                decoded = codec.decode_input(first, self.tensor_limits)
        probs, model, given = await self._infer_decoded(
            decoded, client, one_digit, version, started
        )
        return V2Answer(codec.encode_outputs(plan, probs.numpy(), given), model, len(decoded))

    async def _infer_decoded(
        self,
        decoded: codec.Rows | list[bytes],
        client: Hashable,
        one_digit: bool,
        version: str | None,
        started: float,
    ) -> tuple[torch.Tensor, Classifier, dict[str, Any] | None]:
        """Probabilities for a decoded V2 input: tensor rows straight to the model, files read.

        For files, also the label, kind, number and error outputs per file; probabilities
        are zeros and the label -1 for a file that is not a single digit. A file of several
        that cannot be read has kind "error" and its message in `error` (`code: message`);
        the others are still read."""
        if isinstance(decoded, codec.Rows):
            probs, model = await self.infer(
                decoded.values, client, normalized=decoded.normalized, version=version,
                started=started, input_s=time.perf_counter() - started,
            )  # fmt: skip
            return probs, model, None
        files = [NamedFile(f"image[{i}]", data) for i, data in enumerate(decoded)]
        readings, model = await self.predict_files(files, client, one_digit, version=version)
        probs = torch.zeros(len(readings), 10)
        labels = np.full(len(readings), -1, dtype="<i8")
        for i, r in enumerate(readings):
            if isinstance(r, Reading) and r.kind == "digit":
                probs[i] = torch.tensor(r.digits[0].probabilities[:10])
                labels[i] = r.digits[0].digit
        given = {
            "label": labels,
            "kind": [r.kind.encode() if isinstance(r, Reading) else b"error" for r in readings],
            "number": [
                (r.number or "").encode() if isinstance(r, Reading) else b"" for r in readings
            ],
            "error": [
                b"" if isinstance(r, Reading) else f"{r.code}: {r.message}".encode()
                for r in readings
            ],
        }
        return probs, model, given

    # ---------------------------------------------------------------- versions

    def available_versions(self) -> list[str]:
        try:
            return self.repository.versions()
        except ModelLoadError as exc:
            logger.warning("cannot list model versions: %s", exc)
            return []


def _same_inputs(a: Classifier, b: Classifier) -> bool:
    return a.card.input.normalization == b.card.input.normalization


def _detached(exc: ServiceError) -> ServiceError:
    """The error without its traceback and causes, which hold the decoder's frames and with
    them full-size pixel arrays for as long as the error lives."""
    exc.__traceback__ = None
    exc.__cause__ = None
    exc.__context__ = None
    return exc


def _each_own_fault(outcomes: list[Scan | ServiceError]) -> bool:
    """Whether the failures of a request of several files are each the file's own (4xx),
    so that they can be answered per file."""
    errors = [o for o in outcomes if isinstance(o, ServiceError)]
    return len(outcomes) > 1 and all(e.status_code < 500 for e in errors)


def _combine(files: list[NamedFile], outcomes: list[Scan | ServiceError]) -> ServiceError:
    failures = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, ServiceError)]
    details: list[ErrorDetail | dict[str, Any]] = []
    for index, exc in failures:
        details.append({"index": index, "filename": files[index].filename, "error": exc.message})
    first = failures[0][1]
    if len(files) == 1:
        return first
    error = type(first)(
        f"{len(failures)} of {len(files)} files were rejected; first: {first.message}",
    )
    error.details = details
    return error
