"""Runtime choice: which artifact serves a version, and every reason to fall back to TorchScript.

The policy tests use the shipped v4 card with its artifact list edited; the loading tests use
the shipped v4 `model.pt2` and `model.onnx` themselves, corrupted, mismatched or mislabelled
in a copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.serving.card import AOTI_FILE, ONNX_FILE, ModelCard, check_inputs, sha256_file
from service.serving.model import Classifier, ModelLoadError
from service.serving.runtimes import (
    ARENA_BATCH,
    AUTO_MIN_SPEEDUP,
    Target,
    choose,
    cpu_flags,
    load_onnx,
    missing_isa,
    torch_release,
)

CPU = Target(torch_version=torch.__version__, device_type="cpu", max_batch=64)
SHIPPED_AOTI_VERSION = "4"


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "format": "aoti",
        "file": AOTI_FILE,
        "sha256": "0" * 64,
        "torch": torch.__version__,
        "device": "cpu",
        "batch": [1, 4096],
        "images_per_s": {"1": 4000.0, "64": 20000.0},
        "torchscript_images_per_s": {"1": 2000.0, "64": 10000.0},
    }
    entry.update(changes)
    return entry


def _card(shipped_models: Path, *artifacts: object) -> ModelCard:
    card = ModelCard.read(shipped_models / "mnist-cnn" / SHIPPED_AOTI_VERSION)
    card.export = {**card.export, "artifacts": list(artifacts)}
    return card


def test_choose_auto_takes_a_matching_artifact_measured_faster(shipped_models: Path) -> None:
    choice = choose(_card(shipped_models, _entry()), "auto", CPU)
    assert choice.artifact is not None
    assert choice.artifact.file == AOTI_FILE
    assert "2.00x" in choice.reason


@pytest.mark.parametrize(
    ("changes", "target", "reason"),
    [
        ({"torch": "2.3.0"}, CPU, "built for torch 2.3.0"),
        ({"device": "cuda"}, CPU, "built for cuda, this server runs on cpu"),
        ({}, Target(torch.__version__, "cuda", 64), "built for cpu, this server runs on cuda"),
        ({}, Target(torch.__version__, "cpu", 64, half=True), "half_precision is on"),
        ({"batch": [1, 32]}, CPU, "built for batches 1..32, this server runs 1..64"),
        ({"images_per_s": {"64": 10000.0}}, CPU, "measured 1.00x TorchScript"),
        ({"images_per_s": {}}, CPU, "not measured"),
    ],
)
def test_choose_auto_falls_back_to_torchscript_and_says_why(
    shipped_models: Path, changes: dict[str, Any], target: Target, reason: str
) -> None:
    choice = choose(_card(shipped_models, _entry(**changes)), "auto", target)
    assert choice.artifact is None
    assert reason in choice.reason


def test_choose_auto_needs_the_documented_margin(shipped_models: Path) -> None:
    just_under = {"64": 10000.0 * AUTO_MIN_SPEEDUP * 0.99}
    entry = _entry(images_per_s=just_under, torchscript_images_per_s={"64": 10000.0})
    assert choose(_card(shipped_models, entry), "auto", CPU).artifact is None
    # Asked for by name, the speed does not matter: the operator chose it.
    assert choose(_card(shipped_models, entry), "aoti", CPU).artifact is not None


def test_choose_by_name_takes_only_that_format(shipped_models: Path) -> None:
    onnx = _entry(format="onnx", file=ONNX_FILE, torch="2.3.0")  # the exporter's torch
    card = _card(shipped_models, _entry(), onnx)
    named = choose(card, "onnx", CPU).artifact
    assert named is not None
    assert named.file == ONNX_FILE  # an ONNX graph does not depend on the torch release
    picked = choose(card, "aoti", CPU).artifact
    assert picked is not None
    assert picked.file == AOTI_FILE
    assert "no artifact of onnx" in choose(_card(shipped_models, _entry()), "onnx", CPU).reason
    # auto: the fastest of the two when built.
    faster = _entry(format="onnx", file=ONNX_FILE, images_per_s={"1": 8000.0, "64": 30000.0})
    best = choose(_card(shipped_models, _entry(), faster), "auto", CPU).artifact
    assert best is not None
    assert best.file == ONNX_FILE


def test_choose_torchscript_ignores_artifacts(shipped_models: Path) -> None:
    choice = choose(_card(shipped_models, _entry()), "torchscript", CPU)
    assert choice.artifact is None
    assert "torchscript" in choice.reason


def test_choose_skips_an_entry_it_cannot_read_and_takes_the_next(shipped_models: Path) -> None:
    card = _card(shipped_models, {"format": "onnx-v9", "file": "x"}, _entry())
    choice = choose(card, "auto", CPU)
    assert choice.artifact is not None
    card = _card(shipped_models, {"format": "onnx-v9", "file": "x"})
    assert "export.artifacts[0] is invalid" in choose(card, "auto", CPU).reason


def test_choose_without_artifacts_is_torchscript(shipped_models: Path) -> None:
    old = ModelCard.read(shipped_models / "mnist-cnn" / "1")  # a card from before artifacts
    choice = choose(old, "auto", CPU)
    assert choice.artifact is None
    assert choice.reason == "the card lists no artifact"


def test_torch_release_ignores_the_wheel_tag() -> None:
    assert torch_release("2.14.1+cu130") == torch_release("2.14.1+cpu") == "2.14.1"


def test_missing_isa_reads_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\n")
    flags = cpu_flags(cpuinfo)
    assert missing_isa("AVX2", flags) is None
    assert missing_isa("", flags) is None
    assert "AVX512 AVX512_VNNI" in (missing_isa("AVX512 AVX512_VNNI", flags) or "")
    assert cpu_flags(tmp_path / "absent") is None
    assert "cannot be read" in (missing_isa("AVX2", None) or "")


def test_shipped_card_still_reads_in_a_server_before_artifacts(shipped_models: Path) -> None:
    """Artifacts live in `export`, a free-form field of every card so far, so a server that
    predates them (its card schema forbids unknown top-level keys) still reads the card."""
    card = shipped_models / "mnist-cnn" / SHIPPED_AOTI_VERSION / "card.json"
    raw = json.loads(card.read_text())
    fields_before_artifacts = {
        "name", "version", "platform", "created_at", "description", "versions", "input",
        "output", "metrics", "training", "dataset", "parameters", "mflops", "export", "sha256",
    }  # fmt: skip
    assert set(raw) <= fields_before_artifacts
    assert {a["file"] for a in raw["export"]["artifacts"]} == {AOTI_FILE, ONNX_FILE}


# ------------------------------------------------------------------------ loading and fallback


FILES = {"aoti": AOTI_FILE, "onnx": ONNX_FILE}


@pytest.fixture(params=sorted(FILES))
def fmt(request: pytest.FixtureRequest) -> str:
    """The artifact format under test."""
    name: str = request.param
    return name


@pytest.fixture
def version(tmp_path: Path, shipped_models: Path, fmt: str) -> Path:
    """A copy of the shipped version whose card claims the artifact of `fmt` is the fast
    one (so that `auto` tries it) and the other one no faster than TorchScript."""
    folder = tmp_path / "mnist-cnn" / SHIPPED_AOTI_VERSION
    shutil.copytree(shipped_models / "mnist-cnn" / SHIPPED_AOTI_VERSION, folder)
    for name, file in FILES.items():
        fast = 2e4 if name == fmt else 1e4
        _edit_entry(folder, file, images_per_s={"64": fast}, torchscript_images_per_s={"64": 1e4})
    return folder


def _edit_entry(folder: Path, file: str, **changes: Any) -> None:
    card = ModelCard.read(folder)
    artifacts = card.export["artifacts"]
    assert isinstance(artifacts, list)
    (at,) = [i for i, a in enumerate(artifacts) if isinstance(a, dict) and a["file"] == file]
    artifacts[at] = {**artifacts[at], **changes}
    card.write(folder)


def test_load_serves_the_artifact_with_torchscript_answers(
    version: Path,
    fmt: str,
    mnist_sample: tuple[np.ndarray, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="service.serving.model"):
        fast = Classifier.load(version, torch.device("cpu"))
    assert fast.runtime == fmt
    assert f"served by {fmt}" in caplog.text
    reference = Classifier.load(version, torch.device("cpu"), runtime="torchscript")
    assert reference.runtime == "torchscript"
    pixels = mnist_sample[0].astype(np.float32) / 255
    torch.testing.assert_close(
        fast.predict_pixels(pixels), reference.predict_pixels(pixels), atol=1e-4, rtol=0
    )
    assert fast.predict_batch(np.zeros((0, 28, 28), np.float32)).shape == (0, 11)


def _corrupt(folder: Path, file: str) -> None:
    (folder / file).write_bytes(b"PK\x03\x04 not a package")
    _edit_entry(folder, file, sha256=sha256_file(folder / file))  # checksum right, bytes wrong


def _mismatch(folder: Path, file: str) -> None:
    # A package that loads and runs but computes something else: the card's temperature
    # moved after it was built, and TorchScript's serving method follows the card.
    card = ModelCard.read(folder)
    card.output.temperature = card.output.temperature * 3
    card.write(folder)


def _tampered(folder: Path, file: str) -> None:
    with open(folder / file, "ab") as fh:
        fh.write(b"\0")


def _other_torch(folder: Path, file: str) -> None:
    _edit_entry(folder, file, torch="2.3.1")


def _on_cuda(folder: Path, file: str) -> None:
    _edit_entry(folder, file, device="cuda")


def _missing(folder: Path, file: str) -> None:
    (folder / file).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt, "cannot load {file}"),
        (_mismatch, "outputs differ from TorchScript's"),
        (_tampered, "checksum mismatch"),
        (_on_cuda, "built for cuda, this server runs on cpu"),
        (_missing, "model file not found"),
    ],
)
def test_load_falls_back_to_torchscript_with_a_log_line(
    version: Path, fmt: str, damage: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    file = FILES[fmt]
    damage(version, file)
    reason = reason.format(file=file)
    with caplog.at_level(logging.INFO, logger="service.serving.model"):
        clf = Classifier.load(version, torch.device("cpu"))
    assert clf.runtime == "torchscript"
    assert reason in caplog.text
    assert "serving TorchScript (model.pt)" in caplog.text
    # It serves: TorchScript's answers on the check inputs.
    probs = clf.predict_pixels(check_inputs(ModelCard.read(version).check_spec()))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    # Asked for by name, the same damage refuses the version instead.
    with pytest.raises(ModelLoadError, match=f"model_runtime is {fmt}"):
        Classifier.load(version, torch.device("cpu"), runtime=fmt)  # type: ignore[arg-type]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_onnx_forward_over_the_arena_batch_gives_its_memory_back(shipped_models: Path) -> None:
    serve = load_onnx(
        shipped_models / "mnist-cnn" / SHIPPED_AOTI_VERSION / ONNX_FILE, torch.device("cpu"), 11, 1
    )
    serve(torch.zeros(ARENA_BATCH, 28, 28))
    before = _rss_mib()
    for _ in range(2):
        assert serve(torch.zeros(4096, 28, 28)).shape == (4096, 11)
    # Kept by the arena, a batch of 4,096 holds about 800 MiB for good (measured).
    assert _rss_mib() - before < 200


@pytest.mark.parametrize("fmt", ["onnx"])
def test_an_onnx_graph_without_onnxruntime_falls_back(
    version: Path, fmt: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    with caplog.at_level(logging.INFO, logger="service.serving.model"):
        clf = Classifier.load(version, torch.device("cpu"))
    assert clf.runtime == "torchscript"
    assert "model.onnx needs onnxruntime, which is not installed" in caplog.text


def test_a_package_for_another_torch_falls_back_but_an_onnx_graph_serves(
    version: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    _other_torch(version, FILES[fmt])
    with caplog.at_level(logging.INFO, logger="service.serving.model"):
        clf = Classifier.load(version, torch.device("cpu"))
    if fmt == "aoti":
        assert clf.runtime == "torchscript"
        assert "built for torch 2.3.1" in caplog.text
    else:
        assert clf.runtime == "onnx"
