"""The model card: the one contract between `training/` and `service/`.

Training writes it next to `model.pt`; the service refuses to start unless it
validates and the model's sha256 matches. Normalisation constants live only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"
#: A version folder's name: ASCII digits only (str.isdigit() also accepts "²", which int()
#: refuses), and short enough to stay a sane number and path component.
_VERSION = re.compile(r"[0-9]{1,18}")
MODEL_FILE = "model.pt"
#: The AOTInductor package beside model.pt (optional; see `Artifact`).
AOTI_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
LABELS = [str(d) for d in range(10)]
#: The optional 11th output class (index 10) of a model that can answer "not a digit".
NOT_A_DIGIT = "not_a_digit"


class CardError(Exception):
    """The card is missing, malformed, or does not match its model file."""


class ModelLoadError(Exception):
    """The model cannot be served: missing, corrupt, checksum mismatch, bad device.

    Defined beside the card (which both the repository and the model import), so that the
    model does not import the repository that loads it."""


class Normalization(BaseModel):
    """x_model = (pixel / 255 - mean) / std, per channel (one channel here)."""

    model_config = ConfigDict(extra="forbid")
    mean: float
    std: float = Field(gt=0)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "input"
    shape: list[int] = Field(default_factory=lambda: [-1, 1, 28, 28])
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    normalization: Normalization
    preprocessing: str = (
        "grayscale, light ink on a dark background; the digit is fitted into a 20x20 box "
        "keeping its aspect ratio and centred by centre of mass in a 28x28 canvas"
    )

    @field_validator("shape")
    @classmethod
    def _mnist_shape(cls, shape: list[int]) -> list[int]:
        if shape[1:] != [1, 28, 28] or len(shape) != 4:
            raise ValueError(f"input shape must be [-1, 1, 28, 28], got {shape}")
        return shape


class OutputSpec(BaseModel):
    """Ten digit classes, optionally followed by "not_a_digit" (index 10).

    With the 11th class, `reject_threshold` is the calibrated probability of "not a digit"
    (after the temperature) at or above which an image is answered as not a digit.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = "output"
    shape: list[int] = Field(default_factory=lambda: [-1, 10])
    kind: Literal["logits", "log_probabilities", "probabilities"] = "logits"
    temperature: float = Field(default=1.0, gt=0)
    labels: list[str] = Field(default_factory=lambda: list(LABELS))
    reject_threshold: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _labels_match(self) -> OutputSpec:
        if self.shape == [-1, 10] and self.labels == LABELS:
            if self.reject_threshold is not None:
                raise ValueError("reject_threshold needs the not_a_digit output class")
            return self
        if self.shape == [-1, 11] and self.labels == [*LABELS, NOT_A_DIGIT]:
            if self.reject_threshold is None:
                raise ValueError("an 11-class output needs a reject_threshold")
            return self
        raise ValueError(
            'output must be [-1, 10] with labels "0".."9", or [-1, 11] with "not_a_digit" last'
        )

    @property
    def classes(self) -> int:
        return self.shape[1]


class Metrics(BaseModel):
    """Measured on the MNIST test set with the exported (reloaded) file."""

    model_config = ConfigDict(extra="forbid")
    accuracy: float = Field(ge=0, le=1)
    per_class_accuracy: list[float] = Field(default_factory=list)
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    nll: float | None = None
    ece: float | None = None
    ece_uncalibrated: float | None = None
    validation_accuracy: float | None = None
    test_size: int | None = None
    #: Measured on the held-out part of the real-upload development set (see docs/accuracy.md).
    real_dev: dict[str, float | int] = Field(default_factory=dict)


class Artifact(BaseModel):
    """A compiled form of `model.pt` in the same folder, listed in the card's `export`.

    `model.pt` (TorchScript) is what every server version loads; an artifact is an
    optional faster runtime for one torch release and one device type. It computes what
    the TorchScript serving method computes (probabilities at the card's temperature, or
    the raw output for a "probabilities" model) on [N, 28, 28] model inputs, N within
    `batch`. `images_per_s` and `torchscript_images_per_s` were measured in the same run
    when it was built, at the batch sizes named by the keys.
    """

    model_config = ConfigDict(extra="ignore")
    format: Literal["aoti", "onnx"]
    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    torch: str
    device: Literal["cpu", "cuda"]
    batch: tuple[int, int] = (1, 1)
    temperature: float | None = None
    images_per_s: dict[str, float] = Field(default_factory=dict)
    torchscript_images_per_s: dict[str, float] = Field(default_factory=dict)
    check_max_abs_diff: float | None = None

    def speedup(self) -> float | None:
        """Geometric mean over the measured batch sizes of images/s against TorchScript's."""
        ratios = [
            rate / self.torchscript_images_per_s[size]
            for size, rate in self.images_per_s.items()
            if self.torchscript_images_per_s.get(size, 0) > 0
        ]
        if not ratios or min(ratios) <= 0:
            return None
        product = 1.0
        for r in ratios:
            product *= r
        return float(product ** (1 / len(ratios)))


class CheckSpec(BaseModel):
    """The inputs on which an artifact must give TorchScript's answers before it serves.

    `count` images made by `check_inputs` from `seed`; each served probability may differ
    from TorchScript's by at most `atol` (docs/operations.md says why this tolerance).
    """

    model_config = ConfigDict(extra="ignore")
    seed: int = 0
    count: int = Field(64, ge=1, le=4096)
    atol: float = Field(1e-4, gt=0, le=0.1)


def check_inputs(spec: CheckSpec) -> np.ndarray:
    """[count, 28, 28] float32 pixels in [0, 1]: a blank image, a white one, then sparse
    bright strokes on dark (uniform noise to the 8th power), reproducible from the seed."""
    rng = np.random.default_rng(spec.seed)
    pixels = (rng.random((spec.count, 28, 28)) ** 8).astype(np.float32)
    pixels[0] = 0.0
    if spec.count > 1:
        pixels[1] = 1.0
    return pixels


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=r"^[0-9]+$")
    platform: str = "pytorch_torchscript"
    created_at: datetime
    description: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    input: InputSpec
    output: OutputSpec
    metrics: Metrics | None = None
    training: dict[str, object] = Field(default_factory=dict)
    dataset: dict[str, object] = Field(default_factory=dict)
    parameters: int | None = None
    mflops: float | None = None
    export: dict[str, object] = Field(default_factory=dict)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def read(cls, version_dir: Path) -> ModelCard:
        """Parse and validate `card.json` in a version folder."""
        path = Path(version_dir) / CARD_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CardError(f"model card not found: {path}") from exc
        except OSError as exc:
            raise CardError(f"cannot read model card {path}: {exc.strerror or exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise CardError(f"model card {path} is not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            # Imported here: the card is read by training too, which needs no web stack.
            from service.errors import describe_validation

            reason = describe_validation(exc, "card")
            raise CardError(f"model card {path} is invalid at {reason}") from exc

    def write(self, version_dir: Path) -> Path:
        path = Path(version_dir) / CARD_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    def artifacts(self) -> tuple[list[Artifact], list[str]]:
        """The artifacts `export.artifacts` lists, and why any entry was skipped.

        Kept in the free-form `export` so that a card listing artifacts still loads in a
        server that predates them; an entry this server cannot read is skipped, never fatal:
        model.pt serves instead.
        """
        raw = self.export.get("artifacts", [])
        if not isinstance(raw, list):
            return [], ["export.artifacts is not a list"]
        found: list[Artifact] = []
        skipped: list[str] = []
        for i, entry in enumerate(raw):
            try:
                found.append(Artifact.model_validate(entry))
            except ValidationError as exc:
                skipped.append(f"export.artifacts[{i}] is invalid: {exc.errors()[0]['msg']}")
        return found, skipped

    def check_spec(self) -> CheckSpec:
        """The check inputs' recipe from `export.check` (defaults when absent or invalid)."""
        try:
            return CheckSpec.model_validate(self.export.get("check", {}))
        except ValidationError:
            return CheckSpec()

    def verify_artifact(self, version_dir: Path, artifact: Artifact) -> Path:
        """Check that an artifact's file exists and matches its sha256; return its path."""
        return _verify_file(Path(version_dir) / artifact.file, artifact.sha256)

    def verify(self, version_dir: Path) -> Path:
        """Check that model.pt exists and matches the recorded sha256; return its path."""
        return _verify_file(Path(version_dir) / MODEL_FILE, self.sha256)


def _verify_file(model_path: Path, sha256: str) -> Path:
    if not model_path.is_file():
        raise CardError(f"model file not found: {model_path}")
    try:
        digest = sha256_file(model_path)
    except OSError as exc:
        raise CardError(f"cannot read model file {model_path}: {exc.strerror or exc}") from exc
    if digest != sha256:
        raise CardError(
            f"checksum mismatch for {model_path}: card says {sha256[:12]}..., "
            f"file is {digest[:12]}..."
        )
    return model_path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_version(name: str) -> bool:
    """True for a well-formed version name (1 to 18 ASCII digits)."""
    return _VERSION.fullmatch(name) is not None


def list_versions(repository: Path, name: str) -> list[int]:
    """Version folders of a model that hold a card, oldest first.

    Names that are not ASCII numbers are ignored and unreadable folders skipped with a
    warning; a model folder that cannot be listed raises CardError.
    """
    root = Path(repository) / name
    try:
        if not root.is_dir():
            return []
        entries = list(root.iterdir())
    except OSError as exc:
        raise CardError(f"cannot list model folder {root}: {exc.strerror or exc}") from exc
    found = []
    for folder in entries:
        if not is_version(folder.name):
            continue
        try:
            if (folder / CARD_FILE).is_file():
                found.append(int(folder.name))
        except OSError as exc:  # e.g. a version folder without search permission
            logger.warning("skipping version folder %s: %s", folder, exc.strerror or exc)
    return sorted(found)


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warning (training's export, serving's load)."""
    # NOTE: torch 2.14 deprecates TorchScript; our artifacts are TorchScript by design, so
    # silence exactly that warning around the calls that raise it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecat", category=Warning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecat", category=Warning)
        yield
