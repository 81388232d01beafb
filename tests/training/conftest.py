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


SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mnist_test_sample.npz"


def _paper_png(ink: np.ndarray, side: int) -> bytes:
    """An ink image (255 = ink, 28 px high) as dark pen on white paper, `side` px high."""
    import io

    from PIL import Image

    h, w = ink.shape
    img = Image.fromarray(255 - ink.astype(np.uint8), mode="L").resize((w * side // h, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_realdev(folder: Path, n_digits: int = 40) -> Path:
    """A small development set in the real one's layout: manifest.csv and image files.

    Digits are committed MNIST test samples drawn as pen on paper, split over a "photo"
    source whose crops come from two rows of each of two pictures, and a "usps" bitmap set;
    non-digits are stripes, plus a blank page (nothing to read) and a two-digit number.
    """
    import csv

    sample = np.load(SAMPLE)
    images, labels = sample["images"], sample["labels"]
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_digits):
        source = "photo-src" if i % 2 else "usps"
        sub = folder / source
        sub.mkdir(exist_ok=True)
        path = f"{source}/{labels[i]}_{i}.png"
        (folder / path).write_bytes(_paper_png(images[i], 64 if source == "usps" else 96))
        if source == "usps":
            origin, kind = f"repo@abc:zip.train.gz#row{i}", "dataset"
        else:
            y0 = 100 * ((i // 2) % 2)
            origin, kind = f"repo@abc:pic{i % 4 // 2}.jpg crop {i},{y0},{i + 90},{y0 + 90}", "photo"
        rows.append([path, str(labels[i]), source, kind, origin, "MIT", ""])
    (folder / "nondigit").mkdir(exist_ok=True)
    for j in range(8):
        # A striped patch, not stripes across the page (those are rulings: nothing to read).
        stripes = np.zeros((28, 28), np.uint8)
        stripes[6:22, 6 + j % 3 : 22 : 3 + j % 2] = 255
        path = f"nondigit/texture_{j}.png"
        (folder / path).write_bytes(_paper_png(stripes, 80))
        rows.append([path, "nondigit:texture", "gen", "dataset", f"gen#{j}", "CC0", ""])
    (folder / "nondigit/blank_paper_0.png").write_bytes(_paper_png(np.zeros((28, 28)), 80))
    rows.append(["nondigit/blank_paper_0.png", "nondigit:blank_paper", "gen", "dataset",
                 "gen#blank", "CC0", ""])  # fmt: skip
    (folder / "multi").mkdir(exist_ok=True)
    pair = np.concatenate([images[0], images[1]], axis=1)
    (folder / "multi/n_0.png").write_bytes(_paper_png(pair, 112))
    rows.append(["multi/n_0.png", f"multi:{labels[0]}{labels[1]}", "photo-src", "photo",
                 "repo@abc:pic9.jpg", "MIT", ""])  # fmt: skip
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "source", "kind", "origin", "licence", "note"])
        w.writerows(rows)
    return folder
