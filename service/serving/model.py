"""Classifier: the TorchScript model and its card, loaded once, predicting whole batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from service.serving.card import (
    CardError,
    ModelCard,
    ModelLoadError,
    check_inputs,
    quiet_torchscript,
)
from service.serving.runtimes import (
    ARTIFACT_RUNTIMES,
    ArtifactError,
    Runtime,
    Target,
    check_against,
    choose,
    load_artifact,
)

logger = logging.getLogger(__name__)


def digit_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """The ten digit columns of [N, C] probabilities, renormalised to sum to one per row.

    An 11-class model's last column is "not a digit"; callers that must answer a digit
    whatever the input (the V2 `input` tensor path, a digit once "not a digit" is ruled
    out) use this. A 10-class output comes back unchanged.
    """
    if probs.shape[1] == 10:
        return probs
    digits = probs[:, :10]
    return digits / digits.sum(dim=1, keepdim=True).clamp_min(1e-12)


def not_a_digit_scores(probs: torch.Tensor) -> torch.Tensor:
    """Per-row probability of "not a digit" ([N]); zeros for a 10-class model."""
    if probs.shape[1] == 10:
        return torch.zeros(probs.shape[0], dtype=probs.dtype)
    return probs[:, 10]


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available else cpu; an explicit CUDA request without CUDA fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        return torch.device("cuda", index)
    return torch.device("cpu")


def model_inputs(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """[N,28,28] pixels in [0,1] -> the model's inputs, (pixels - mean) / std in float32: what
    the V2 `input` tensor carries when it is FP32."""
    out = np.subtract(pixels, np.float32(mean), dtype=np.float32)
    out /= np.float32(std)
    return out


#: The serving method added to every loaded model: forward and softmax in one TorchScript
#: call, on inputs already normalised (see `model_inputs`).
#: NOTE: one call means one GIL release for the whole batch. Run as separate Python-level
#: ops, every op re-acquires the GIL, and under load each acquisition waits for the event
#: loop's switch interval: far slower forwards (measured: docs/decisions.md).
_SERVE = "serve_inputs"
_SERVE_SOURCE = """
def serve_inputs(self, inputs: Tensor) -> Tensor:
    out = self.forward(inputs.unsqueeze(1)).float()
    return {result}
"""


def _serve_source(temperature: float, softmax: bool) -> str:
    result = f"torch.softmax(out / {temperature!r}, dim=1)" if softmax else "out"
    return _SERVE_SOURCE.format(result=result)


# NOTE: eq=False: a version is one loaded object, compared and hashed by identity (the
# batcher keys its lanes by the model a request named; field equality would compare
# ScriptModules and make it unhashable).
@dataclass(eq=False)
class Classifier:
    """A loaded model version. `predict_batch` is synchronous and not thread-safe: the
    batcher calls it from its single inference thread."""

    card: ModelCard
    module: torch.jit.ScriptModule
    device: torch.device
    half: bool
    warmup_ms: float = 0.0
    #: What runs the forward: "torchscript" (`module`), or the artifact's format ("aoti").
    runtime: str = "torchscript"
    #: The artifact's forward when one serves (see service/serving/runtimes.py).
    artifact_serve: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    _serve: Callable[[torch.Tensor], torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Bound once: looking a method up on a ScriptModule goes through its __getattr__.
        self._serve = self.artifact_serve or getattr(self.module, _SERVE)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def classes(self) -> int:
        """Output columns: 10 digits, or 11 with "not a digit" last."""
        return self.card.output.classes

    @property
    def reject_threshold(self) -> float | None:
        """P(not a digit) at or above which an image is answered "not a digit" (11 classes)."""
        return self.card.output.reject_threshold

    @classmethod
    def load(
        cls,
        version_dir: Path,
        device: torch.device,
        *,
        half: bool = False,
        optimize: bool = True,
        warmup_batch_sizes: tuple[int, ...] = (1, 8, 64),
        runtime: Runtime = "auto",
    ) -> Classifier:
        """Validate the card and checksum, load TorchScript on `device`, pick the runtime
        (`_with_artifact`), and warm it up."""
        try:
            card = ModelCard.read(version_dir)
            model_path = card.verify(version_dir)
        except CardError as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            with quiet_torchscript():
                module = torch.jit.load(str(model_path), map_location=device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load TorchScript from {model_path}: {exc}") from exc
        module.eval()
        use_half = half and device.type == "cuda"
        spec = card.output
        serving: torch.jit.ScriptModule = module
        try:
            with quiet_torchscript():
                # NOTE: the serving method is compiled into the loaded module's own
                # compilation unit, which dies with it. torch.jit.script of a Python wrapper
                # (and freezing that) registered new types in torch's process-wide unit on
                # every load, kept for the life of the process (measured: docs/operations.md).
                serving.define(_serve_source(spec.temperature, spec.kind != "probabilities"))
                if use_half:
                    serving = serving.half()
                if optimize:
                    # Freezing folds BatchNorm into the convolutions; on CPU,
                    # optimize_for_inference also converts to oneDNN layouts (measured 3-5x
                    # faster at batch 64, see bench/).
                    serving = torch.jit.freeze(serving, preserved_attrs=[_SERVE])
                    if device.type == "cpu":
                        serving = torch.jit.optimize_for_inference(serving, other_methods=[_SERVE])
        except Exception as exc:
            raise ModelLoadError(f"cannot prepare {model_path} for serving: {exc}") from exc
        clf = cls(card, serving, device, use_half)
        clf = clf._with_artifact(version_dir, runtime, warmup_batch_sizes)
        started = time.perf_counter()
        for size in warmup_batch_sizes:
            try:
                out = clf.predict_batch(np.zeros((size, 28, 28), dtype=np.float32))
            except Exception as exc:
                raise ModelLoadError(f"warm-up forward failed at batch {size}: {exc}") from exc
            classes = card.output.classes
            if out.shape != (size, classes) or not bool(torch.isfinite(out).all()):
                raise ModelLoadError(
                    f"model output for batch {size} has shape {tuple(out.shape)}, expected "
                    f"({size}, {classes}) of finite values"
                )
        clf.warmup_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "loaded %s v%s from %s on %s, served by %s (warm-up %.0f ms)",
            card.name, card.version, version_dir, device, clf.runtime, clf.warmup_ms,
        )  # fmt: skip
        return clf

    def _with_artifact(
        self, version_dir: Path, runtime: Runtime, sizes: tuple[int, ...]
    ) -> Classifier:
        """This model served by the artifact `runtimes.choose` picks, once it has given
        TorchScript's answers on the card's check inputs at each warm-up batch size; else
        this one (TorchScript), with a log line saying why. `runtime="aoti"` or `"onnx"`
        turns every reason to fall back into a ModelLoadError."""
        target = Target(torch.__version__, self.device.type, max(sizes), self.half)
        choice = choose(self.card, runtime, target)
        artifact = choice.artifact
        if artifact is None:
            if runtime in ARTIFACT_RUNTIMES:
                raise ModelLoadError(
                    f"model_runtime is {runtime} but no artifact fits: {choice.reason}"
                )
            if runtime == "auto":
                logger.info("serving TorchScript (model.pt): %s", choice.reason)
            return self
        spec = self.card.check_spec()
        try:
            path = self.card.verify_artifact(version_dir, artifact)
            fast = load_artifact(artifact, path, self.device, self.classes)
            candidate = Classifier(
                self.card, self.module, self.device, self.half, runtime=artifact.format,
                artifact_serve=fast,
            )  # fmt: skip
            diff = check_against(
                self.predict_pixels, candidate.predict_pixels, check_inputs(spec), sizes,
                spec.atol,
            )  # fmt: skip
        except (ArtifactError, CardError) as exc:
            if runtime in ARTIFACT_RUNTIMES:
                raise ModelLoadError(
                    f"model_runtime is {runtime} but {artifact.file}: {exc}"
                ) from exc
            logger.warning("%s not used, serving TorchScript (model.pt): %s", artifact.file, exc)
            return self
        logger.info(
            "serving %s: outputs equal TorchScript's within %.2g on %d check inputs",
            choice.reason, diff, spec.count,
        )  # fmt: skip
        return candidate

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """This model's inputs for [N,28,28] pixels in [0,1] (the card's mean and std)."""
        norm = self.card.input.normalization
        return model_inputs(pixels, norm.mean, norm.std)

    def predict_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """`predict_batch` of [N,28,28] pixels in [0,1] (for callers outside the server)."""
        return self.predict_batch(self.inputs(pixels))

    @torch.inference_mode()
    def predict_batch(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Probabilities on CPU, [N, C] with C = 10 or 11 per the card (see
        `digit_probabilities`); input is [N,28,28] model inputs (see `inputs`)."""
        x = torch.as_tensor(inputs, dtype=torch.float32)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            if self.half:
                x = x.half()
            return self._serve(x).cpu()
        return self._serve(x)
