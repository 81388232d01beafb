"""Turn a decoded grayscale image into what the model expects: an MNIST-style 28x28 digit.

Real uploads are phone photos, scans, canvas exports and screenshots. `service.vision.decode` opens
them safely; this module normalises to MNIST's conventions: light ink on dark, ink isolated
and cropped, fitted to a 20x20 box keeping the aspect ratio, and centred by centre of mass
in 28x28.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from service.errors import InvalidImage
from service.vision.decode import WORK_SIDE, DecodeBudget, ImageLimits, RequestBudget, decode_gray
from service.vision.segment import (
    Part,
    drop_frame_remnants,
    find_digits,
    page_skew,
    remove_structure,
    select_digit,
)

__all__ = ["BOX", "MNIST_SIZE", "Glyph", "ImageLimits", "Scan", "normalize", "preprocess",
           "read_gray", "scan", "to_png"]  # fmt: skip

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


#: Smaller images are enlarged to this side first: thresholds and line tests need pixels.
MIN_WORK_SIDE = 56
#: Images up to this side are padded with paper before the lighting fit (see read_gray).
_PAD_BEFORE_FIT_SIDE = 256


@dataclass(frozen=True)
class Glyph:
    """One digit as the model sees it, and where it is in the uploaded image."""

    pixels: np.ndarray  # [28, 28] float32 in [0, 1], light ink on dark
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), uploaded image's pixels
    row: int  # 0 for the top row of a number


@dataclass(frozen=True)
class Scan:
    """What an image holds: its digits in reading order, or why it has nothing to read."""

    glyphs: tuple[Glyph, ...]
    reason: str | None = None  # set exactly when `glyphs` is empty


def _ink_is_dark(gray: np.ndarray) -> bool:
    """Whether the strokes are darker than the paper.

    A near-white or near-black border settles it. A mid-grey one does not: grey paper in dim
    light holds dark pencil, a dark slate holds chalk, and a frame or cell line may run along
    the border. There the paper is the image's median and the ink is the tail that strays
    furthest from it.
    """
    border = _border(gray)
    # NOTE: np.partition, not np.median: every 28x28 upload comes here (docs/decisions.md).
    paper = float(np.partition(border, border.size // 2)[border.size // 2])
    if paper < _CLEAR_DARK or paper > 1.0 - _CLEAR_DARK:
        return paper >= 0.5
    step = max(1, int(np.sqrt(gray.size / 4096)))
    sample = gray[::step, ::step].ravel()
    n = sample.size - 1
    lo_k, mid_k, hi_k = int(0.005 * n), n // 2, n - int(0.005 * n)
    lo, median, hi = np.partition(sample, (lo_k, mid_k, hi_k))[[lo_k, mid_k, hi_k]]
    return float(median - lo) >= float(hi - median)


#: A border darker than this (or lighter than 1 minus this) is plainly black (white) paper.
_CLEAR_DARK = 0.2


def _looks_like_mnist(ink: np.ndarray) -> bool:
    """A 28x28 image already in MNIST's form: clean dark ground, full-strength strokes (a
    faint pencil trace needs levelling and widening), ink off the outer two pixels (MNIST
    fits digits in the central 20x20; a few strokes reach further), centred by mass."""
    # NOTE: every 28x28 upload comes here: a handful of numpy calls, no temporaries.
    inked = ink > 0.1
    count = np.count_nonzero(inked)  # ~10x faster than a bool .sum()
    if count > MNIST_SIZE * MNIST_SIZE // 2 or count - np.count_nonzero(inked[2:-2, 2:-2]) > 12:
        return False
    if np.count_nonzero(ink > 0.6) < _FULL_STROKE_PIXELS:
        return False
    rows = ink.sum(axis=1)
    total = float(rows.sum())
    if total <= 0:
        return False
    cols = ink.sum(axis=0)
    cy = float(rows @ _COORDS) / total
    cx = float(cols @ _COORDS) / total
    if abs(cy - 13.5) > 2.0 or abs(cx - 13.5) > 2.0:
        return False
    filled = np.flatnonzero(cols > 0.5)
    if filled.size == 0:
        return True  # faint ink only: no column to split at
    return filled[-1] - filled[0] + 1 == filled.size or not _side_by_side(ink, filled)


def _side_by_side(ink: np.ndarray, inked: np.ndarray) -> bool:
    """Two glyphs across an empty column ("12" drawn small on a canvas), each about as tall
    as the pair and holding a fair share of the ink; a digit's pieces rarely are."""
    j = int(np.argmax(np.diff(inked)))
    left, right = ink[:, : inked[j] + 1], ink[:, inked[j] + 1 :]

    def height(part: np.ndarray) -> int:
        rows = np.flatnonzero(part.max(axis=1) > 0.3)
        return int(rows[-1] - rows[0] + 1) if rows.size else 0

    share = min(float(left.sum()), float(right.sum())) / max(float(ink.sum()), 1e-6)
    return min(height(left), height(right)) >= 0.6 * height(ink) and share >= 0.15


_COORDS = np.arange(MNIST_SIZE, dtype=np.float32)
#: Pixels of strong ink every MNIST digit has (docs/preprocessing.md, step 5).
_FULL_STROKE_PIXELS = 15


def _working_copy(gray: np.ndarray, paper: float | None) -> tuple[np.ndarray, float, float, int]:
    """Shrunk (or enlarged) and padded with `paper` (None: not padded): digits cut tight get
    a margin, so edge strokes are neither page lines nor background. Returns the copy, its
    x and y scale against `gray`, and the padding."""
    h, w = gray.shape
    work = _shrink(gray, WORK_SIDE)
    side = max(work.shape)
    if side < MIN_WORK_SIDE:
        f = MIN_WORK_SIDE / side
        size = (max(1, round(w * f)), max(1, round(h * f)))
        work = np.asarray(Image.fromarray(work, mode="F").resize(size, Image.Resampling.BILINEAR))
    sx, sy = work.shape[1] / w, work.shape[0] / h
    if paper is None:
        return work, sx, sy, 0
    pad = max(2, round(0.1 * max(work.shape)))
    return np.pad(work, pad, constant_values=paper), sx, sy, pad


def _paper_level(gray: np.ndarray, bright_background: bool) -> float:
    """The paper's shade for padding: a high (low) quantile, not the border, which may be
    a frame's line."""
    step = max(1, int(np.sqrt(gray.size / 4096)))
    sample = gray[::step, ::step].ravel()
    k = int(0.9 * (sample.size - 1)) if bright_background else int(0.1 * (sample.size - 1))
    return float(np.partition(sample, k)[k])


def _hysteresis(ink: np.ndarray, high: float, low: float) -> np.ndarray:
    """Pixels above `low` connected to a pixel above `high`: faint parts of a stroke stay
    attached to it instead of breaking at one threshold."""
    weak = ink > low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return weak
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[ink > high])] = True
    strong[0] = False
    return strong[labels]


def _noise_reason(mask: np.ndarray) -> str | None:
    """Why an ink mask is texture rather than strokes, or None."""
    if float(mask.mean()) > 0.35:
        # Bold digits cut tight cover a lot too, but leave some of the image empty.
        h, w = mask.shape
        cells = [mask[h * i // 4 : h * (i + 1) // 4, w * j // 4 : w * (j + 1) // 4].mean()
                 for i in range(4) for j in range(4)]  # fmt: skip
        if min(cells) > 0.15:
            return "ink covers all of the image: a texture or photo, not a digit"
    if float(mask.mean()) < 0.05:
        return None  # too little ink for noise that could pass for a digit
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count >= 40:
        areas = np.bincount(labels.ravel())[1:]
        if areas.max() < 0.3 * areas.sum():
            return "scattered specks: noise or text, not a digit"
    return None


def _finite(gray: np.ndarray) -> bool:
    # NOTE: a sum is NaN or inf exactly when some pixel is (pixels are in [0, 1] otherwise),
    # and costs one numpy call on the 28x28 path instead of two.
    return bool(np.isfinite(gray.sum()))


def read_gray(gray: np.ndarray, one_digit: bool = False) -> Scan:
    """The digits of a grayscale image in [0, 1] (boxes in its pixels), or why it has none.

    `one_digit` reads the image as exactly one digit (a form cell); otherwise several digits
    side by side or in rows are a number.
    """
    if gray.dtype.kind == "f" and not _finite(gray):
        return Scan((), "the image has non-finite pixel values")
    bright_background = _ink_is_dark(gray)
    if gray.shape == (MNIST_SIZE, MNIST_SIZE):
        ink28 = 1.0 - gray if bright_background else gray
        if _looks_like_mnist(ink28):
            # Already an MNIST-format digit: feed it exactly as the data set stores it.
            pixels = np.ascontiguousarray(ink28, dtype=np.float32)
            return Scan((Glyph(pixels, (0, 0, MNIST_SIZE, MNIST_SIZE), 0),))
    # NOTE: small images are padded with paper before the lighting fit, which then sees
    # paper around a tight crop; big ones (photos) get their margin after it, as zero ink:
    # fitting and levelling the bigger padded copy costs more for the same result there.
    small = max(gray.shape) <= _PAD_BEFORE_FIT_SIDE
    margin = _paper_level(gray, bright_background) if small else None
    work, sx, sy, pad = _working_copy(gray, margin)
    surface = _background_surface(work, bright_background)
    if bright_background:
        # Paper reflects light; ink absorbs it: divide by the light to undo shading.
        ink = 1.0 - np.clip(work / np.maximum(surface, 0.05), 0.0, 1.0)
    else:
        ink = np.clip(work - surface, 0.0, 1.0)
    # The 16th-brightest pixel: robust to a few hot pixels, yet sees a small digit on a
    # big canvas (where any percentile would only see paper).
    flat = ink.ravel()
    peak = float(np.partition(flat, -16)[-16]) if flat.size > 16 else float(flat.max())
    if peak < 0.08:
        return Scan((), "blank: no ink in the image")
    threshold = max(_otsu(np.clip(ink / peak, 0, 1)) * peak, 0.15 * peak)
    if not small:
        pad = max(2, round(0.1 * max(ink.shape)))
        ink = np.pad(ink, pad)
    mask = _hysteresis(ink, threshold, 0.5 * threshold)
    noise = _noise_reason(mask)
    if noise:
        return Scan((), noise)
    turn = _Turn.of(ink, pad, page_skew(mask))
    if turn is not None:
        # A ruled or squared page photographed askew: turned straight, its lines run along
        # rows and columns, where they are found and removed. Boxes are turned back below.
        ink = turn.ink
        mask = _hysteresis(ink, threshold, 0.5 * threshold)
    image = (pad, pad, ink.shape[1] - pad, ink.shape[0] - pad)
    mask = drop_frame_remnants(remove_structure(mask), image)
    rows = [] if one_digit else find_digits(mask, image)
    if sum(len(r) for r in rows) <= 1:
        digit = select_digit(mask)
        ys, xs = np.nonzero(digit)
        rows = [] if ys.size == 0 else [[_whole(digit, ys, xs)]]
    speck = max(4, 0.008 * max(ink.shape))
    rows = [[p for p in r if max(p.box[2] - p.box[0], p.box[3] - p.box[1]) >= speck] for r in rows]
    rows = [r for r in rows if r]
    if not rows:
        return Scan((), "nearly blank: only lines or specks")
    grow = max(1, round(max(ink.shape) / 200))
    h, w = gray.shape
    glyphs = []
    for row_index, row in enumerate(rows):
        for part in row:
            x0, y0, x1, y1 = part.box if turn is None else turn.back(part.box)
            box = (
                min(max(int((x0 - pad) / sx), 0), w - 1),
                min(max(int((y0 - pad) / sy), 0), h - 1),
                min(max(int(np.ceil((x1 - pad) / sx)), 1), w),
                min(max(int(np.ceil((y1 - pad) / sy)), 1), h),
            )
            pixels = _render(ink, part, grow, threshold)
            glyphs.append(Glyph(pixels, box, row_index))
    return Scan(tuple(glyphs))


@dataclass(frozen=True)
class _Turn:
    """A padded ink image turned straight by `degrees`, cut to the upright rectangle inside
    the turned page (along its tilted edges, lines are cut short and would pass for 1s) and
    padded again; `back` maps its boxes into the image before the turn."""

    ink: np.ndarray
    degrees: float
    offset: tuple[int, int]  # (x, y) of the cut in the turned image, less the padding
    turned: tuple[int, ...]  # shape of the whole turned image
    straight: tuple[int, ...]  # shape of the image before the turn

    @classmethod
    def of(cls, ink: np.ndarray, pad: int, degrees: float) -> _Turn | None:
        """The turn of `ink` (padded by `pad`), or None for no turn or for a long strip,
        whose upright rectangle would lose much of the page."""
        if not degrees:
            return None
        c, s = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
        h, w = ink.shape[0] - 2 * pad, ink.shape[1] - 2 * pad
        iw, ih = int(w * c - h * s), int(h * c - w * s)
        if iw < 0.7 * w or ih < 0.7 * h:
            return None
        turned = ndimage.rotate(ink, degrees, reshape=True, order=1)
        x0, y0 = (turned.shape[1] - iw) // 2, (turned.shape[0] - ih) // 2
        cut = np.pad(turned[y0 : y0 + ih, x0 : x0 + iw], pad)
        return cls(cut, degrees, (x0 - pad, y0 - pad), turned.shape, ink.shape)

    def back(self, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """A box in `ink`, as the box around it in the image before the turn."""
        x0, y0 = box[0] + self.offset[0], box[1] + self.offset[1]
        x1, y1 = box[2] + self.offset[0], box[3] + self.offset[1]
        c, s = np.cos(np.radians(self.degrees)), np.sin(np.radians(self.degrees))
        ty, tx = (self.turned[0] - 1) / 2, (self.turned[1] - 1) / 2
        oy, ox = (self.straight[0] - 1) / 2, (self.straight[1] - 1) / 2
        dy = np.array([y0, y0, y1, y1], dtype=np.float64) - ty
        dx = np.array([x0, x1, x0, x1], dtype=np.float64) - tx
        ys, xs = oy + dy * c + dx * s, ox + dx * c - dy * s
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _whole(digit: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Part:
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Part((x0, y0, x1, y1), digit[y0:y1, x0:x1])


def _render(ink: np.ndarray, part: Part, grow: int, threshold: float) -> np.ndarray:
    """The part's own strokes, levelled to full ink, fitted and centred in 28x28."""
    x0, y0, x1, y1 = part.box
    h, w = ink.shape
    cy0, cx0 = max(y0 - grow, 0), max(x0 - grow, 0)
    cy1, cx1 = min(y1 + grow, h), min(x1 + grow, w)
    crop = ink[cy0:cy1, cx0:cx1]
    mask = np.zeros(crop.shape, dtype=bool)
    mask[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = part.mask
    # Zero what lies outside the chosen strokes (grown a little to keep anti-aliased edges).
    keep = ndimage.binary_dilation(mask, iterations=grow)
    ink_level = float(np.percentile(crop[mask], 90))
    floor = 0.5 * threshold
    clean = np.clip((crop - floor) / max(ink_level - floor, 1e-3), 0.0, 1.0) * keep
    # The extent comes from the strokes, not from the faint fringe the hysteresis lets in.
    ys, xs = np.nonzero(clean > 0.2)
    if ys.size == 0:
        return np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    clean = clean[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _fit_and_centre(clean, _stroke_width(mask))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the outline (exact for long strips
    at least 3 px wide; 1- and 2-px lines both read as 2)."""
    area = int(mask.sum())
    outline = area - int(ndimage.binary_erosion(mask).sum())
    return 2.0 * area / max(outline, 1)


def _fit_and_centre(crop: np.ndarray, stroke_px: float) -> np.ndarray:
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    patch = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    stroke = stroke_px * scale
    if stroke < 2.0 and patch.size > 4:
        # Thin pen lines shrink to faint 1-px traces; MNIST strokes are 2-3 px wide in the
        # 20-px box: level them at their typical ink and widen them.
        level = float(np.percentile(patch[patch > 0], 90)) if (patch > 0).any() else 0.0
        if level > 0:
            patch = np.clip(patch / level, 0.0, 1.0)
        patch = ndimage.grey_dilation(patch, size=(3, 3) if stroke < 1.2 else (2, 2))
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


def scan(
    data: bytes,
    limits: ImageLimits,
    one_digit: bool = False,
    budget: DecodeBudget | RequestBudget | None = None,
) -> Scan:
    """Image file bytes -> its digits (boxes in the file's pixels), or why it has none.

    Raises only for files that cannot be decoded or break the limits (`service.vision.decode`).
    """
    gray = decode_gray(data, limits, budget) if budget else decode_gray(data, limits)
    if _plain_png_without_alpha(data):
        return read_gray(gray, one_digit)
    width, height = _stored_size(data, gray)
    # decode_gray may have shrunk the image: boxes are mapped back to the upload's pixels.
    fx, fy = width / gray.shape[1], height / gray.shape[0]
    x_off, y_off = 0, 0
    opaque = _opaque_box(data, gray.shape) if _png_with_alpha(data) else None
    if (
        opaque is not None
        and float(np.ptp(gray[opaque[1] : opaque[3], opaque[0] : opaque[2]])) < 0.1
    ):
        # One flat colour: the opaque rectangle is a hard-edged stroke on a transparent
        # canvas (a drawn 1), not a card holding a digit.
        opaque = None
    if opaque is not None:
        x_off, y_off, x1, y1 = opaque
        gray = gray[y_off:y1, x_off:x1]
    found = read_gray(gray, one_digit)
    if (fx, fy) == (1.0, 1.0) and opaque is None:
        return found
    glyphs = tuple(
        Glyph(
            g.pixels,
            (
                int((g.box[0] + x_off) * fx),
                int((g.box[1] + y_off) * fy),
                min(int(np.ceil((g.box[2] + x_off) * fx)), width),
                min(int(np.ceil((g.box[3] + y_off) * fy)), height),
            ),
            g.row,
        )
        for g in found.glyphs
    )
    return Scan(glyphs, found.reason)


_PNG = b"\x89PNG\r\n\x1a\n"


def _stored_size(data: bytes, gray: np.ndarray) -> tuple[int, int]:
    """The upload's width and height as displayed (decode_gray may have shrunk it)."""
    try:
        with Image.open(io.BytesIO(data)) as header:  # decoded before: only the header
            width, height = header.size
    except Exception:
        return gray.shape[1], gray.shape[0]
    if (width > height) != (gray.shape[1] > gray.shape[0]):
        width, height = height, width  # EXIF turned it a quarter turn
    return width, height


def _png_with_alpha(data: bytes) -> bool:
    return data.startswith(_PNG) and len(data) > 25 and data[25] in (4, 6)


def _plain_png_without_alpha(data: bytes) -> bool:
    """A PNG without an alpha channel or key: decoded at its own size, nothing to map."""
    return (
        data.startswith(_PNG)
        and len(data) > 25
        and data[25] in (0, 2)
        and b"tRNS" not in data
        and max(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) <= WORK_SIDE
    )


def _opaque_box(data: bytes, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The box (in a `shape`-sized working copy) of an opaque rectangle inside a transparent
    margin, else None.

    A dark card holding a light digit, exported with a transparent margin: the margin would
    be composited as paper and decide the polarity; the card's own border must.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:  # decoded before: a PNG within the limits
            channel = img.convert("RGBA").getchannel("A")
    except Exception:  # libspng read it, Pillow did not: keep what decode_gray gave
        return None
    h, w = shape
    if channel.size != (w, h):
        channel = channel.resize((w, h), Image.Resampling.BOX)
    alpha = np.asarray(channel) > 127
    ys = np.flatnonzero(alpha.any(axis=1))
    xs = np.flatnonzero(alpha.any(axis=0))
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    area = (y1 - y0) * (x1 - x0)
    if area >= 0.95 * alpha.size or area < 0.05 * alpha.size or min(y1 - y0, x1 - x0) < 8:
        return None
    if float(alpha[y0:y1, x0:x1].mean()) < 0.9:
        return None  # strokes on a transparent canvas, not an opaque card
    return x0, y0, x1, y1


def normalize(gray: np.ndarray) -> np.ndarray:
    """MNIST-style 28x28 float32 in [0, 1] (ink = 1) of the one digit in a grayscale image.

    Raises InvalidImage when the image has nothing to read.
    """
    found = read_gray(gray, one_digit=True)
    if not found.glyphs:
        raise InvalidImage(f"no digit found: {found.reason}")
    return found.glyphs[0].pixels


def preprocess(
    data: bytes, limits: ImageLimits, budget: DecodeBudget | RequestBudget | None = None
) -> np.ndarray:
    """Image file bytes -> 28x28 float32 in [0, 1] of its one digit (see `normalize`)."""
    found = scan(data, limits, one_digit=True, budget=budget)
    if not found.glyphs:
        raise InvalidImage(f"no digit found: {found.reason}")
    return found.glyphs[0].pixels


def to_png(pixels: np.ndarray) -> bytes:
    """A 28x28 [0, 1] array as PNG bytes (what the model saw)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), mode="L").save(
        buf, format="PNG"
    )
    return buf.getvalue()
