from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

NAMES = {
    "train-images-idx3-ubyte": ("images", True),
    "train-labels-idx1-ubyte": ("labels", True),
    "t10k-images-idx3-ubyte": ("images", False),
    "t10k-labels-idx1-ubyte": ("labels", False),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format MNIST ships in: magic (0, 0, 0x08 = uint8, ndim), sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_mnist(n_train: int = 240, n_test: int = 60, seed: int = 0):
    """Synthetic digits: class k draws a bar at a class-specific position (learnable)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 4 + 2 * k : 6 + 2 * k, 6:22] = 255
        return images, labels

    return make(n_train), make(n_test)


def write_mnist(folder: Path, layout: str, n_train: int = 240, n_test: int = 60) -> Path:
    """Write the four files as `flat` (.gz in one folder) or `torchvision` (MNIST/raw/)."""
    (tri, trl), (tei, tel) = tiny_mnist(n_train, n_test)
    arrays = {
        "train-images-idx3-ubyte": tri,
        "train-labels-idx1-ubyte": trl,
        "t10k-images-idx3-ubyte": tei,
        "t10k-labels-idx1-ubyte": tel,
    }
    target = folder if layout == "flat" else folder / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if layout == "flat":
            (target / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (target / name).write_bytes(data)
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
