"""The MNIST loader on tiny IDX files, in both layouts, through torchvision's class."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from tests.training.conftest import tiny_mnist, write_mnist
from training.data import DataError, file_checksums, load_mnist


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_mnist_reads_both_layouts(tmp_path: Path, layout: str) -> None:
    folder = write_mnist(tmp_path / "data", layout)
    train = load_mnist(folder, train=True, download=False)
    test = load_mnist(folder, train=False, download=False)
    assert isinstance(train, MNIST)
    (tri, trl), (tei, tel) = tiny_mnist()
    np.testing.assert_array_equal(train.data.numpy(), tri)
    np.testing.assert_array_equal(train.targets.numpy(), trl)
    np.testing.assert_array_equal(test.data.numpy(), tei)
    assert len(test) == len(tel)
    image, label = train[0]  # through torchvision's own __getitem__
    assert image.size == (28, 28)
    assert label == int(trl[0])


def test_load_mnist_flat_folder_is_never_written(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "data", "flat")
    folder.chmod(0o555)
    try:
        assert len(load_mnist(folder, train=False, download=False)) == 60
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{n}.gz"
        for n in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )


def test_load_mnist_missing_files_without_download_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MNIST files not found in .*train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path / "nothing", train=True, download=False)


def test_load_mnist_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "data", "flat")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="corrupt MNIST file"):
        load_mnist(folder, train=False, download=False)


def test_load_mnist_bad_idx_header_is_a_data_error(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "data", "flat")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\xff" * 64))
    with pytest.raises(DataError, match="corrupt MNIST data"):
        load_mnist(folder, train=False, download=False)


def test_file_checksums_flags_non_official_files(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "data", "flat")
    sums = file_checksums(folder)
    assert set(sums) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    assert all(v["official"] is False for v in sums.values())
