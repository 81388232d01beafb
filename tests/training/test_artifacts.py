"""`python -m training artifacts --format onnx` on a copy of the shipped version: the graph it
writes is listed in the card with its checksum and timings, and serves TorchScript's answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.serving.card import ONNX_FILE, ModelCard, sha256_file
from service.serving.model import Classifier
from training.artifacts import FORMATS, BuildSpec, build, main


def test_onnx_build_lists_a_checked_graph_that_serves(
    tmp_path: Path, shipped_models: Path, mnist_sample: tuple[np.ndarray, np.ndarray]
) -> None:
    folder = tmp_path / "mnist-cnn" / "4"
    shutil.copytree(shipped_models / "mnist-cnn" / "4", folder)
    (folder / ONNX_FILE).unlink()
    before = ModelCard.read(folder).export["artifacts"]
    assert isinstance(before, list)
    spec = BuildSpec(max_batch=256, images_per_timing=64, rounds=1)
    artifact = build(folder, spec, FORMATS["onnx"])
    assert artifact.sha256 == sha256_file(folder / ONNX_FILE)
    assert artifact.batch == (1, 256)
    assert set(artifact.images_per_s) == {"1", "8", "64"}
    assert artifact.check_max_abs_diff is not None
    assert artifact.check_max_abs_diff <= ModelCard.read(folder).check_spec().atol
    listed = ModelCard.read(folder).export["artifacts"]
    assert isinstance(listed, list)
    # The other artifact's entry is kept; the graph's is replaced, not added twice.
    assert sorted(a["file"] for a in listed) == sorted(a["file"] for a in before)
    served = Classifier.load(folder, torch.device("cpu"), runtime="onnx")
    reference = Classifier.load(folder, torch.device("cpu"), runtime="torchscript")
    pixels = mnist_sample[0][:100].astype(np.float32) / 255
    torch.testing.assert_close(
        served.predict_pixels(pixels), reference.predict_pixels(pixels), atol=1e-4, rtol=0
    )


def test_build_of_a_folder_that_is_not_a_version_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
