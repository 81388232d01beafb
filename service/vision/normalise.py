"""Stage 5, normalise: one glyph in MNIST's geometry. Its own strokes (neighbours and
the page zeroed), levelled to full ink, thin pen lines widened to MNIST's 2-3 px, fitted
in a 20x20 box keeping the aspect ratio and centred by mass in 28x28.

`to_mnist(ink, part, threshold)` returns the [28, 28] float32 the model reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from service.vision.glyphs import Part
from service.vision.ink import MNIST_SIZE

#: The box MNIST fits its digits in.
BOX = 20


@dataclass(frozen=True)
class NormaliseParams:
    """Thresholds of the normalise stage; a `bool` field turns its rule off."""

    #: The strokes are grown by 1/`grow_divisor` of the image's side (at least 1 px) to
    #: keep their anti-aliased edges.
    grow_divisor: int = 200
    #: Ink is levelled so that this percentile of the glyph's strokes is full ink, from a
    #: floor at `floor_share` of the stroke threshold (off: the ink as it is).
    level: bool = True
    level_percentile: float = 90.0
    floor_share: float = 0.5
    #: The extent comes from pixels above this level, not from the faint fringe.
    extent_level: float = 0.2
    #: Strokes thinner than `thin_stroke` px in the box are levelled and widened, by 3x3
    #: under `very_thin_stroke`, else by 2x2.
    widen: bool = True
    thin_stroke: float = 2.0
    very_thin_stroke: float = 1.2


NORMALISE = NormaliseParams()


def to_mnist(
    ink: np.ndarray, part: Part, threshold: float, p: NormaliseParams = NORMALISE
) -> np.ndarray:
    """The part's own strokes in `ink`, levelled to full ink, fitted and centred in 28x28."""
    grow = max(1, round(max(ink.shape) / p.grow_divisor))
    x0, y0, x1, y1 = part.box
    h, w = ink.shape
    cy0, cx0 = max(y0 - grow, 0), max(x0 - grow, 0)
    cy1, cx1 = min(y1 + grow, h), min(x1 + grow, w)
    crop = ink[cy0:cy1, cx0:cx1]
    mask = np.zeros(crop.shape, dtype=bool)
    mask[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = part.mask
    # Zero what lies outside the chosen strokes (grown a little to keep anti-aliased edges).
    keep = ndimage.binary_dilation(mask, iterations=grow)
    if p.level:
        ink_level = float(np.percentile(crop[mask], p.level_percentile))
        floor = p.floor_share * threshold
        clean = np.clip((crop - floor) / max(ink_level - floor, 1e-3), 0.0, 1.0) * keep
    else:
        clean = crop * keep
    ys, xs = np.nonzero(clean > p.extent_level)
    if ys.size == 0:
        return np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    clean = clean[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    return _fit_and_centre(clean, _stroke_width(mask), p)


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the outline (exact for long strips
    at least 3 px wide; 1- and 2-px lines both read as 2)."""
    area = int(mask.sum())
    outline = area - int(ndimage.binary_erosion(mask).sum())
    return 2.0 * area / max(outline, 1)


def _fit_and_centre(crop: np.ndarray, stroke_px: float, p: NormaliseParams) -> np.ndarray:
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    patch = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    stroke = stroke_px * scale
    if p.widen and stroke < p.thin_stroke and patch.size > 4:
        # Thin pen lines shrink to faint 1-px traces; MNIST strokes are 2-3 px wide in the
        # 20-px box: level them at their typical ink and widen them.
        inked = patch[patch > 0]
        level = float(np.percentile(inked, p.level_percentile)) if inked.size else 0.0
        if level > 0:
            patch = np.clip(patch / level, 0.0, 1.0)
        patch = ndimage.grey_dilation(patch, size=(3, 3) if stroke < p.very_thin_stroke else (2, 2))
    top = float(patch.max())
    if top > 0:
        patch = np.clip(patch / top, 0.0, 1.0)
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    ph, pw = patch.shape
    if ph > MNIST_SIZE or pw > MNIST_SIZE:
        patch = patch[:MNIST_SIZE, :MNIST_SIZE]
        ph, pw = patch.shape
    cy, cx = ndimage.center_of_mass(patch) if top > 0 else (ph / 2, pw / 2)
    oy = int(np.clip(round(MNIST_SIZE / 2 - cy), 0, MNIST_SIZE - ph))
    ox = int(np.clip(round(MNIST_SIZE / 2 - cx), 0, MNIST_SIZE - pw))
    out[oy : oy + ph, ox : ox + pw] = patch
    return out
