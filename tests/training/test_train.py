"""The training command end to end on tiny data, and every bad-input exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.serving.card import ModelCard, sha256_file
from service.serving.model import Classifier, digit_probabilities
from tests.training.conftest import write_mnist, write_realdev
from training.calibrate import main as calibrate_main
from training.train import main, reject_threshold


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
    preds = clf.predict_pixels(test.data.numpy()[:200] / 255.0).argmax(1)
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


def test_train_with_real_dev_and_negatives_ships_an_eleven_class_model(tmp_path: Path) -> None:
    dev = write_realdev(tmp_path / "dev")
    code = run(tmp_path, "--real-dev", str(dev), "--cache-dir", str(tmp_path / "cache"),
               "--negatives", "40", "--real-repeat", "2", "--elastic", "1.0")  # fmt: skip
    assert code == 0
    version = tmp_path / "models" / "mnist-cnn" / "1"
    card = ModelCard.read(version)
    assert card.output.shape == [-1, 11]
    assert card.output.labels[-1] == "not_a_digit"
    assert card.output.reject_threshold is not None
    assert 0 < card.output.reject_threshold < 1
    assert card.metrics is not None
    real = card.metrics.real_dev
    assert {"accuracy_real_digits", "nondigit_rejection", "ece_real_digits"} <= set(real)
    assert "accuracy_photo" in real
    assert "accuracy_usps" in real
    assert "mnist_test_false_rejection" in real
    sources = card.dataset["sources"]
    assert isinstance(sources, dict)
    assert sources["mnist_train"] == 200
    assert sources["real_dev_real_digits"]["repeat"] == 2  # type: ignore[index]
    assert sources["synthetic_negatives"] > 0
    per_source = card.dataset["real_dev"]["per_source"]  # type: ignore[index]
    assert set(per_source) == {"usps", "photo-src", "gen"}
    clf = Classifier.load(version, torch.device("cpu"))
    assert clf.classes == 11
    assert clf.reject_threshold == card.output.reject_threshold
    probs = clf.predict_batch(np.zeros((3, 28, 28), dtype=np.float32))
    assert probs.shape == (3, 11)
    torch.testing.assert_close(digit_probabilities(probs).sum(1), torch.ones(3))
    # Recalibrating rewrites the threshold and the figures, never the weights.
    sha = card.sha256
    args = ["--model-dir", str(version), "--real-dev", str(dev),
            "--cache-dir", str(tmp_path / "cache"), "--threshold", "0.3"]  # fmt: skip
    assert calibrate_main(args) == 0
    again = ModelCard.read(version)
    assert again.output.reject_threshold == 0.3
    assert again.sha256 == sha == sha256_file(version / "model.pt")
    assert again.metrics is not None
    assert "mnist_test_false_rejection" in again.metrics.real_dev
    assert again.training["reject_rule"] == "fixed threshold 0.3"


def test_reject_threshold_keeps_each_part_within_the_budget() -> None:
    # Ten real digits, ten bitmap digits and five non-digits, with known scores.
    scores = torch.tensor([0.01] * 9 + [0.6] + [0.02] * 9 + [0.3] + [0.9] * 5)
    is_digit = torch.tensor([True] * 20 + [False] * 5)
    is_bitmap = torch.tensor([False] * 10 + [True] * 10 + [False] * 5)
    # No digit may be rejected: the threshold sits just above the highest digit score.
    assert reject_threshold(scores, is_digit, is_bitmap, 0.0) == pytest.approx(0.6, abs=1e-3)
    # One in ten may be: the real part's 0.6 is allowed, the bitmap part's 0.3 too.
    assert reject_threshold(scores, is_digit, is_bitmap, 0.1) == pytest.approx(0.05, abs=1e-3)
