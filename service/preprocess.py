"""Turn a decoded grayscale image into what the model expects: an MNIST-style 28x28 digit.

Real uploads are phone photos, scans, canvas exports and screenshots. `service.decode` opens
them safely; this module normalises to MNIST's conventions: light ink on dark, ink isolated
and cropped, fitted to a 20x20 box keeping the aspect ratio, and centred by centre of mass
in 28x28.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from service.decode import WORK_SIDE, DecodeBudget, ImageLimits, RequestBudget, decode_gray
from service.errors import InvalidImage

__all__ = ["ImageLimits", "normalize", "preprocess", "to_png", "MNIST_SIZE", "BOX"]

MNIST_SIZE = 28
BOX = 20


def _shrink(gray: np.ndarray, side: int) -> np.ndarray:
    h, w = gray.shape
    scale = side / max(h, w)
    if scale >= 1:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX))


def _border(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    m = max(1, min(h, w) // 20)
    return np.concatenate(
        [gray[:m].ravel(), gray[-m:].ravel(), gray[:, :m].ravel(), gray[:, -m:].ravel()]
    )


def _background_surface(values: np.ndarray, bright_background: bool) -> np.ndarray:
    """A quadratic surface fitted to the background pixels (lighting, tint, vignetting).

    Fitted twice, each time to the pixels on the background's side of Otsu's threshold,
    so strokes, even thick marker ones, never leak into the estimate.
    """
    h, w = values.shape
    step = max(1, int(np.sqrt(h * w / 20000)))
    sample = values[::step, ::step]
    yy, xx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1)

    def background_side(v: np.ndarray) -> np.ndarray:
        t = _otsu(np.clip(v, 0, 1))
        return v >= t if bright_background else v <= t

    chosen = background_side(sample)
    coef = np.array([float(np.median(sample)), 0, 0, 0, 0, 0], dtype=np.float32)
    for _ in range(2):
        if chosen.sum() < 12:
            break
        coef, *_ = np.linalg.lstsq(basis[chosen], sample[chosen], rcond=None)
        fitted = basis @ coef
        chosen = background_side(sample - fitted + float(np.median(fitted)))
    fy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    fx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    c = coef.astype(np.float32)
    return c[0] + c[1] * fx + c[2] * fy + c[3] * fx * fx + c[4] * fx * fy + c[5] * fy * fy


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def _ruling(mask: np.ndarray) -> np.ndarray:
    """Pixels of ruled-paper lines: thin bands of ink spanning the whole page.

    Rulings repeat, so a direction counts only with two or more such bands (one long bar is
    not enough: a 7 drawn edge to edge has one). Once a page is ruled, a single full-height
    line across it (the margin) is page structure too.
    """
    found: dict[int, list[tuple[int, int]]] = {}
    for axis in (1, 0):  # axis 1: bands of rows (horizontal lines); axis 0: columns
        span = mask.mean(axis=axis) > 0.7
        edges = np.flatnonzero(np.diff(np.concatenate(([0], span.astype(np.int8), [0]))))
        limit = max(2, round(0.02 * span.size))
        found[axis] = [
            (a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a <= limit
        ]
    ruled = len(found[1]) >= 2 or len(found[0]) >= 2
    lines = np.zeros_like(mask)
    if not ruled:
        return lines
    for a, b in found[1]:
        lines[a:b, :] = mask[a:b, :]
    for a, b in found[0]:
        lines[:, a:b] = mask[:, a:b]
    return lines


def _select_digit(mask: np.ndarray) -> np.ndarray:
    """Keep the largest ink component and sizeable ones near it; drop specks, far blobs and
    page structure (rulings, thin lines running across the whole image)."""
    mask = mask & ~_ruling(mask)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    h, w = mask.shape
    for i, (by, bx) in enumerate(boxes):
        bh, bw = by.stop - by.start, bx.stop - bx.start
        # A margin line or a page edge: spans (almost) the whole image and is thin.
        if (bh > 0.9 * h and bw < 0.05 * w) or (bw > 0.9 * w and bh < 0.05 * h):
            areas[i] = 0
    order = np.argsort(areas)[::-1]
    main = int(order[0])
    y0, y1 = boxes[main][0].start, boxes[main][0].stop
    x0, x1 = boxes[main][1].start, boxes[main][1].stop
    keep = [main]
    changed = True
    while changed:
        changed = False
        size = max(y1 - y0, x1 - x0)
        margin = 0.35 * size
        for idx in order[1:]:
            i = int(idx)
            if i in keep or areas[i] < max(0.04 * areas[main], 2):
                continue
            by, bx = boxes[i]
            if (
                by.start < y1 + margin
                and by.stop > y0 - margin
                and bx.start < x1 + margin
                and bx.stop > x0 - margin
            ):
                keep.append(i)
                y0, y1 = min(y0, by.start), max(y1, by.stop)
                x0, x1 = min(x0, bx.start), max(x1, bx.stop)
                changed = True
    return np.isin(labels, np.asarray(keep) + 1)


def normalize(gray: np.ndarray) -> np.ndarray:
    """MNIST-style 28x28 float32 in [0, 1] (ink = 1) from a grayscale image of any size."""
    border = _border(gray)
    # The border's median says which side is paper (np.median itself is ~20x slower).
    bright_background = float(np.partition(border, border.size // 2)[border.size // 2]) >= 0.5
    if gray.shape == (MNIST_SIZE, MNIST_SIZE):
        # Already an MNIST-format digit: feed it exactly as the data set stores it.
        ink = 1.0 - gray if bright_background else gray
        return np.ascontiguousarray(ink, dtype=np.float32)
    gray = _shrink(gray, WORK_SIDE)
    surface = _background_surface(gray, bright_background)
    if bright_background:
        # Paper reflects light; ink absorbs it: divide by the light to undo shading.
        ink = 1.0 - np.clip(gray / np.maximum(surface, 0.05), 0.0, 1.0)
    else:
        ink = np.clip(gray - surface, 0.0, 1.0)
    # The 16th-brightest pixel: robust to a few hot pixels, yet sees a small digit on a
    # big canvas (where any percentile would only see paper).
    flat = ink.ravel()
    peak = float(np.partition(flat, -16)[-16]) if flat.size > 16 else float(flat.max())
    if peak < 0.08:
        raise InvalidImage("no digit found: the image is blank or has no contrast")
    threshold = max(_otsu(np.clip(ink / peak, 0, 1)) * peak, 0.15 * peak)
    digit = _select_digit(ink > threshold)
    if not digit.any():
        raise InvalidImage("no digit found: only page lines or noise in the image")
    ys, xs = np.nonzero(digit)
    grow = max(1, round(max(ink.shape) / 200))
    y0, y1 = max(ys.min() - grow, 0), ys.max() + 1 + grow
    x0, x1 = max(xs.min() - grow, 0), xs.max() + 1 + grow
    crop, mask = ink[y0:y1, x0:x1], digit[y0:y1, x0:x1]
    # Zero what lies outside the chosen strokes (grown a little to keep anti-aliased edges).
    keep = ndimage.binary_dilation(mask, iterations=grow)
    ink_level = float(np.percentile(crop[mask], 90))
    floor = 0.5 * threshold
    clean = np.clip((crop - floor) / max(ink_level - floor, 1e-3), 0.0, 1.0) * keep
    ys, xs = np.nonzero(clean > 0)
    if ys.size == 0:
        raise InvalidImage("no digit found: the image is blank or has no contrast")
    return _fit_and_centre(clean[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def _fit_and_centre(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    patch = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    top = float(patch.max())
    if top > 0:
        patch = np.clip(patch / top, 0.0, 1.0)
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    ph, pw = patch.shape
    cy, cx = ndimage.center_of_mass(patch) if top > 0 else (ph / 2, pw / 2)
    oy = int(np.clip(round(MNIST_SIZE / 2 - cy), 0, MNIST_SIZE - ph))
    ox = int(np.clip(round(MNIST_SIZE / 2 - cx), 0, MNIST_SIZE - pw))
    out[oy : oy + ph, ox : ox + pw] = patch
    return out


def preprocess(
    data: bytes, limits: ImageLimits, budget: DecodeBudget | RequestBudget | None = None
) -> np.ndarray:
    """Image file bytes -> 28x28 float32 in [0, 1], light ink on dark (before normalisation)."""
    gray = decode_gray(data, limits, budget) if budget else decode_gray(data, limits)
    if float(gray.max() - gray.min()) < _MIN_CONTRAST:  # at every size, 28x28 included
        raise InvalidImage("no digit found: the image is blank or uniform")
    return normalize(gray)


#: Below this range of grey levels an image holds nothing to read, whatever its size.
_MIN_CONTRAST = 0.08


def to_png(pixels: np.ndarray) -> bytes:
    """A 28x28 [0, 1] array as PNG bytes (what the model saw)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), mode="L").save(
        buf, format="PNG"
    )
    return buf.getvalue()
