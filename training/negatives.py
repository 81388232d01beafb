"""Synthetic "not a digit" images: letters, words, symbols, shapes, textures and scribbles.

Each is drawn as an ordinary image file (dark ink on paper, or light on dark) and sent
through the server's own preprocessing, so the model learns on what serving produces.
Shapes that honestly look like a digit are left out: circles and ellipses (0), the letters
O/o/Q/D (0), I/l/i/j/| and slashes (1), Z/z (2), S/s (5), b/G (6), B (8), g/q (9), and
the Greek theta (0) and lambda-free mirrors of 7.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger(__name__)

LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnprtuvwxy"
SYMBOLS = "+*#@&%$?!=<>~^{}[]π"
GREEK = "αβγδεζηκμξπρσφχψωΓΔΠΣΦΨΩ"
GLYPHS = LETTERS + SYMBOLS + GREEK
FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "DejaVuSerif-Italic.ttf",
)

Maker = Callable[[np.random.Generator], np.ndarray]


@cache
def _font_choices() -> tuple[str | None, ...]:
    """Font files found by name on this machine; None stands for Pillow's built-in font."""
    found: list[str | None] = [None]
    for name in FONT_NAMES:
        try:
            ImageFont.truetype(name, 12)
        except OSError:
            continue
        found.append(name)
    if len(found) == 1:
        logger.info("no DejaVu fonts found: glyph negatives use Pillow's built-in font only")
    return tuple(found)


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    choices = _font_choices()
    name = choices[int(rng.integers(0, len(choices)))]
    if name is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(name, size)


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    side = int(rng.integers(64, 160))
    img = Image.new("L", (side, side), 0)
    return img, ImageDraw.Draw(img), side


def _ink(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def text(rng: np.random.Generator, length: int = 1) -> np.ndarray:
    img, draw, side = _canvas(rng)
    chars = "".join(GLYPHS[int(rng.integers(0, len(GLYPHS)))] for _ in range(length))
    size = int(side * rng.uniform(0.45, 0.8) / max(1, length * 0.6))
    font = _font(rng, max(size, 10))
    stroke = int(rng.integers(0, 3))
    draw.text(
        (side / 2, side / 2), chars, fill=255, font=font, anchor="mm", stroke_width=stroke,
        stroke_fill=255,
    )  # fmt: skip
    img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
    return _ink(img)


def glyph(rng: np.random.Generator) -> np.ndarray:
    return text(rng, 1)


def word(rng: np.random.Generator) -> np.ndarray:
    return text(rng, int(rng.integers(2, 6)))


def shape(rng: np.random.Generator) -> np.ndarray:
    """Outlined or filled polygons with three, four or five-plus corners (never round)."""
    img, draw, side = _canvas(rng)
    c, r = side / 2, side * rng.uniform(0.25, 0.42)
    corners = int(rng.choice([3, 4, 4, 5, 6, 10]))
    turn = rng.uniform(0, 2 * math.pi)
    radii = [r * (0.45 if corners == 10 and k % 2 else 1.0) for k in range(corners)]  # star
    pts = [
        (c + radii[k] * math.cos(turn + 2 * math.pi * k / corners),
         c + radii[k] * math.sin(turn + 2 * math.pi * k / corners))
        for k in range(corners)
    ]  # fmt: skip
    if rng.random() < 0.3:
        draw.polygon(pts, fill=255)
    else:
        draw.polygon(pts, outline=255, width=int(rng.integers(2, max(3, side // 12))))
    return _ink(img)


def stripes(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(28, 160))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(3, side / 3)
    wave = np.cos(angle) * xx + np.sin(angle) * yy
    if rng.random() < 0.4:  # checkerboard
        wave2 = -np.sin(angle) * xx + np.cos(angle) * yy
        return ((np.floor(wave / period) + np.floor(wave2 / period)) % 2).astype(np.float32)
    return (np.sin(2 * math.pi * wave / period) > rng.uniform(-0.5, 0.5)).astype(np.float32)


def noise(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(28, 160))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return rng.random((side, side)).astype(np.float32)
    if kind == 1:
        return (rng.random((side, side)) < rng.uniform(0.02, 0.3)).astype(np.float32)
    return np.clip(rng.normal(0.5, 0.25, (side, side)), 0, 1).astype(np.float32)


def blobs(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(48, 160))
    img = Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(side / rng.uniform(6, 20)))
    arr = _ink(img)
    return (arr > np.quantile(arr, rng.uniform(0.5, 0.85))).astype(np.float32)


def scribble(rng: np.random.Generator) -> np.ndarray:
    """A long random walk with many sharp turns: denser and more tangled than any digit."""
    img, draw, side = _canvas(rng)
    pts = rng.uniform(0.15 * side, 0.85 * side, size=(int(rng.integers(12, 40)), 2))
    draw.line([tuple(p) for p in pts], fill=255, width=int(rng.integers(1, max(2, side // 20))))
    return _ink(img)


MAKERS: dict[str, tuple[Maker, float]] = {
    "glyph": (glyph, 0.35),
    "word": (word, 0.15),
    "shape": (shape, 0.12),
    "stripes": (stripes, 0.1),
    "noise": (noise, 0.06),
    "blobs": (blobs, 0.08),
    "scribble": (scribble, 0.14),
}


def render(ink: np.ndarray, rng: np.random.Generator) -> bytes:
    """Ink in [0,1] as an image file: dark on a light paper most of the time, as uploads are."""
    paper, pen = (rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.35))
    if rng.random() < 0.25:
        paper, pen = pen, paper
    gray = paper + (pen - paper) * ink + rng.normal(0, 0.02, ink.shape)
    buf = io.BytesIO()
    Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def make_negatives(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` images drawn from MAKERS by weight, through the server's preprocessing.

    Returns [M, 28, 28] uint8 (ink = 255) and each one's maker name; M <= count because
    preprocessing finds nothing to read in some (blank-looking noise), which is the right
    answer for them and needs no training.
    """
    from service.config import Settings
    from service.errors import ServiceError
    from service.vision.decode import ImageLimits
    from service.vision.preprocess import preprocess

    rng = np.random.default_rng(seed)
    names = list(MAKERS)
    weights = np.array([MAKERS[n][1] for n in names])
    picks = rng.choice(len(names), size=count, p=weights / weights.sum())
    limits = ImageLimits.from_settings(Settings())
    out: list[np.ndarray] = []
    kinds: list[str] = []
    for k in picks:
        data = render(MAKERS[names[k]][0](rng), rng)
        try:
            pixels = preprocess(data, limits)
        except ServiceError:
            continue
        out.append(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8))
        kinds.append(names[k])
    stacked = np.stack(out) if out else np.zeros((0, 28, 28), dtype=np.uint8)
    return stacked, kinds
