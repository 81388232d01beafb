"""Open uploaded image files safely: format allow-list, byte/pixel/frame caps checked
before any pixel is decoded, and a grayscale float32 array out."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyspng
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, Overloaded, PayloadTooLarge, UnsupportedMediaType

#: Formats accepted from clients (Pillow's JPEG reader also opens phones' MPO files).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
#: Longest side of the working copy: enough for a small digit on a big canvas.
WORK_SIDE = 1024

# NOTE: `decode` checks every image against the configured pixel limit right after the
# header is read, before any pixel is decoded, so it replaces Pillow's own bomb check (a
# warning past 89 MP, an error past 179 MP). Turning that warning into an error per call
# needed `warnings.catch_warnings`, which is not thread-safe, and files decode on a pool.
Image.MAX_IMAGE_PIXELS = None


class LimitSettings(Protocol):
    """The settings `ImageLimits.from_settings` reads (service.config.Settings has them);
    a protocol, so that decoding does not import the configuration that imports it."""

    max_file_bytes: int
    max_image_pixels: int
    max_image_aspect: float
    max_image_frames: int


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits; the values come from Settings (`from_settings`)."""

    max_bytes: int
    #: Pixels decoded per image: the header's for most formats, the reduced size for JPEG
    #: (libjpeg decodes at 1/2, 1/4 or 1/8 scale, so big phone photos stay cheap).
    max_pixels: int
    #: Longest side over shortest side, for images longer than WORK_SIDE; a row of
    #: digits is far below it.
    max_aspect: float
    max_frames: int

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_file_bytes,
            max_pixels=settings.max_image_pixels,
            max_aspect=settings.max_image_aspect,
            max_frames=settings.max_image_frames,
        )


#: Bytes per pixel while a file is decoded and reduced: Pillow's pixels (4 bytes for
#: RGB), a decoder's own buffer (WebP, PNG rows) and one converted copy.
_DECODE_BYTES_PER_PIXEL = 16
#: Bytes per pixel of the reduced working copy's float32 arrays, through normalisation.
_WORK_BYTES_PER_PIXEL = 48


def decode_cost(width: int, height: int) -> int:
    """Upper bound of the memory (bytes) that decoding a width x height image takes."""
    pixels = width * height
    return pixels * _DECODE_BYTES_PER_PIXEL + min(pixels, WORK_SIDE**2) * _WORK_BYTES_PER_PIXEL


class DecodeBudget:
    """Memory that decodes in flight may hold at once, shared by a worker's decode threads.

    A decode reserves its `decode_cost` before any pixel is decoded and waits while others
    hold the budget, so a burst of big images queues instead of multiplying the peak.
    """

    def __init__(self, total_bytes: int, wait_s: float = 10.0) -> None:
        self.total = total_bytes
        self.wait_s = wait_s
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def for_request(self, max_pixels: int) -> RequestBudget:
        """A view of this budget that also caps the pixels one request decodes in all."""
        return RequestBudget(self, max_pixels)

    def reserve_image(self, width: int, height: int) -> contextlib.AbstractContextManager[None]:
        return self.reserve(decode_cost(width, height))

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.total:
            raise PayloadTooLarge(
                f"image needs {nbytes >> 20} MiB to decode; the limit is {self.total >> 20} MiB"
            )
        with self._cond:
            if not self._cond.wait_for(lambda: self._used + nbytes <= self.total, self.wait_s):
                raise Overloaded("too many large images are being decoded; retry shortly")
            self._used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


class RequestBudget:
    """One request's share of a DecodeBudget: its files may decode at most `max_pixels` in
    all, so one request of many big images cannot hold the decode threads for long."""

    def __init__(self, shared: DecodeBudget, max_pixels: int) -> None:
        self.shared = shared
        self.max_pixels = max_pixels
        self._pixels = 0
        self._lock = threading.Lock()

    def reserve_image(self, width: int, height: int) -> contextlib.AbstractContextManager[None]:
        with self._lock:
            self._pixels += width * height
            total = self._pixels
        if total > self.max_pixels:
            raise PayloadTooLarge(
                f"the request's images hold more than {self.max_pixels} pixels in all"
            )
        return self.shared.reserve_image(width, height)


_UNLIMITED = DecodeBudget(1 << 62)


@dataclass(slots=True)  # not frozen: cheaper to build, on the path of every upload
class Decoded:
    """Stage 1 of the reader: everything later stages need from the file, decoded once.

    `gray` is the image in [0, 1] (at most WORK_SIDE a side); `width` x `height` the
    upload's own size as displayed (EXIF orientation applied), which boxes are given in;
    `card` the box in `gray` of an opaque rectangle inside a transparent margin (a dark
    card holding a light digit, whose own border must decide the polarity), else None.
    """

    gray: np.ndarray
    width: int
    height: int
    card: tuple[int, int, int, int] | None = None


def decode_gray(
    data: bytes, limits: ImageLimits, budget: DecodeBudget | RequestBudget = _UNLIMITED
) -> np.ndarray:
    """Image file bytes -> grayscale float32 in [0, 1], at most WORK_SIDE a side."""
    return decode_upload(data, limits, budget).gray


def decode_upload(
    data: bytes, limits: ImageLimits, budget: DecodeBudget | RequestBudget = _UNLIMITED
) -> Decoded:
    """Image file bytes -> `Decoded`: gray levels, the upload's size and its opaque card.

    Every limit is checked from the header before pixels are decoded; the image is reduced
    in its own compact mode (1-bit, palette and 8-bit stay bytes) before it becomes float.
    """
    # NOTE: plain 8-bit PNGs go to libspng, everything else to Pillow. torchvision's
    # decode_png was as fast, but the fuzz tests (tests/e2e/test_fuzz_images.py) crashed the
    # process with a mutated PNG inside libpng (SIGSEGV): hostile input must never take the
    # server down. libspng came through the same tests and 300,000 mutated PNGs in-process.
    mode = _plain_png(data)
    if mode is not None:
        _check_bytes(data, limits)
        width, height = _png_size(data)
        _check_size(width, height, limits)
        with budget.reserve_image(width, height):
            gray, alpha = _decode_plain_png(data, mode)
        return Decoded(gray, width, height, _card(gray, alpha))
    img, (width, height) = _open(data, limits)
    with budget.reserve_image(*img.size):
        img = _load(img)
        if (width > height) != (img.width > img.height):
            width, height = height, width  # EXIF turned it a quarter turn
        small = _reduce(img)
        gray = to_gray(small)
        alpha = None
        if _png_with_alpha(data) and small.mode in ("RGBA", "LA"):
            alpha = np.asarray(small.getchannel("A"))
        return Decoded(gray, width, height, _card(gray, alpha))


def _png_with_alpha(data: bytes) -> bool:
    """A PNG of colour type 4 or 6 (grey or RGB with an alpha channel)."""
    return data.startswith(_PNG) and len(data) > 25 and data[25] in (4, 6)


@dataclass(frozen=True)
class CardRule:
    """When an opaque rectangle in a transparent margin is a card: alpha over `opaque`
    (of 255) covering between `min_share` and `max_share` of the image, at least
    `min_side` px a side and `min_fill` opaque inside, and not one flat colour (gray
    levels spread over `min_spread`: a flat one is a hard-edged stroke, a drawn 1)."""

    opaque: int = 127
    min_share: float = 0.05
    max_share: float = 0.95
    min_side: int = 8
    min_fill: float = 0.9
    min_spread: float = 0.1


CARD = CardRule()


def _card(gray: np.ndarray, alpha: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """The box of an opaque card inside a transparent margin (see `CardRule`), else None."""
    if alpha is None:
        return None
    solid = alpha > CARD.opaque
    ys = np.flatnonzero(solid.any(axis=1))
    xs = np.flatnonzero(solid.any(axis=0))
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    area = (y1 - y0) * (x1 - x0)
    if area >= CARD.max_share * solid.size or area < CARD.min_share * solid.size:
        return None
    if min(y1 - y0, x1 - x0) < CARD.min_side:
        return None
    if float(solid[y0:y1, x0:x1].mean()) < CARD.min_fill:
        return None  # strokes on a transparent canvas, not an opaque card
    if float(np.ptp(gray[y0:y1, x0:x1])) < CARD.min_spread:
        return None  # one flat colour: a hard-edged stroke on a transparent canvas
    return x0, y0, x1, y1


def decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open an image file and check every limit from its header; no pixel is decoded yet."""
    return _open(data, limits)[0]


def _open(data: bytes, limits: ImageLimits) -> tuple[Image.Image, tuple[int, int]]:
    """`decode`, and the size the header gives (a JPEG is then drafted smaller)."""
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
    size = img.size
    try:
        if img.format in ("JPEG", "MPO"):
            # libjpeg decodes at a reduced scale: the limits apply to what is decoded.
            img.draft("RGB" if img.mode != "L" else "L", (WORK_SIDE, WORK_SIDE))
        frames = getattr(img, "n_frames", 1)
    except Exception as exc:
        raise InvalidImage("corrupt image: the header cannot be read") from exc
    _check_size(*img.size, limits)
    if frames > limits.max_frames:
        raise PayloadTooLarge(f"animation has {frames} frames; the limit is {limits.max_frames}")
    return img, size


def _load(img: Image.Image) -> Image.Image:
    """Decode the pixels of an image opened by `decode` (its first frame)."""
    try:
        img.seek(0)
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img)  # (without a tag it would copy the image)
    except Exception as exc:  # truncated data, bad CRCs, bad EXIF
        raise InvalidImage("corrupt or truncated image") from exc
    return img


#: A lone file this small, whose header promises at most this many pixels, decodes faster
#: than the thread hop that would take it off the event loop.
_INLINE_BYTES = 4096
_INLINE_PIXELS = 128 * 128


def cheap_to_decode(data: bytes) -> bool:
    """Whether decoding `data` costs so little that it may run on the event loop.

    Judged by what the header promises, never by the file's size: a few KB of WebP or
    1-bit PNG can hold tens of megapixels.
    """
    if len(data) > _INLINE_BYTES or _plain_png(data) is None:
        return False
    width, height = _png_size(data)
    return width * height <= _INLINE_PIXELS


def _reduce(img: Image.Image) -> Image.Image:
    """Box-filter down to at most WORK_SIDE a side while still in a compact byte mode.

    Converting a big image to float first would cost 4-16 bytes per pixel; this keeps the
    float working copy at WORK_SIDE squared whatever the upload's size.
    """
    width, height = img.size
    scale = WORK_SIDE / max(width, height)
    if scale >= 1:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.BOX)


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
    # Only big images: a long thin strip is a way to make the reduction step expensive (and
    # leaves nothing to read); a small one costs nothing.
    if max(width, height) > WORK_SIDE and max(width, height) > limits.max_aspect * min(
        width, height
    ):
        raise PayloadTooLarge(
            f"image is {width}x{height}: sides more than {limits.max_aspect:g} times apart"
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
    if max(_png_size(data)) > WORK_SIDE:
        return None  # big images are reduced by Pillow before they become float
    if b"tRNS" in data or b"eXIf" in data or b"acTL" in data:
        return None
    return _PLAIN_PNG_MODES.get(data[25])


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _decode_plain_png(data: bytes, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Grayscale float32 in [0, 1] of a plain PNG (see `_plain_png`): Pillow's pixels, faster;
    and its alpha channel (RGBA) or None."""
    # NOTE: Pillow reads a PNG's chunks in Python, which dominates a small digit's
    # preprocessing; libspng decodes it in C. libspng is written to be fed hostile files
    # (fuzzed in OSS-Fuzz), and our fuzz tests run mutated PNGs through this path.
    try:
        pixels = pyspng.load(data, format=mode)
    except Exception as exc:  # bad CRC, truncated or corrupt data
        raise InvalidImage("corrupt or truncated image") from exc
    if mode == "L":
        return pixels.astype(np.float32) / 255.0, None  # to_gray's conversion, without Pillow
    return to_gray(Image.fromarray(pixels)), pixels[..., 3] if mode == "RGBA" else None


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
        if not np.isfinite(arr).all():
            raise InvalidImage("image has pixel values that are not finite numbers")
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
