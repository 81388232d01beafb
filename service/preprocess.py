"""Turn an uploaded image file into what the model expects: an MNIST-style 28x28 digit.

Real uploads are phone photos, scans, canvas exports and screenshots. The pipeline decodes
safely (format allow-list, byte/pixel/frame caps checked before pixels are decoded), then
normalises to MNIST's conventions: light ink on dark, ink isolated and cropped, fitted to a
20x20 box keeping the aspect ratio, and centred by centre of mass in 28x28.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyspng
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

#: Formats accepted from clients (Pillow's JPEG reader also opens phones' MPO files).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
MNIST_SIZE = 28
BOX = 20
#: Longest side of the working copy: enough for a small digit on a big canvas.
WORK_SIDE = 1024

# NOTE: `decode` checks every image against the configured pixel limit right after the
# header is read, before any pixel is decoded, so it replaces Pillow's own bomb check (a
# warning past 89 MP, an error past 179 MP). Turning that warning into an error per call
# needed `warnings.catch_warnings`, which is not thread-safe, and files decode on a pool.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_frames: int = 100


def decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open an image file with every limit checked before its pixels are decoded."""
    img: Image.Image
    _check_bytes(data, limits)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        if _looks_like_image(data):
            raise InvalidImage("corrupt image: the header cannot be read") from exc
        raise UnsupportedMediaType(
            "not a supported image file (PNG, JPEG, BMP, GIF, WebP or TIFF)"
        ) from exc
    except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's check
        raise PayloadTooLarge("image dimensions are too large (decompression bomb)") from exc
    except Exception as exc:  # malformed headers raise many types inside Pillow's plugins
        raise InvalidImage("corrupt image: the header cannot be read") from exc
    _check_size(*img.size, limits)
    try:
        frames = getattr(img, "n_frames", 1)
        if frames > limits.max_frames:
            raise PayloadTooLarge(
                f"animation has {frames} frames; the limit is {limits.max_frames}"
            )
        img.seek(0)
        if img.format in ("JPEG", "MPO"):
            # Let libjpeg decode at a reduced scale: far cheaper for big photos.
            img.draft("RGB" if img.mode != "L" else "L", (WORK_SIDE, WORK_SIDE))
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img)  # (without a tag it would copy the image)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # truncated data, bad CRCs, bad EXIF
        raise InvalidImage("corrupt or truncated image") from exc
    return img


def _check_bytes(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidImage("empty file")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"file is {len(data)} bytes; the limit is {limits.max_bytes}")


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise InvalidImage("image has no pixels")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )


_PNG = b"\x89PNG\r\n\x1a\n"
#: PNG colour types (8 bits per sample) that libspng returns as Pillow's mode would.
_PLAIN_PNG_MODES = {0: "L", 2: "RGB", 6: "RGBA"}


def _plain_png(data: bytes) -> str | None:
    """The mode of a PNG that libspng decodes exactly as Pillow would, else None.

    That is an 8-bit grayscale, RGB or RGBA image up to 2 * WORK_SIDE a side, not interlaced,
    with no transparency key, EXIF or animation chunk (a chunk name found anywhere in the
    bytes, even inside compressed data, only sends the file to Pillow).
    """
    if len(data) < 33 or not data.startswith(_PNG) or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[28] != 0:  # bit depth, interlace method
        return None
    if max(_png_size(data)) > 2 * WORK_SIDE:
        return None  # Pillow halves big images before converting them to float
    if b"tRNS" in data or b"eXIf" in data or b"acTL" in data:
        return None
    return _PLAIN_PNG_MODES.get(data[25])


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _decode_plain_png(data: bytes, limits: ImageLimits) -> np.ndarray | None:
    """Grayscale float32 in [0, 1] of a plain PNG (see `_plain_png`), or None for any other file.

    The same limits and the same pixels as `decode` + `to_gray`, without Pillow's PNG reader.
    """
    # NOTE: Pillow reads a PNG's chunks in Python: ~35 us of a 28x28 digit's ~60 us
    # preprocessing; libspng decodes it in C in ~5 us. libspng is written to be fed hostile
    # files (fuzzed in OSS-Fuzz), and our fuzz tests run mutated PNGs through this path.
    mode = _plain_png(data)
    if mode is None:
        return None
    _check_bytes(data, limits)
    _check_size(*_png_size(data), limits)
    try:
        pixels = pyspng.load(data, format=mode)
    except Exception as exc:  # bad CRC, truncated or corrupt data
        raise InvalidImage("corrupt or truncated image") from exc
    if mode == "L":
        return pixels.astype(np.float32) / 255.0  # to_gray's own conversion, without Pillow
    return to_gray(Image.fromarray(pixels))


_SIGNATURES = (
    _PNG,
    b"\xff\xd8\xff",
    b"BM",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)


def _looks_like_image(data: bytes) -> bool:
    """A supported format's magic number: then a decode failure means a damaged file."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale float32 in [0, 1]; transparency composited onto a contrasting background."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[..., 0]
        lo, hi = float(arr.min()), float(arr.max())
        full = 65535.0 if mode.startswith("I;16") else max(hi, 1.0)
        # Keep absolute levels (polarity) when the data fits the nominal range.
        return np.clip(arr / full, 0, 1) if lo >= 0 and hi <= full else _stretch(arr)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if float(alpha.min()) > 0.99:
            return lum
        weight = float(alpha.sum())
        ink_lum = float((lum * alpha).sum() / weight) if weight > 0 else 0.0
        # NOTE: a canvas export is usually ink on a transparent background whose colour
        # channels are arbitrary (often black). The opaque pixels are the ink, so paint
        # the transparent ones with the colour that contrasts with it.
        background = 1.0 if ink_lum < 0.5 else 0.0
        return lum * alpha + background * (1.0 - alpha)
    if mode != "L":
        img = img.convert("RGB").convert("L") if mode not in ("RGB", "1", "P") else img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1e-6:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


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


def preprocess(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Image file bytes -> 28x28 float32 in [0, 1], light ink on dark (before normalisation)."""
    # NOTE: plain 8-bit PNGs go to libspng, everything else to Pillow. torchvision's
    # decode_png was as fast, but the fuzz tests (tests/e2e/test_fuzz_images.py) crashed the
    # process with a mutated PNG inside libpng (SIGSEGV): hostile input must never take the
    # server down. libspng came through the same tests and 300,000 mutated PNGs in-process.
    gray = _decode_plain_png(data, limits)
    if gray is not None:
        return normalize(gray)
    img = decode(data, limits)
    if max(img.size) > 2 * WORK_SIDE and img.mode in ("L", "RGB", "RGBA", "LA", "I", "F"):
        # Halve big images in Pillow first: cheaper than converting all pixels to float.
        factor = max(1, max(img.size) // (2 * WORK_SIDE))
        img = img.reduce(factor)
    return normalize(to_gray(img))


def to_png(pixels: np.ndarray) -> bytes:
    """A 28x28 [0, 1] array as PNG bytes (what the model saw)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), mode="L").save(
        buf, format="PNG"
    )
    return buf.getvalue()
