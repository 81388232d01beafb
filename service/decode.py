"""Open uploaded image files safely: format allow-list, byte/pixel/frame caps checked
before any pixel is decoded, and a grayscale float32 array out."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyspng
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

#: Formats accepted from clients (Pillow's JPEG reader also opens phones' MPO files).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
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


def decode_plain_png(data: bytes, limits: ImageLimits) -> np.ndarray | None:
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
