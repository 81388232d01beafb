"""Preprocessing for each kind of upload: decoding limits, modes, polarity, placement."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from evaluation.uploads import make_upload
from service.config import Settings
from service.errors import InvalidImage, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.vision.decode import (
    ImageLimits,
    _decode_plain_png,
    _plain_png,
    decode,
    decode_gray,
    to_gray,
)
from service.vision.preprocess import normalize, preprocess
from tests.conftest import png_bytes

LIMITS = ImageLimits.from_settings(Settings())


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def big_digit(digit: np.ndarray, size: int = 200) -> np.ndarray:
    """Dark ink on white paper at `size` px, uint8."""
    up = Image.fromarray(digit).resize((size, size), Image.BICUBIC)
    return 255 - np.asarray(up)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def test_preprocess_mnist_digit_passes_through_unchanged(mnist_sample) -> None:
    images, _ = mnist_sample
    for digit in images[:20]:
        out = preprocess(png_bytes(digit), LIMITS)
        np.testing.assert_array_equal(out, digit.astype(np.float32) / 255.0)


def test_preprocess_inverted_mnist_digit_is_inverted_back(mnist_sample) -> None:
    digit = mnist_sample[0][3]
    out = preprocess(png_bytes(255 - digit), LIMITS)
    np.testing.assert_allclose(out, digit / 255.0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_preprocess_every_format_yields_the_digit_shape(mnist_sample, fmt: str) -> None:
    digit = mnist_sample[0][0]
    data = encode(Image.fromarray(big_digit(digit)).convert("RGB"), fmt)
    out = preprocess(data, LIMITS)
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    assert similarity(out, digit / 255.0) > 0.78, fmt


def test_preprocess_transparent_canvas_with_black_strokes(mnist_sample) -> None:
    digit = mnist_sample[0][1]
    up = np.asarray(Image.fromarray(digit).resize((280, 280), Image.BICUBIC))
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)  # black, fully transparent
    rgba[..., 3] = up
    out = preprocess(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.8


def test_scan_hard_edged_stroke_on_a_transparent_canvas_is_a_one() -> None:
    # A "1" drawn without anti-aliasing: its opaque box is the stroke itself, one flat
    # colour; it must not be taken for a card and cropped to nothing.
    from service.vision.preprocess import scan

    rgba = np.zeros((200, 200, 4), dtype=np.uint8)
    rgba[30:170, 92:108] = (0, 0, 0, 255)
    found = scan(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMITS)
    assert len(found.glyphs) == 1, found.reason
    x0, y0, x1, y1 = found.glyphs[0].box
    assert x0 <= 92 and y0 <= 30, found.glyphs[0].box  # noqa: PT018
    assert x1 >= 108 and y1 >= 170, found.glyphs[0].box  # noqa: PT018


def test_preprocess_transparent_canvas_with_white_strokes(mnist_sample) -> None:
    digit = mnist_sample[0][1]
    up = np.asarray(Image.fromarray(digit).resize((280, 280), Image.BICUBIC))
    rgba = np.full((280, 280, 4), 255, dtype=np.uint8)
    rgba[..., 3] = up
    out = preprocess(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.8


def test_preprocess_la_palette_and_16bit_modes(mnist_sample) -> None:
    digit = mnist_sample[0][2]
    paper = big_digit(digit, 120)
    la = Image.fromarray(np.stack([paper, np.full_like(paper, 255)], -1), "LA")
    pal = Image.fromarray(paper).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    i16 = Image.fromarray(paper.astype(np.uint16) * 257)
    assert i16.mode == "I;16"
    for img, fmt in ((la, "PNG"), (pal, "PNG"), (i16, "TIFF"), (i16, "PNG")):
        out = preprocess(encode(img, fmt), LIMITS)
        assert similarity(out, digit / 255.0) > 0.78, (img.mode, fmt)


def test_preprocess_honours_exif_orientation(mnist_sample) -> None:
    digit = mnist_sample[0][0]  # a 7: not rotation-symmetric
    upright = Image.fromarray(big_digit(digit)).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    with_exif = preprocess(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    without = preprocess(encode(stored, "JPEG", quality=95), LIMITS)
    assert similarity(with_exif, digit / 255.0) > 0.78
    assert similarity(without, digit / 255.0) < similarity(with_exif, digit / 255.0) - 0.2


def test_preprocess_small_digit_on_huge_canvas_is_found_and_centred(mnist_sample) -> None:
    digit = mnist_sample[0][5]
    canvas = np.full((2400, 3000), 250, dtype=np.uint8)
    canvas[1900:1960, 300:360] = big_digit(digit, 60)
    out = preprocess(encode(Image.fromarray(canvas), "PNG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.75
    cy, cx = np.argwhere(out > 0.3).mean(0)
    assert abs(cy - 14) < 3
    assert abs(cx - 14) < 3


def test_preprocess_noisy_uneven_photo_keeps_the_digit(mnist_sample) -> None:
    digit = mnist_sample[0][4]
    rng = np.random.default_rng(0)
    paper = big_digit(digit, 300).astype(np.float32) / 255
    light = np.linspace(0.5, 1.0, 300)[None, :]
    img = np.clip(paper * light + rng.normal(0, 0.04, paper.shape), 0, 1)
    out = preprocess(encode(Image.fromarray((img * 255).astype(np.uint8)), "JPEG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.75


@pytest.mark.parametrize(
    ("paper", "ink", "frame"),
    [
        (100, 30, None),  # pencil on grey paper in dim light: paper darker than mid-grey
        (70, 200, None),  # chalk on a grey slate
        (190, 60, 100),  # a dark cell frame along the whole border of light paper
    ],
)
def test_preprocess_polarity_follows_the_ink_not_a_grey_border(
    mnist_sample, paper: int, ink: int, frame: int | None
) -> None:
    digit = mnist_sample[0][7]
    size = 200
    img = np.full((size, size), paper, dtype=np.float32)
    up = np.asarray(Image.fromarray(digit).resize((140, 140), Image.BICUBIC)) / 255.0
    img[30:170, 30:170] = paper + (ink - paper) * up
    if frame is not None:
        img[:12], img[-12:], img[:, :12], img[:, -12:] = frame, frame, frame, frame
    out = preprocess(encode(Image.fromarray(img.astype(np.uint8)), "PNG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.75


def test_preprocess_ignores_notebook_rulings(mnist_sample) -> None:
    digit = mnist_sample[0][6]
    paper = np.full((320, 300), 245, dtype=np.uint8)
    paper[20::32] = 90  # dark ruled lines across the page
    paper[:, 40] = 120  # margin line
    up = np.asarray(Image.fromarray(digit).resize((200, 200), Image.BICUBIC))
    patch = paper[60:260, 50:250]
    paper[60:260, 50:250] = np.minimum(patch, 255 - up)
    out = preprocess(encode(Image.fromarray(paper), "PNG"), LIMITS)
    assert similarity(out, digit / 255.0) > 0.8


def test_preprocess_page_with_only_lines_is_a_client_error() -> None:
    paper = np.full((200, 200), 245, dtype=np.uint8)
    paper[10::25] = 60
    with pytest.raises(InvalidImage, match="no digit"):
        preprocess(encode(Image.fromarray(paper), "PNG"), LIMITS)


def test_normalize_fits_20px_box_and_centres_by_mass() -> None:
    gray = np.ones((100, 300), dtype=np.float32)
    gray[40:60, 20:280] = 0.0  # a wide bar, dark on light
    out = normalize(gray)
    ys, xs = np.nonzero(out > 0.5)
    assert xs.max() - xs.min() + 1 <= 20
    assert xs.max() - xs.min() + 1 >= 18
    assert abs(np.average(np.arange(28), weights=out.sum(0)) - 14) < 1


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidImage, "empty file"),
        (b"hello, I am not an image", UnsupportedMediaType, "not a supported image"),
        (b"%PDF-1.4\n" + b"0" * 100, UnsupportedMediaType, "not a supported image"),
    ],
)
def test_decode_rejects_non_images(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode(data, LIMITS)


def test_decode_rejects_truncated_png(mnist_sample) -> None:
    data = encode(Image.fromarray(big_digit(mnist_sample[0][0])), "PNG")
    with pytest.raises(InvalidImage, match="corrupt"):
        decode_gray(data[: len(data) // 2], LIMITS)


def test_decode_rejects_files_over_the_byte_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode(b"\x89PNG" + b"0" * 2000, dataclasses.replace(LIMITS, max_bytes=1000))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    idat_chunk = b"IDAT" + idat
    body += struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(("w", "h"), [(10_000, 10_000), (60_000, 60_000)])
def test_decode_rejects_pixel_bombs_from_the_header(w: int, h: int) -> None:
    with pytest.raises(PayloadTooLarge, match="pixels|decompression"):
        decode(_png_header_only(w, h), LIMITS)


def test_decode_relies_on_its_own_pixel_limit_not_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 MP is over Pillow's default warning threshold: no warning, our limit decides.
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode(_png_header_only(10_000, 10_000), LIMITS)
    assert Image.MAX_IMAGE_PIXELS is None
    # Should anything re-enable Pillow's check, its error is still a 413, not a 400.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PayloadTooLarge, match="decompression bomb"):
        decode(_png_header_only(100, 100), LIMITS)


def test_decode_rejects_animations_with_too_many_frames() -> None:
    frames = [Image.new("L", (8, 8), color=i % 255) for i in range(30)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(PayloadTooLarge, match="frames"):
        decode(buf.getvalue(), dataclasses.replace(LIMITS, max_frames=10))
    assert decode(buf.getvalue(), dataclasses.replace(LIMITS, max_frames=50)).size == (8, 8)


def test_preprocess_blank_image_is_a_client_error() -> None:
    data = encode(Image.new("RGB", (200, 200), "white"), "PNG")
    with pytest.raises(InvalidImage, match="no digit"):
        preprocess(data, LIMITS)


def test_to_gray_float_mode_is_stretched() -> None:
    img = Image.fromarray(np.linspace(-5, 5, 100, dtype=np.float32).reshape(10, 10), "F")
    g = to_gray(img)
    assert g.min() == 0.0
    assert g.max() == pytest.approx(1.0)


# ------------------------------------------------------------ plain PNGs through libspng


def _pillow_gray(data: bytes) -> np.ndarray:
    """What the Pillow path makes of a file: the reference the libspng path must match."""
    return to_gray(decode(data, LIMITS))


_PLAIN = st.sampled_from([((), "L"), ((3,), "RGB"), ((4,), "RGBA")]).flatmap(
    lambda channels: st.tuples(
        arrays(
            np.uint8,
            st.tuples(st.integers(1, 40), st.integers(1, 40)).map(lambda hw: hw + channels[0]),
        ),
        st.just(channels[1]),
        st.booleans(),
    )
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_PLAIN)
def test_plain_pngs_decode_to_the_same_pixels_as_pillow(
    case: tuple[np.ndarray, str, bool],
) -> None:
    pixels, mode, optimize = case
    data = encode(Image.fromarray(pixels), "PNG", optimize=optimize)
    assert _plain_png(data) == mode
    fast = _decode_plain_png(data, mode)[0]
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, _pillow_gray(data))


@pytest.mark.parametrize("kind", ["canvas", "marker"])
def test_realistic_png_uploads_preprocess_exactly_as_through_pillow(
    mnist_sample, kind: str
) -> None:
    for seed, digit in enumerate(mnist_sample[0][:3]):
        data, _ = make_upload(kind, digit, seed)
        assert _plain_png(data) is not None, kind
        np.testing.assert_array_equal(preprocess(data, LIMITS), normalize(_pillow_gray(data)))


def _with_chunk(data: bytes, name: bytes, payload: bytes) -> bytes:
    """`data` with one more ancillary chunk right after IHDR."""
    chunk = name + payload
    extra = struct.pack(">I", len(payload)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:33] + extra + data[33:]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda px: encode(Image.fromarray(px).convert("LA"), "PNG"), id="LA"),
        pytest.param(lambda px: encode(Image.fromarray(px).convert("P"), "PNG"), id="palette"),
        pytest.param(
            lambda px: encode(Image.fromarray(px.astype(np.uint16) * 257), "PNG"), id="16-bit"
        ),
        pytest.param(lambda px: encode(Image.fromarray(px), "PNG", transparency=0), id="tRNS"),
        pytest.param(
            lambda px: _with_chunk(encode(Image.fromarray(px), "PNG"), b"eXIf", b"MM\0*"),
            id="eXIf",
        ),
        pytest.param(
            lambda px: encode(Image.fromarray(np.resize(px, (2100, 40))), "PNG"), id="huge"
        ),
    ],
)
def test_other_pngs_are_left_to_pillow(mnist_sample, make) -> None:
    data = make(mnist_sample[0][0])
    assert _plain_png(data) is None


def test_plain_png_limits_hold_before_decoding() -> None:
    data = encode(Image.new("L", (100, 100), 30), "PNG")
    with pytest.raises(PayloadTooLarge, match="10000 pixels"):
        preprocess(data, dataclasses.replace(LIMITS, max_pixels=5000))
    with pytest.raises(PayloadTooLarge, match="bytes"):
        preprocess(data, dataclasses.replace(LIMITS, max_bytes=len(data) - 1))
    bomb = _png_header_only(1000, 1000)  # claims 1 MP in 100 bytes
    assert _plain_png(bomb) == "L"
    with pytest.raises(PayloadTooLarge, match="pixels"):
        preprocess(bomb, dataclasses.replace(LIMITS, max_pixels=500_000))


@st.composite
def _damaged_plain_png(draw: st.DrawFn) -> bytes:
    side = draw(st.integers(4, 40))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA"]))
    noise = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (side, side, 4))
    img = Image.fromarray(noise.astype(np.uint8)).convert(mode)
    data = bytearray(encode(img, "PNG"))
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(8, len(data) - 1))] = draw(st.integers(0, 255))
    else:
        data = data[: draw(st.integers(33, len(data) - 1))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_damaged_plain_png())
def test_damaged_plain_pngs_are_client_errors_or_images(data: bytes) -> None:
    """Mutated or truncated PNGs: a digit or a ServiceError (a 4xx), never anything else."""
    status, shape = 200, (28, 28)
    try:
        shape = preprocess(data, LIMITS).shape
    except ServiceError as exc:
        status = exc.status_code
    assert 200 <= status < 500
    assert shape == (28, 28)
