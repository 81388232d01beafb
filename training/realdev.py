"""The real-upload development set: manifest, grouped validation split, and a cache of
what the server's own preprocessing makes of every file.

Training must see exactly what serving sees, so each file goes through
`service.vision.preprocess.preprocess` on its raw bytes. That takes a minute for the ~10,000
files, so the 28x28 results are cached in an .npz keyed by the manifest and by the source
of the preprocessing modules: change either and the cache is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DataError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
#: Class index of "not a digit" in an 11-class model.
NOT_A_DIGIT = 10
#: Bitmap sets (many items, one item per origin row) vs real uploads (few, grouped crops).
BITMAP_SOURCES = ("usps", "optdigits")
_CROP = re.compile(r"\s*crop (\d+),(\d+),(\d+),(\d+)\s*$")
#: The reader's package: its code is part of the preprocessed cache's key.
_READER_PACKAGE = "service/vision"


@dataclass(frozen=True)
class Item:
    path: str
    label: str  # "0".."9", "nondigit:<category>" or "multi:<number>"
    source: str
    kind: str
    origin: str

    @property
    def is_digit(self) -> bool:
        return self.label.isdigit()

    @property
    def is_nondigit(self) -> bool:
        return self.label.startswith("nondigit:")

    @property
    def target(self) -> int:
        """Class index for training: the digit, or NOT_A_DIGIT."""
        return int(self.label) if self.is_digit else NOT_A_DIGIT

    @property
    def group(self) -> str:
        """Items that must land on the same side of the split.

        Crops of one source picture belong together; but where a whole source is a single
        picture (one scanned form, one sprite sheet) that would put the whole source on one
        side, so such crops are grouped by the row of the picture they come from instead.
        """
        m = _CROP.search(self.origin)
        if not m:
            return self.origin
        base = self.origin[: m.start()]
        x0, y0, x1, y1 = (int(v) for v in m.groups())
        return f"{base}#row{int((y0 + y1) / 2 // max(y1 - y0, 1))}"


def read_manifest(root: Path) -> list[Item]:
    path = Path(root) / MANIFEST
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as exc:
        raise DataError(f"real-dev manifest not found: {path}") from exc
    try:
        return [Item(r["path"], r["label"], r["source"], r["kind"], r["origin"]) for r in rows]
    except KeyError as exc:
        raise DataError(f"{path} lacks the column {exc}") from exc


def _stable_hash(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def split(
    items: list[Item], *, val_fraction: float = 0.3, bitmap_val_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Boolean mask: True for validation items.

    Stratified by (source, label); within a stratum whole groups go to validation, in a
    seeded hash order, until the stratum's share is reached (at least one group when the
    stratum has two or more). Deterministic: the same manifest and seed give the same split.
    """
    strata: dict[tuple[str, str], dict[str, list[int]]] = {}
    for i, item in enumerate(items):
        label = item.label.split(":")[0] if not item.is_digit else item.label
        strata.setdefault((item.source, label), {}).setdefault(item.group, []).append(i)
    val = np.zeros(len(items), dtype=bool)
    for (source, _), groups in strata.items():
        frac = bitmap_val_fraction if source in BITMAP_SOURCES else val_fraction
        total = sum(len(g) for g in groups.values())
        order = sorted(groups, key=lambda g: _stable_hash(g, seed))
        if len(order) < 2:
            continue  # one group cannot be split: it trains
        taken = 0
        for g in order:
            if taken >= frac * total:
                break
            val[groups[g]] = True
            taken += len(groups[g])
    return val


def _code_key(manifest: Path) -> str:
    h = hashlib.sha256(manifest.read_bytes())
    repo = Path(__file__).resolve().parent.parent
    for path in sorted((repo / _READER_PACKAGE).glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class RealDev:
    items: list[Item]
    pixels: np.ndarray  # [N, 28, 28] uint8, ink = 255, what the server feeds the model
    ok: np.ndarray  # [N] bool: False where preprocessing found nothing to read
    val: np.ndarray  # [N] bool: the validation split

    def select(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, targets) of the items in `mask` that preprocessing could read."""
        keep = mask & self.ok
        targets = np.array([it.target for it in self.items], dtype=np.int64)
        return self.pixels[keep], targets[keep]


def preprocess_all(root: Path, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    from service.config import Settings
    from service.errors import ServiceError
    from service.vision.decode import ImageLimits
    from service.vision.preprocess import preprocess

    limits = ImageLimits.from_settings(Settings())
    pixels = np.zeros((len(items), 28, 28), dtype=np.uint8)
    ok = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        try:
            out = preprocess((Path(root) / item.path).read_bytes(), limits)
        except ServiceError:
            continue  # "nothing to read": an answer in itself, never a training input
        pixels[i] = np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
        ok[i] = True
    return pixels, ok


def load_realdev(root: Path, cache_dir: Path, *, seed: int = 0) -> RealDev:
    """The whole set preprocessed (cached) with its validation split."""
    root = Path(root)
    items = read_manifest(root)
    key = _code_key(root / MANIFEST)
    cache = Path(cache_dir) / f"realdev-{key}.npz"
    if cache.is_file():
        data = np.load(cache)
        pixels, ok = data["pixels"], data["ok"]
    else:
        logger.info("preprocessing %d real-dev files into %s", len(items), cache)
        pixels, ok = preprocess_all(root, items)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, pixels=pixels, ok=ok)
        tmp.rename(cache)
    return RealDev(items, pixels, ok, split(items, seed=seed))
