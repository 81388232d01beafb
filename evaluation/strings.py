"""Numbers composed from MNIST training digits: how many the reader reads exactly.

    python -m evaluation.strings --mnist DIR [--count 100] [--seed 0] [--model-dir DIR]

Each string is 2 to `MAX_DIGITS` training digits side by side in one of five styles:
spaced apart, touching, overlapping, slanted, or each in a printed box; drawn as dark ink
on white paper at `SCALE` times MNIST's size and encoded as PNG. The reader runs
in-process (`scan` and `read`, with the served model) twice, with and without the number
lattice (`service.vision.numbers`), and reports exact-string accuracy per style.

Only the training file is read (never the MNIST test set); the strings are a check of the
reader, not a training set.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.config import Settings
from service.errors import ServiceError
from service.serving.model import Classifier
from service.serving.repository import ModelRepository
from service.vision.decode import ImageLimits
from service.vision.preprocess import READER, Reader, Scan, scan
from service.vision.reading import read

logger = logging.getLogger("evaluation.strings")

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
STYLES = ("spaced", "touching", "overlapping", "slanted", "boxed")


@dataclass(frozen=True)
class Compose:
    """How strings are drawn (pixels at MNIST's scale unless said otherwise)."""

    min_digits: int = 2
    max_digits: int = 5
    #: Gaps between digits' ink per style: [low, high] (negative: strokes overlap).
    spaced: tuple[int, int] = (3, 7)
    touching: tuple[int, int] = (-1, 0)
    overlapping: tuple[int, int] = (-4, -2)
    #: Slanted strings are sheared by this much (x per y), spaced like `spaced`.
    shear: tuple[float, float] = (0.2, 0.4)
    #: Boxes: this much paper around each digit, a line this wide.
    box_pad: int = 3
    box_line: int = 1
    #: Paper around the string, and how much larger than MNIST the page is drawn.
    margin: int = 8
    scale: int = 3
    #: Digits only from the end of the training file (never the MNIST test set).
    pool: int = 10000


COMPOSE = Compose()


def load_train(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST training images [N, 28, 28] uint8 and labels, from the raw IDX files."""
    with gzip.open(folder / TRAIN_IMAGES) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / TRAIN_LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def _columns(digit: np.ndarray) -> np.ndarray:
    """The digit's ink columns (all 28 rows kept, so digits stay on one baseline)."""
    xs = np.flatnonzero(digit.max(axis=0) > 0)
    return digit[:, xs[0] : xs[-1] + 1] if xs.size else digit


def compose(
    digits: list[np.ndarray], style: str, rng: np.random.Generator, c: Compose = COMPOSE
) -> np.ndarray:
    """One string's page: dark ink on white, uint8, `c.scale` times MNIST's size."""
    low, high = {"touching": c.touching, "overlapping": c.overlapping}.get(style, c.spaced)
    boxed = style == "boxed"
    pieces = [_columns(d) for d in digits]
    pad = c.box_pad + c.box_line if boxed else 0
    gaps = [int(rng.integers(low, high + 1)) + 2 * pad for _ in pieces[1:]]
    width = sum(p.shape[1] for p in pieces) + sum(gaps) + 2 * c.margin + 2 * pad
    canvas = np.zeros((28 + 2 * c.margin, max(width, 1)), np.float32)
    x = c.margin + pad
    cells = []
    for i, piece in enumerate(pieces):
        h, w = piece.shape
        region = canvas[c.margin : c.margin + h, x : x + w]
        np.maximum(region, piece / 255.0, out=region)
        cells.append((x - pad, x + w + pad))
        x += w + (gaps[i] if i < len(gaps) else 0)
    img = Image.fromarray((255 - canvas * 255).astype(np.uint8), "L")
    big = img.resize((img.width * c.scale, img.height * c.scale), Image.Resampling.BILINEAR)
    if boxed:
        draw = ImageDraw.Draw(big)
        top, bottom = (c.margin - pad) * c.scale, (c.margin + 28 + pad) * c.scale
        for x0, x1 in cells:
            draw.rectangle([x0 * c.scale, top, x1 * c.scale, bottom], outline=0,
                           width=c.box_line * c.scale)  # fmt: skip
    if style == "slanted":
        s = float(rng.uniform(*c.shear))
        extra = int(s * big.height)
        wide = Image.new("L", (big.width + extra, big.height), 255)
        wide.paste(big, (0, 0))
        big = wide.transform(wide.size, Image.Transform.AFFINE, (1, s, -extra, 0, 1, 0),
                             resample=Image.Resampling.BILINEAR, fillcolor=255)  # fmt: skip
    return np.asarray(big)


def make_set(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int, c: Compose = COMPOSE
) -> list[tuple[str, str, bytes]]:
    """`count` strings per style: (style, the number, PNG bytes)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(images) - c.pool, len(images))
    out = []
    for style in STYLES:
        for _ in range(count):
            n = int(rng.integers(c.min_digits, c.max_digits + 1))
            idx = rng.choice(pool, size=n, replace=False)
            page = compose([images[i] for i in idx], style, rng, c)
            buf = io.BytesIO()
            Image.fromarray(page, "L").save(buf, format="PNG")
            out.append((style, "".join(str(int(labels[i])) for i in idx), buf.getvalue()))
    return out


def evaluate(
    strings: list[tuple[str, str, bytes]], clf: Classifier, reader: Reader, limits: ImageLimits
) -> dict[str, list[int]]:
    """[exact, total] per style (and "all") for one reader."""
    scans: list[Scan | None] = []
    for _, _, data in strings:
        try:
            scans.append(scan(data, limits, reader=reader))
        except ServiceError:
            scans.append(None)
    counts: dict[str, list[int]] = {s: [0, 0] for s in (*STYLES, "all")}
    for (style, want, _), s in zip(strings, scans, strict=True):
        got = ""
        if s is not None and s.inputs:
            rows = clf.predict_pixels(np.stack([g.pixels for g in s.inputs])).tolist()
            answer = read(s, rows, clf.reject_threshold)
            got = (answer.number or "").replace("\n", "")
        for key in (style, "all"):
            counts[key][0] += int(got == want)
            counts[key][1] += 1
    return counts


def markdown(results: dict[str, dict[str, list[int]]]) -> str:
    cols = (*STYLES, "all")
    lines = ["| reader | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, counts in results.items():
        cells = [f"{100 * counts[k][0] / max(counts[k][1], 1):.1f}" for k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m evaluation.strings", description=__doc__)
    p.add_argument("--mnist", type=Path, required=True, help="folder of the MNIST .gz files")
    p.add_argument("--count", type=int, default=100, help="strings per style")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, help="a model version folder (default: served)")
    args = p.parse_args(argv)
    settings = Settings(device="cpu")
    if args.model_dir is not None:
        from service.serving.model import resolve_device

        clf = Classifier.load(args.model_dir, resolve_device("cpu"), warmup_batch_sizes=(1,))
    else:
        clf = ModelRepository(settings).load()
    images, labels = load_train(args.mnist)
    strings = make_set(images, labels, args.count, args.seed)
    limits = ImageLimits.from_settings(settings)
    geometry = dataclasses.replace(
        READER, numbers=dataclasses.replace(READER.numbers, lattice=False)
    )
    results = {
        "geometry only": evaluate(strings, clf, geometry, limits),
        "lattice (shipped)": evaluate(strings, clf, READER, limits),
    }
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
