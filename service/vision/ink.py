"""Stage 2, ink: which pixels are strokes. Polarity, lighting, threshold with hysteresis,
and the refusal of images that are blank or texture rather than strokes.

`find_ink(gray)` takes the decoded grayscale image and returns an `Ink`: light ink on dark
in a padded working copy, the stroke mask, and the scale and padding that map its pixels
back to `gray`'s. A 28x28 image already in MNIST's form comes back as is (`Ink.as_mnist`),
so the plain upload skips everything after this stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from service.vision.decode import WORK_SIDE

MNIST_SIZE = 28
#: 8-connectivity: diagonal pixels of one stroke belong together.
EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class InkParams:
    """Thresholds of the ink stage (grey levels are in [0, 1]; shares of the image)."""

    #: Border strip that shows the paper: 1/`border_divisor` of the shorter side.
    border_divisor: int = 20
    #: A border darker than this (or lighter than 1 minus this) is plainly black (white) paper.
    clear_dark: float = 0.2
    #: Pixels sampled for quantiles on big images.
    sample_pixels: int = 4096
    #: Share of the darkest and lightest pixels that make the ink's tail on grey paper.
    tail: float = 0.005
    #: Smaller images are enlarged to this side first: thresholds and line tests need pixels.
    min_work_side: int = 56
    #: Images up to this side are padded with paper before the lighting fit.
    pad_before_fit_side: int = 256
    #: Margin added around the working copy (share of its longer side, at least `min_pad`).
    pad_share: float = 0.1
    min_pad: int = 2
    #: The paper's shade for padding: this quantile (1 minus it on dark paper).
    paper_quantile: float = 0.9
    #: The lighting surface is fitted on about this many pixels, twice, on at least
    #: `min_fit_pixels` background pixels; off = a flat surface at the median.
    lighting: bool = True
    fit_pixels: int = 20000
    fit_rounds: int = 2
    min_fit_pixels: int = 12
    #: Light is never taken as darker than this when dividing it out.
    min_light: float = 0.05
    #: The peak is the `peak_rank`-th brightest ink pixel; below `blank_peak`, blank.
    peak_rank: int = 16
    blank_peak: float = 0.08
    #: The stroke threshold: Otsu's on the ink, at least `min_threshold` of the peak.
    min_threshold: float = 0.15
    #: Hysteresis: pixels above this share of the threshold joined to a stroke stay in;
    #: off = one threshold.
    hysteresis: bool = True
    low_share: float = 0.5
    #: Noise: ink over `texture_cover` of the image with every 4x4 cell over `texture_cell`;
    #: or `speck_count` components or more, the largest under `speck_largest` of the ink
    #: (only with ink over `speck_min_cover`).
    noise: bool = True
    texture_cover: float = 0.35
    texture_cell: float = 0.15
    speck_min_cover: float = 0.05
    speck_count: int = 40
    speck_largest: float = 0.3
    #: A 28x28 image already in MNIST's form goes to the model as it is (off: normalised).
    pass_through: bool = True
    mnist_ink: float = 0.1
    mnist_edge: int = 2
    mnist_edge_pixels: int = 12
    mnist_strong: float = 0.6
    #: Pixels of strong ink every MNIST digit has (docs/preprocessing.md, step 5).
    mnist_strong_pixels: int = 15
    mnist_centre_off: float = 2.0
    mnist_column_ink: float = 0.5
    #: Two glyphs across an empty column ("12" on a 28x28 canvas): each at least this share
    #: of the pair's height (rows over `pair_row_ink`) and of its ink.
    pair_row_ink: float = 0.3
    pair_height: float = 0.6
    pair_share: float = 0.15


INK = InkParams()


# NOTE: not frozen: a frozen dataclass sets each field through object.__setattr__, a few
# microseconds on the path of every 28x28 upload. Nothing changes an Ink after the stage.
@dataclass(slots=True)
class Ink:
    """The strokes of one image, or why it has none (`reason`).

    `ink` is light ink on dark in [0, 1], `gray` enlarged or shrunk by (`sx`, `sy`) and
    padded by `pad` on every side; `mask` is its stroke pixels; `threshold` the stroke level.
    """

    ink: np.ndarray
    mask: np.ndarray
    threshold: float
    sx: float
    sy: float
    pad: int
    low_share: float = 0.5
    hysteresis: bool = True
    reason: str | None = None
    as_mnist: np.ndarray | None = None

    def mask_of(self, ink: np.ndarray) -> np.ndarray:
        """The stroke mask of another ink image at this one's threshold (a turned page)."""
        return _mask(ink, self.threshold, self.low_share, self.hysteresis)


_NONE = np.zeros((0, 0), dtype=np.float32)
_NO_MASK = np.zeros((0, 0), dtype=bool)


def _nothing(reason: str) -> Ink:
    return Ink(_NONE, _NO_MASK, 0.0, 1.0, 1.0, 0, reason=reason)


def find_ink(gray: np.ndarray, p: InkParams = INK) -> Ink:
    """The strokes of a grayscale image in [0, 1] (see `Ink`)."""
    if gray.dtype.kind == "f" and not _finite(gray):
        return _nothing("the image has non-finite pixel values")
    bright_background = _ink_is_dark(gray, p)
    if p.pass_through and gray.shape == (MNIST_SIZE, MNIST_SIZE):
        ink28 = 1.0 - gray if bright_background else gray
        if _looks_like_mnist(ink28, p):
            # Already an MNIST-format digit: feed it exactly as the data set stores it.
            pixels = np.ascontiguousarray(ink28, dtype=np.float32)
            return Ink(_NONE, _NO_MASK, 0.0, 1.0, 1.0, 0, as_mnist=pixels)
    # NOTE: small images are padded with paper before the lighting fit, which then sees
    # paper around a tight crop; big ones (photos) get their margin after it, as zero ink:
    # fitting and levelling the bigger padded copy costs more for the same result there.
    small = max(gray.shape) <= p.pad_before_fit_side
    margin = _paper_level(gray, bright_background, p) if small else None
    work, sx, sy, pad = _working_copy(gray, margin, p)
    surface = (
        _background_surface(work, bright_background, p)
        if p.lighting
        else np.float32(np.median(work))
    )
    if bright_background:
        # Paper reflects light; ink absorbs it: divide by the light to undo shading.
        ink = 1.0 - np.clip(work / np.maximum(surface, p.min_light), 0.0, 1.0)
    else:
        ink = np.clip(work - surface, 0.0, 1.0)
    # The 16th-brightest pixel: robust to a few hot pixels, yet sees a small digit on a
    # big canvas (where any percentile would only see paper).
    flat = ink.ravel()
    rank = p.peak_rank
    peak = float(np.partition(flat, -rank)[-rank]) if flat.size > rank else float(flat.max())
    if peak < p.blank_peak:
        return _nothing("blank: no ink in the image")
    threshold = max(_otsu(np.clip(ink / peak, 0, 1)) * peak, p.min_threshold * peak)
    if not small:
        pad = max(p.min_pad, round(p.pad_share * max(ink.shape)))
        ink = np.pad(ink, pad)
    mask = _mask(ink, threshold, p.low_share, p.hysteresis)
    noise = _noise_reason(mask, p) if p.noise else None
    if noise:
        return _nothing(noise)
    return Ink(ink, mask, threshold, sx, sy, pad, p.low_share, p.hysteresis)


def _finite(gray: np.ndarray) -> bool:
    # NOTE: a sum is NaN or inf exactly when some pixel is (pixels are in [0, 1] otherwise),
    # and costs one numpy call on the 28x28 path instead of two.
    return bool(np.isfinite(gray.sum()))


def _border(gray: np.ndarray, p: InkParams) -> np.ndarray:
    h, w = gray.shape
    m = max(1, min(h, w) // p.border_divisor)
    return np.concatenate(
        [gray[:m].ravel(), gray[-m:].ravel(), gray[:, :m].ravel(), gray[:, -m:].ravel()]
    )


def _ink_is_dark(gray: np.ndarray, p: InkParams) -> bool:
    """Whether the strokes are darker than the paper.

    A near-white or near-black border settles it. A mid-grey one does not: grey paper in dim
    light holds dark pencil, a dark slate holds chalk, and a frame or cell line may run along
    the border. There the paper is the image's median and the ink is the tail that strays
    furthest from it.
    """
    border = _border(gray, p)
    # NOTE: np.partition, not np.median: every 28x28 upload comes here (docs/decisions.md).
    paper = float(np.partition(border, border.size // 2)[border.size // 2])
    if paper < p.clear_dark or paper > 1.0 - p.clear_dark:
        return paper >= 0.5
    step = max(1, int(np.sqrt(gray.size / p.sample_pixels)))
    sample = gray[::step, ::step].ravel()
    n = sample.size - 1
    lo_k, mid_k, hi_k = int(p.tail * n), n // 2, n - int(p.tail * n)
    lo, median, hi = np.partition(sample, (lo_k, mid_k, hi_k))[[lo_k, mid_k, hi_k]]
    return float(median - lo) >= float(hi - median)


_COORDS = np.arange(MNIST_SIZE, dtype=np.float32)
_CENTRE = (MNIST_SIZE - 1) / 2


def _looks_like_mnist(ink: np.ndarray, p: InkParams) -> bool:
    """A 28x28 image already in MNIST's form: clean dark ground, full-strength strokes (a
    faint pencil trace needs levelling and widening), ink off the outer two pixels (MNIST
    fits digits in the central 20x20; a few strokes reach further), centred by mass."""
    # NOTE: every 28x28 upload comes here: a handful of numpy calls, no temporaries.
    inked = ink > p.mnist_ink
    count = np.count_nonzero(inked)  # ~10x faster than a bool .sum()
    e = p.mnist_edge
    if (
        count > MNIST_SIZE * MNIST_SIZE // 2
        or count - np.count_nonzero(inked[e:-e, e:-e]) > p.mnist_edge_pixels
    ):
        return False
    if np.count_nonzero(ink > p.mnist_strong) < p.mnist_strong_pixels:
        return False
    rows = ink.sum(axis=1)
    total = float(rows.sum())
    if total <= 0:
        return False
    cols = ink.sum(axis=0)
    cy = float(rows @ _COORDS) / total
    cx = float(cols @ _COORDS) / total
    if abs(cy - _CENTRE) > p.mnist_centre_off or abs(cx - _CENTRE) > p.mnist_centre_off:
        return False
    filled = np.flatnonzero(cols > p.mnist_column_ink)
    if filled.size == 0:
        return True  # faint ink only: no column to split at
    return filled[-1] - filled[0] + 1 == filled.size or not _side_by_side(ink, filled, p)


def _side_by_side(ink: np.ndarray, inked: np.ndarray, p: InkParams) -> bool:
    """Two glyphs across an empty column ("12" drawn small on a canvas), each about as tall
    as the pair and holding a fair share of the ink; a digit's pieces rarely are."""
    j = int(np.argmax(np.diff(inked)))
    left, right = ink[:, : inked[j] + 1], ink[:, inked[j] + 1 :]

    def height(part: np.ndarray) -> int:
        rows = np.flatnonzero(part.max(axis=1) > p.pair_row_ink)
        return int(rows[-1] - rows[0] + 1) if rows.size else 0

    share = min(float(left.sum()), float(right.sum())) / max(float(ink.sum()), 1e-6)
    return min(height(left), height(right)) >= p.pair_height * height(ink) and share >= (
        p.pair_share
    )


def _shrink(gray: np.ndarray, side: int) -> np.ndarray:
    h, w = gray.shape
    scale = side / max(h, w)
    if scale >= 1:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX))


def _working_copy(
    gray: np.ndarray, paper: float | None, p: InkParams
) -> tuple[np.ndarray, float, float, int]:
    """Shrunk (or enlarged) and padded with `paper` (None: not padded): digits cut tight get
    a margin, so edge strokes are neither page lines nor background. Returns the copy, its
    x and y scale against `gray`, and the padding."""
    h, w = gray.shape
    work = _shrink(gray, WORK_SIDE)
    side = max(work.shape)
    if side < p.min_work_side:
        f = p.min_work_side / side
        size = (max(1, round(w * f)), max(1, round(h * f)))
        work = np.asarray(Image.fromarray(work, mode="F").resize(size, Image.Resampling.BILINEAR))
    sx, sy = work.shape[1] / w, work.shape[0] / h
    if paper is None:
        return work, sx, sy, 0
    pad = max(p.min_pad, round(p.pad_share * max(work.shape)))
    return np.pad(work, pad, constant_values=paper), sx, sy, pad


def _paper_level(gray: np.ndarray, bright_background: bool, p: InkParams) -> float:
    """The paper's shade for padding: a high (low) quantile, not the border, which may be
    a frame's line."""
    step = max(1, int(np.sqrt(gray.size / p.sample_pixels)))
    sample = gray[::step, ::step].ravel()
    q = p.paper_quantile if bright_background else 1.0 - p.paper_quantile
    k = int(q * (sample.size - 1))
    return float(np.partition(sample, k)[k])


def _background_surface(values: np.ndarray, bright_background: bool, p: InkParams) -> np.ndarray:
    """A quadratic surface fitted to the background pixels (lighting, tint, vignetting).

    Fitted twice, each time to the pixels on the background's side of Otsu's threshold,
    so strokes, even thick marker ones, never leak into the estimate.
    """
    h, w = values.shape
    step = max(1, int(np.sqrt(h * w / p.fit_pixels)))
    sample = values[::step, ::step]
    yy, xx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1)

    def background_side(v: np.ndarray) -> np.ndarray:
        t = _otsu(np.clip(v, 0, 1))
        return v >= t if bright_background else v <= t

    chosen = background_side(sample)
    coef = np.array([float(np.median(sample)), 0, 0, 0, 0, 0], dtype=np.float32)
    for _ in range(p.fit_rounds):
        if chosen.sum() < p.min_fit_pixels:
            break
        coef, *_ = np.linalg.lstsq(basis[chosen], sample[chosen], rcond=None)
        fitted = basis @ coef
        chosen = background_side(sample - fitted + float(np.median(fitted)))
    fy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    fx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    c = coef.astype(np.float32)
    return c[0] + c[1] * fx + c[2] * fy + c[3] * fx * fx + c[4] * fx * fy + c[5] * fy * fy


#: Histogram bins of Otsu's threshold.
_OTSU_BINS = 64


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=_OTSU_BINS, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def _mask(ink: np.ndarray, high: float, low_share: float, hysteresis: bool) -> np.ndarray:
    """Pixels above `low_share` of `high` connected to a pixel above `high`: faint parts of
    a stroke stay attached to it instead of breaking at one threshold."""
    if not hysteresis:
        return ink > high
    weak = ink > low_share * high
    labels, count = ndimage.label(weak, structure=EIGHT)
    if count == 0:
        return weak
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[ink > high])] = True
    strong[0] = False
    return strong[labels]


def _noise_reason(mask: np.ndarray, p: InkParams) -> str | None:
    """Why an ink mask is texture rather than strokes, or None."""
    cover = float(mask.mean())
    if cover > p.texture_cover:
        # Bold digits cut tight cover a lot too, but leave some of the image empty.
        h, w = mask.shape
        cells = [mask[h * i // 4 : h * (i + 1) // 4, w * j // 4 : w * (j + 1) // 4].mean()
                 for i in range(4) for j in range(4)]  # fmt: skip
        if min(cells) > p.texture_cell:
            return "ink covers all of the image: a texture or photo, not a digit"
    if cover < p.speck_min_cover:
        return None  # too little ink for noise that could pass for a digit
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count >= p.speck_count:
        areas = np.bincount(labels.ravel())[1:]
        if areas.max() < p.speck_largest * areas.sum():
            return "scattered specks: noise or text, not a digit"
    return None
