"""The reader: uploaded image bytes to MNIST-style 28x28 digits, with their boxes.

Real uploads are phone photos, scans, canvas exports and screenshots. The reader runs them
through named stages, each one module with its thresholds in a frozen dataclass:

1. decode (`service.vision.decode`): the file opened safely, once, to gray levels;
2. ink (`service.vision.ink`): polarity, lighting, stroke threshold, blank and noise;
3. page (`service.vision.page`): skew, rulings, frames, cells, grid lines taken out;
4. glyphs (`service.vision.glyphs`): components grouped into digits and rows, splits;
   then numbers (`service.vision.numbers`): candidate glyphs from over-segmented rows;
5. normalise (`service.vision.normalise`): each glyph (and candidate) in MNIST's geometry;
6. read (`service.vision.reading`): digit, number or not a digit, from the model's rows.

`scan` runs 1-5 (the model runs between 5 and 6 on every input of the scan, batched by the
data plane); a 28x28
image already in MNIST's form stops after stage 2. A `BoxMap` carries every change of
geometry, so boxes come back in the upload's pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.errors import InvalidImage
from service.vision.boxes import BoxMap, Scale, Shift
from service.vision.decode import (
    DecodeBudget,
    Decoded,
    ImageLimits,
    RequestBudget,
    decode_upload,
)
from service.vision.glyphs import GLYPHS, GlyphParams, Part, find_glyphs
from service.vision.ink import INK, MNIST_SIZE, InkParams, find_ink
from service.vision.normalise import BOX, NORMALISE, NormaliseParams, to_mnist
from service.vision.numbers import NUMBERS, Lattice, NumberParams, over_segment
from service.vision.page import PAGE, PageParams, clear_page

__all__ = ["BOX", "MNIST_SIZE", "READER", "Glyph", "ImageLimits", "Reader", "Scan", "normalize",
           "preprocess", "read_gray", "scan", "scan_decoded", "to_png"]  # fmt: skip


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
    #: Candidate glyphs beyond geometry's, and the lattice the read stage chooses from
    #: (`service.vision.numbers`); none for a plain digit.
    candidates: tuple[Glyph, ...] = ()
    lattice: Lattice | None = None

    @property
    def inputs(self) -> tuple[Glyph, ...]:
        """What the model scores for this scan: its glyphs, then its candidates."""
        return self.glyphs + self.candidates if self.candidates else self.glyphs


@dataclass(frozen=True)
class Reader:
    """The parameters of every stage before the model (the ablation replaces some)."""

    ink: InkParams = field(default=INK)
    page: PageParams = field(default=PAGE)
    glyphs: GlyphParams = field(default=GLYPHS)
    normalise: NormaliseParams = field(default=NORMALISE)
    numbers: NumberParams = field(default=NUMBERS)


READER = Reader()


def scan(
    data: bytes,
    limits: ImageLimits,
    one_digit: bool = False,
    budget: DecodeBudget | RequestBudget | None = None,
    reader: Reader = READER,
) -> Scan:
    """Image file bytes -> its digits (boxes in the file's pixels), or why it has none.

    `one_digit` reads the image as exactly one digit (a form cell); otherwise several digits
    side by side or in rows are a number. Raises only for files that cannot be decoded or
    break the limits (`service.vision.decode`).
    """
    decoded = decode_upload(data, limits, budget) if budget else decode_upload(data, limits)
    return scan_decoded(decoded, one_digit, reader)


def scan_decoded(decoded: Decoded, one_digit: bool = False, reader: Reader = READER) -> Scan:
    """`scan` of a file already decoded (stage 1)."""
    gray = decoded.gray
    h, w = gray.shape
    if (w, h) == (decoded.width, decoded.height) and decoded.card is None:
        return read_gray(gray, one_digit, reader)  # (every plain PNG: nothing to map)
    boxes = BoxMap(decoded.width, decoded.height).then(Scale(w / decoded.width, h / decoded.height))
    if decoded.card is not None:
        x0, y0, x1, y1 = decoded.card
        gray, boxes = gray[y0:y1, x0:x1], boxes.then(Shift(-x0, -y0))
    return read_gray(gray, one_digit, reader, boxes)


def read_gray(
    gray: np.ndarray,
    one_digit: bool = False,
    reader: Reader = READER,
    boxes: BoxMap | None = None,
) -> Scan:
    """The digits of a grayscale image in [0, 1], or why it has none; boxes through `boxes`
    (None: in `gray`'s pixels)."""
    ink = find_ink(gray, reader.ink)
    if ink.as_mnist is not None:
        whole = (0, 0, gray.shape[1], gray.shape[0])
        return Scan((Glyph(ink.as_mnist, boxes.to_upload(whole) if boxes else whole, 0),))
    boxes = boxes or BoxMap(gray.shape[1], gray.shape[0])
    if ink.reason is not None:
        return Scan((), ink.reason)
    page = clear_page(ink, reader.page)
    rows = find_glyphs(page, one_digit, reader.glyphs)
    if not rows:
        return Scan((), "nearly blank: only lines or specks")
    boxes = boxes.then(Scale(ink.sx, ink.sy), Shift(ink.pad, ink.pad), *filter(None, [page.turn]))

    def glyph(part: Part, row: int) -> Glyph:
        pixels = to_mnist(page.ink, part, ink.threshold, reader.normalise)
        return Glyph(pixels, boxes.to_upload(part.box), row)

    glyphs = tuple(glyph(part, row) for row, parts in enumerate(rows) for part in parts)
    lattice = None if one_digit else over_segment(rows, reader.numbers)
    if lattice is None:
        return Scan(glyphs)
    extra, spans = lattice
    return Scan(glyphs, candidates=tuple(glyph(part, row) for row, part in extra), lattice=spans)


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
