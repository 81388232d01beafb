"""A corpus of hostile and broken image files, generated (nothing binary is committed).

    python -m tests.support.hostile OUTDIR      # writes every file, and a manifest

Each case names what it attacks and the statuses a correct server may answer. Files that
decode to "nothing to read" may be a 400 today or a 200 "not a digit" answer; what is never
allowed is a 5xx, a crash, a stall or a worker past its memory budget.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REFUSED = frozenset({400, 413, 415})
#: Decodable, but nothing to read: refused or answered "not a digit".
NOTHING = frozenset({200, 400})


@dataclass(frozen=True)
class Case:
    name: str
    attack: str
    make: Callable[[], bytes]
    allowed: frozenset[int]


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(name: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + name
        + payload
        + struct.pack(">I", zlib.crc32(name + payload))
    )


def _png_header(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A valid PNG signature and IHDR claiming any size, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _bmp_header(width: int, height: int) -> bytes:
    """A BMP whose header claims width x height 24-bit pixels, with almost no data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def _gif_frames(count: int, side: int = 8) -> bytes:
    frames = [Image.new("L", (side, side), color=i % 255) for i in range(count)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _float_tiff(value: float) -> bytes:
    pixels = np.zeros((64, 64), np.float32)
    pixels[20:40, 30:34] = 1.0
    pixels[0, 0] = value
    return _encode(Image.fromarray(pixels, "F"), "TIFF")


def _corrupt_png() -> bytes:
    good = bytearray(_encode(Image.new("L", (64, 64), 30), "PNG"))
    good[40:48] = b"\xff" * 8  # inside IDAT: bad data and a bad CRC
    return bytes(good)


CASES = [
    Case("bitmap-40mpx-wide.png", "1-bit PNG of 40,000,000 x 1 px in ~5 KB",
         lambda: _encode(Image.new("1", (40_000_000, 1)), "PNG"), REFUSED),
    Case("bitmap-40mpx-tall.png", "1-bit PNG of 1 x 40,000,000 px",
         lambda: _encode(Image.new("1", (1, 40_000_000)), "PNG"), REFUSED),
    Case("webp-6000.webp", "1.4 KB lossless WebP of 6000 x 6000 px",
         lambda: _encode(Image.new("L", (6000, 6000), 255), "WEBP", lossless=True), REFUSED),
    Case("webp-4000.webp", "0.7 KB lossless WebP of 4000 x 4000 px (under the pixel cap)",
         lambda: _encode(Image.new("L", (4000, 4000), 255), "WEBP", lossless=True), NOTHING),
    Case("palette-4000.png", "2 KB palette PNG of 4000 x 4000 with transparency",
         lambda: _encode(Image.new("P", (4000, 4000)), "PNG", transparency=0), NOTHING),
    Case("png-header-60000.png", "PNG header claiming 60,000 x 60,000 px",
         lambda: _png_header(60_000, 60_000), REFUSED),
    Case("png-header-16bit.png", "16-bit RGBA PNG header claiming 5000 x 5000 px",
         lambda: _png_header(5000, 5000, 16, 6), REFUSED),
    Case("bmp-header-huge.bmp", "BMP header claiming 30,000 x 30,000 px",
         lambda: _bmp_header(30_000, 30_000), REFUSED),
    Case("strip-20000x10.png", "long thin strip",
         lambda: _encode(Image.new("L", (20_000, 10)), "PNG"), REFUSED),
    Case("gif-500-frames.gif", "animation with 500 frames", lambda: _gif_frames(500), REFUSED),
    Case("truncated.png", "PNG cut in half",
         lambda: _encode(Image.new("L", (200, 200), 90), "PNG")[:60], REFUSED),
    Case("corrupt.png", "PNG with damaged compressed data", _corrupt_png, REFUSED),
    Case("empty.png", "zero bytes", lambda: b"", REFUSED),
    Case("text.png", "text with an image name", lambda: b"hello, world\n" * 10, REFUSED),
    Case("pdf.png", "a PDF", lambda: b"%PDF-1.4\n" + b"0" * 500, REFUSED),
    Case("svg.png", "an SVG (not an accepted format)",
         lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><text>7</text></svg>', REFUSED),
    Case("magic-only.jpg", "a JPEG signature only",
         lambda: b"\xff\xd8\xff" + b"\0" * 32, REFUSED),
    Case("nan.tiff", "float TIFF with one NaN pixel", lambda: _float_tiff(float("nan")), REFUSED),
    Case("inf.tiff", "float TIFF with one infinity", lambda: _float_tiff(float("inf")), REFUSED),
    Case("blank-photo.jpg", "1500 x 1500 near-white photo",
         lambda: _encode(Image.new("RGB", (1500, 1500), (248, 247, 245)), "JPEG"), NOTHING),
    Case("black-28.png", "solid black 28 x 28",
         lambda: _encode(Image.new("L", (28, 28), 0), "PNG"), NOTHING),
    Case("white-28.png", "solid white 28 x 28",
         lambda: _encode(Image.new("L", (28, 28), 255), "PNG"), NOTHING),
    Case("grey-28.png", "solid grey 28 x 28",
         lambda: _encode(Image.new("L", (28, 28), 128), "PNG"), NOTHING),
]  # fmt: skip


def corpus() -> list[tuple[Case, bytes]]:
    return [(case, case.make()) for case in CASES]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tests.support.hostile OUTDIR\n")
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for case, data in corpus():
        (out / case.name).write_bytes(data)
        allowed = ",".join(str(s) for s in sorted(case.allowed))
        lines.append(f"{case.name}\t{len(data)}\t{allowed}\t{case.attack}")
    (out / "MANIFEST.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
