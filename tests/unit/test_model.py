"""Classifier loading: the shipped model, and every reason to refuse one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.serving.model import (
    Classifier,
    ModelLoadError,
    digit_probabilities,
    not_a_digit_scores,
    resolve_device,
)


def test_classifier_shipped_model_matches_its_card_on_real_digits(
    shipped_models: Path, mnist_sample
) -> None:
    images, labels = mnist_sample
    clf = Classifier.load(shipped_models / "mnist-cnn" / "1", torch.device("cpu"))
    probs = clf.predict_pixels(images.astype(np.float32) / 255)
    assert probs.shape == (200, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    accuracy = float((probs.argmax(1).numpy() == labels).mean())
    assert accuracy >= 0.98, accuracy


def test_classifier_optimized_and_plain_graphs_agree(shipped_models: Path, mnist_sample) -> None:
    x = mnist_sample[0][:32].astype(np.float32) / 255
    folder = shipped_models / "mnist-cnn" / "1"
    fast = Classifier.load(folder, torch.device("cpu"), optimize=True).predict_pixels(x)
    plain = Classifier.load(folder, torch.device("cpu"), optimize=False).predict_pixels(x)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


def test_classifier_refuses_corrupt_torchscript(tmp_path: Path, shipped_models: Path) -> None:
    from service.serving.card import ModelCard, sha256_file

    folder = tmp_path / "m" / "1"
    shutil.copytree(shipped_models / "mnist-cnn" / "1", folder)
    (folder / "model.pt").write_bytes(b"garbage")
    card = ModelCard.read(folder)
    card.sha256 = sha256_file(folder / "model.pt")  # checksum right, content wrong
    card.write(folder)
    with pytest.raises(ModelLoadError, match="cannot load TorchScript"):
        Classifier.load(folder, torch.device("cpu"))


def test_resolve_device_refuses_cuda_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the CUDA tests cover it there
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_digit_probabilities_renormalise_the_ten_digit_columns() -> None:
    ten = torch.softmax(torch.randn(4, 10), 1)
    assert digit_probabilities(ten) is ten
    torch.testing.assert_close(not_a_digit_scores(ten), torch.zeros(4))
    eleven = torch.tensor([[0.1] * 5 + [0.0] * 5 + [0.5], [0.0] * 9 + [0.2, 0.8]])
    digits = digit_probabilities(eleven)
    assert digits.shape == (2, 10)
    torch.testing.assert_close(digits.sum(1), torch.ones(2))
    torch.testing.assert_close(digits[0, :5], torch.full((5,), 0.2))
    assert float(digits[1, 9]) == pytest.approx(1.0)
    torch.testing.assert_close(not_a_digit_scores(eleven), torch.tensor([0.5, 0.8]))
