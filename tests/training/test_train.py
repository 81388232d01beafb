"""The training command end to end on tiny data, and every bad-input exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.card import ModelCard, sha256_file
from service.model import Classifier
from tests.training.conftest import write_mnist
from training.train import main


def run(tmp_path: Path, *extra: str) -> int:
    data = tmp_path / "data"
    if not data.exists():
        write_mnist(data, "flat")
    return main(["--data-dir", str(data), "--out", str(tmp_path / "models"), "--epochs", "1",
                 "--limit", "200", "--batch-size", "32", *extra])  # fmt: skip


def test_train_limit_run_exports_a_loadable_model_and_valid_card(tmp_path: Path) -> None:
    assert run(tmp_path) == 0
    version = tmp_path / "models" / "mnist-cnn" / "1"
    card = ModelCard.read(version)
    assert card.sha256 == sha256_file(version / "model.pt")
    assert card.version == "1"
    assert card.training["seed"] == 0
    assert card.training["limit"] == 200
    assert card.export["max_abs_diff_vs_eager"] < 1e-4
    assert card.metrics is not None
    assert len(card.metrics.confusion_matrix) == 10
    assert card.parameters
    assert card.parameters > 10_000
    assert card.mflops
    assert card.mflops > 1
    assert (version / "model.pt").stat().st_size < 5 * 1024 * 1024
    clf = Classifier.load(version, torch.device("cpu"))
    probs = clf.predict_batch(np.zeros((3, 28, 28), dtype=np.float32))
    assert probs.shape == (3, 10)
    # The card's numbers belong to the shipped file: re-evaluating it gives the same accuracy.
    from training.data import load_mnist

    test = load_mnist(tmp_path / "data", train=False, download=False)
    preds = clf.predict_batch(test.data.numpy()[:200] / 255.0).argmax(1)
    accuracy = float((preds == test.targets[:200]).float().mean())
    assert accuracy == pytest.approx(card.metrics.accuracy, abs=1e-6)


def test_train_next_version_is_the_next_free_number(tmp_path: Path) -> None:
    assert run(tmp_path) == 0
    assert run(tmp_path) == 0
    assert sorted(p.name for p in (tmp_path / "models" / "mnist-cnn").iterdir()) == ["1", "2"]


def test_train_existing_version_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    assert run(tmp_path) == 0
    card = tmp_path / "models" / "mnist-cnn" / "1" / "card.json"
    before = card.read_bytes()
    capsys.readouterr()
    assert run(tmp_path, "--version", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: version 1 already exists")
    assert "\n" not in err
    assert card.read_bytes() == before


def test_train_missing_data_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "m"),
                 "--no-download"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MNIST files not found in")
    assert "Traceback" not in err


def test_train_cuda_without_cuda_is_one_line(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run(tmp_path, "--device", "cuda") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --device cuda was requested but CUDA is not available"
    )


def test_train_unwritable_out_is_one_line(tmp_path: Path, capsys) -> None:
    # /proc refuses new folders even to root, unlike a chmod-ed directory.
    write_mnist(tmp_path / "data", "flat")
    code = main(["--data-dir", str(tmp_path / "data"), "--out", "/proc/mnist-serving-test"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot create output folder /proc/mnist-serving-test")
    assert "\n" not in err


def test_train_out_that_is_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    write_mnist(tmp_path / "data", "flat")
    assert run(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot create output folder")


def test_train_corrupt_data_file_is_one_line(tmp_path: Path, capsys) -> None:
    write_mnist(tmp_path / "data", "flat")
    (tmp_path / "data" / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    assert run(tmp_path) == 2
    assert capsys.readouterr().err.strip().startswith("error: corrupt MNIST file")
    assert not (tmp_path / "models" / "mnist-cnn" / "1").exists()
