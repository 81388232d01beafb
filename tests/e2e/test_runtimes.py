"""A real server serving from the shipped ONNX graph or AOTInductor package, with no compiler
on its PATH, answers exactly as one serving TorchScript; a broken package falls back to
TorchScript."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.serving.card import AOTI_FILE, ONNX_FILE, ModelCard, sha256_file
from tests.conftest import SHIPPED_MODELS, png_bytes
from tests.support.server import ServerProcess

VERSION = "4"  # the newest shipped version, built with its model.pt2 and model.onnx


def _answers(server: ServerProcess, images: np.ndarray) -> list[dict[str, object]]:
    files = [("files", (f"{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]
    r = httpx.post(server.url + "/v1/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    return list(r.json()["predictions"])


def _no_compiler_env(repository: Path) -> dict[str, str]:
    # Only the interpreter's own folder on PATH: no cc, c++ or g++ to find.
    return {
        "MNIST_MODEL_REPOSITORY": str(repository),
        "MNIST_MODEL_VERSION": VERSION,
        "PATH": str(Path(sys.executable).parent),
    }


@pytest.mark.parametrize("runtime", ["aoti", "onnx", "auto"])
def test_e2e_artifact_serves_torchscript_answers_without_a_compiler(
    tmp_path: Path, mnist_sample: tuple[np.ndarray, np.ndarray], runtime: str
) -> None:
    assert shutil.which("g++", path=str(Path(sys.executable).parent)) is None
    images, labels = mnist_sample
    images = images[:48]
    env = {**_no_compiler_env(SHIPPED_MODELS), "MNIST_MODEL_RUNTIME": runtime}
    fast_server = ServerProcess(env=env)
    fast_server.start(tmp_path)
    try:
        # auto: the ONNX graph, measured fastest when the artifacts were built.
        log = fast_server.wait_for_log(f"served by {'onnx' if runtime == 'auto' else runtime}")
        assert "outputs equal TorchScript's" in log
        fast = _answers(fast_server, images)
    finally:
        assert fast_server.stop() == 0, fast_server.log()
    env = {**_no_compiler_env(SHIPPED_MODELS), "MNIST_MODEL_RUNTIME": "torchscript"}
    ts = ServerProcess(env=env)
    ts.start(tmp_path)
    try:
        ts.wait_for_log("served by torchscript")
        reference = _answers(ts, images)
    finally:
        assert ts.stop() == 0, ts.log()
    assert [p["digit"] for p in fast] == [p["digit"] for p in reference]
    assert sum(int(p["digit"] == y) for p, y in zip(fast, labels, strict=False)) >= 46
    for got, want in zip(fast, reference, strict=True):
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-3)


def test_e2e_corrupt_package_falls_back_to_torchscript(
    tmp_path: Path, mnist_sample: tuple[np.ndarray, np.ndarray]
) -> None:
    repository = tmp_path / "models"
    folder = repository / "mnist-cnn" / VERSION
    shutil.copytree(SHIPPED_MODELS / "mnist-cnn" / VERSION, folder)
    (folder / AOTI_FILE).write_bytes(b"PK\x03\x04 truncated")
    card = ModelCard.read(folder)
    artifacts = card.export["artifacts"]
    assert isinstance(artifacts, list)
    # The checksum matches the broken bytes, and the card claims a big speed-up, so that
    # `auto` really tries the package; the ONNX graph is gone.
    (folder / ONNX_FILE).unlink()
    artifacts[0] = {
        **artifacts[0],
        "sha256": sha256_file(folder / AOTI_FILE),
        "images_per_s": {"64": 1e5},
        "torchscript_images_per_s": {"64": 1e4},
    }
    card.write(folder)
    server = ServerProcess(env=_no_compiler_env(repository))
    server.start(tmp_path)
    try:
        log = server.wait_for_log("served by torchscript")
        assert "model.pt2 not used, serving TorchScript (model.pt): cannot load model.pt2" in log
        digits = [p["digit"] for p in _answers(server, mnist_sample[0][:8])]
        assert sum(int(d == y) for d, y in zip(digits, mnist_sample[1], strict=False)) >= 7
    finally:
        assert server.stop() == 0, server.log()
