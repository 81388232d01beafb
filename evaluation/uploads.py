"""Realistic uploads made from MNIST digits: scans, phone photos, canvas exports, markers.

Used by the tests (on a small committed sample of MNIST test digits) and by
`python -m evaluation`, which measures accuracy per kind through the HTTP API. They are
MNIST digits re-rendered, so they test the plumbing, not real handwriting.
Every kind is seeded, so a given (digit, seed) always yields the same file.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Maker = Callable[[np.ndarray, np.random.Generator], tuple[bytes, str]]


def _strokes(digit: np.ndarray, size: int, thickness: int = 0) -> np.ndarray:
    """A 28x28 uint8 digit as smooth strokes at `size` px, float in [0,1] (1 = ink)."""
    img = Image.fromarray(digit.astype(np.uint8), mode="L").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    if thickness:
        img = img.filter(ImageFilter.MaxFilter(thickness | 1))
    ink = np.asarray(img, dtype=np.float32) / 255.0
    return np.clip((ink - 0.25) / 0.45, 0.0, 1.0)


def _place(ink: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = canvas
    out = np.zeros((h, w), dtype=np.float32)
    ih, iw = ink.shape
    y = int(rng.integers(0, max(1, h - ih)))
    x = int(rng.integers(0, max(1, w - iw)))
    out[y : y + ih, x : x + iw] = ink[: h - y, : w - x]
    return out


def _paint(ink: np.ndarray, paper: np.ndarray, color: np.ndarray) -> np.ndarray:
    """RGB float image: paper colour where ink = 0, ink colour where ink = 1."""
    a = ink[..., None]
    return paper * (1 - a) + color * a


def _encode(rgb: np.ndarray, fmt: str, **kw: object) -> bytes:
    arr = np.clip(rgb * 255, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def scan(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Pen on tinted paper, scanned at 300 dpi: big, slightly noisy, JPEG."""
    size = int(rng.integers(160, 320))
    ink = _place(_strokes(digit, size), (int(size * 1.6), int(size * 1.3)), rng)
    paper = np.array([0.96, 0.95, 0.90]) - rng.uniform(0, 0.08)
    color = np.array([0.08, 0.1, 0.35]) * rng.uniform(0.5, 1.0)
    rgb = _paint(ink, paper, color) + rng.normal(0, 0.02, ink.shape + (3,))
    return _encode(rgb, "JPEG", quality=int(rng.integers(70, 92))), "scan.jpg"


def photo(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Phone photo: uneven light, blur, noise, JPEG, rotated sensor data with EXIF orientation."""
    size = int(rng.integers(200, 420))
    h, w = int(size * 1.8), int(size * 1.4)
    ink = _place(_strokes(digit, size, thickness=3), (h, w), rng)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    light = 0.55 + 0.4 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    paper = np.array([0.93, 0.9, 0.82])
    rgb = _paint(ink, paper, np.array([0.1, 0.1, 0.12])) * light[..., None]
    rgb += rng.normal(0, 0.03, rgb.shape)
    img = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.5)))
    # The sensor stores the picture rotated; EXIF orientation 6 says "rotate 90 CW to view".
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=int(rng.integers(65, 88)), exif=exif.tobytes())
    return buf.getvalue(), "photo.jpg"


def canvas(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """A drawing app's export: black strokes on a fully transparent 280x280 RGBA canvas."""
    ink = _strokes(digit, 280, thickness=int(rng.integers(3, 12)))
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)  # transparent black background
    rgba[..., 3] = (ink * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue(), "canvas.png"


def marker(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Thick felt marker on white paper, PNG."""
    size = int(rng.integers(180, 300))
    ink = _strokes(digit, size, thickness=int(size / 14))
    ink = _place(ink, (int(size * 1.3), int(size * 1.3)), rng)
    rgb = _paint(ink, np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0]))
    return _encode(rgb, "PNG"), "marker.png"


def small(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """A small digit somewhere on a big white canvas (screenshot of a form), PNG."""
    size = int(rng.integers(36, 60))
    ink = _place(_strokes(digit, size), (int(rng.integers(700, 1100)), 1200), rng)
    rgb = _paint(ink, np.array([0.98, 0.98, 0.98]), np.array([0.05, 0.05, 0.05]))
    return _encode(rgb, "PNG"), "small.png"


def inverted(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Light chalk on a dark board, WebP."""
    size = int(rng.integers(120, 260))
    ink = _place(_strokes(digit, size, thickness=3), (int(size * 1.4), int(size * 1.5)), rng)
    rgb = _paint(ink, np.array([0.13, 0.18, 0.15]), np.array([0.92, 0.92, 0.9]))
    rgb += rng.normal(0, 0.03, rgb.shape)
    return _encode(rgb, "WEBP", quality=80), "board.webp"


def ruled(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Pen on ruled notebook paper (grey or blue rulings, red margin line), scanned to JPEG."""
    size = int(rng.integers(160, 240))
    h, w = int(size * 1.6), int(size * 1.5)
    ink = _place(_strokes(digit, size), (h, w), rng)
    paper = np.ones((h, w, 3)) * np.array([0.97, 0.97, 0.95])
    rule = np.array([0.35, 0.35, 0.4]) if rng.random() < 0.5 else np.array([0.55, 0.65, 0.9])
    pitch = int(rng.integers(24, 40))
    for row in range(int(rng.integers(5, 20)), h, pitch):
        paper[row : row + 2] = rule
    margin = int(rng.integers(10, 40))
    paper[:, margin : margin + 2] = np.array([0.9, 0.4, 0.4])
    rgb = _paint(ink, paper, np.array([0.05, 0.05, 0.3])) + rng.normal(0, 0.015, (h, w, 3))
    return _encode(rgb, "JPEG", quality=int(rng.integers(75, 92))), "notebook.jpg"


def formats(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """The same digit as 16-bit TIFF, palette GIF or BMP at an odd size."""
    size = int(rng.integers(60, 140))
    ink = _place(_strokes(digit, size), (size + 40, size + 20), rng)
    kind = int(rng.integers(0, 3))
    buf = io.BytesIO()
    if kind == 0:
        arr = ((1 - ink) * 65535).astype(np.uint16)
        Image.fromarray(arr).save(buf, format="TIFF")  # uint16 -> mode I;16
        return buf.getvalue(), "scan16.tiff"
    rgb = _paint(ink, np.array([1.0, 1.0, 1.0]), np.array([0.2, 0.0, 0.5]))
    img = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8))
    if kind == 1:
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, format="GIF")
        return buf.getvalue(), "digit.gif"
    img.save(buf, format="BMP")
    return buf.getvalue(), "digit.bmp"


KINDS: dict[str, Maker] = {
    "scan": scan,
    "photo": photo,
    "canvas": canvas,
    "marker": marker,
    "small": small,
    "inverted": inverted,
    "ruled": ruled,
    "formats": formats,
}


def make_upload(kind: str, digit: np.ndarray, seed: int) -> tuple[bytes, str]:
    return KINDS[kind](digit, np.random.default_rng(seed))
