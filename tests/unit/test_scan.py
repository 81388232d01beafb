"""Each failure mode of real uploads, on images built here: what `scan` finds in them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.config import Settings
from service.vision.decode import ImageLimits
from service.vision.preprocess import read_gray, scan
from tests.conftest import png_bytes

LIMITS = ImageLimits.from_settings(Settings())


def paper_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """An MNIST digit as dark ink on white paper at `size` px, uint8."""
    return 255 - np.asarray(Image.fromarray(digit).resize((size, size), Image.BICUBIC))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def only_glyph(gray: np.ndarray, one_digit: bool = True) -> np.ndarray:
    found = read_gray(gray.astype(np.float32) / 255, one_digit)
    assert len(found.glyphs) == 1, (found.reason, [g.box for g in found.glyphs])
    return found.glyphs[0].pixels


# ---------------------------------------------------------------- 1. 28x28 pass-through


def test_scan_mnist_28x28_passes_through_untouched(mnist_sample) -> None:
    for digit in mnist_sample[0][:50]:
        (g,) = scan(png_bytes(digit), LIMITS).glyphs
        np.testing.assert_array_equal(g.pixels, digit / np.float32(255))


def test_scan_faint_28x28_digit_is_levelled_not_passed_through(mnist_sample) -> None:
    digit = mnist_sample[0][15]
    faint = (255 - digit * 0.3).astype(np.uint8)  # light pencil on white, already centred
    (g,) = scan(png_bytes(faint), LIMITS).glyphs
    assert g.pixels.max() == 1.0, "strokes brought to full ink"
    assert similarity(g.pixels, digit / 255) > 0.6


def test_scan_28x28_digit_filling_the_frame_on_grey_is_normalised(mnist_sample) -> None:
    digit = mnist_sample[0][3]
    ys, xs = np.nonzero(digit > 30)
    tight = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    filled = np.asarray(Image.fromarray(tight).resize((28, 28), Image.BICUBIC)).astype(float)
    grey = (150 - filled * 0.5).clip(0, 255).astype(np.uint8)  # dark ink on grey paper
    out = only_glyph(grey)
    assert not np.array_equal(out, grey / 255)
    assert out[:3].max() < 0.1, "refitted into the central box"
    assert out[-3:].max() < 0.1, "refitted into the central box"
    assert similarity(out, digit / 255) > 0.6


# ---------------------------------------------------------------- 2. frames, cells, grids


def boxed(digit: np.ndarray, line: int = 3, grid: bool = False) -> np.ndarray:
    page = np.full((160, 160), 250, np.uint8)
    page[30:130, 30:130] = paper_digit(digit, 100)
    img = Image.fromarray(page)
    draw = ImageDraw.Draw(img)
    if grid:
        for k in range(5, 160, 26):
            draw.line([(k, 0), (k, 159)], fill=70, width=line)
            draw.line([(0, k), (159, k)], fill=70, width=line)
    else:
        draw.rectangle([8, 8, 151, 151], outline=40, width=line)
    return np.asarray(img)


@pytest.mark.parametrize("grid", [False, True])
def test_scan_removes_frames_and_grid_lines(mnist_sample, grid: bool) -> None:
    digit = mnist_sample[0][2]  # a 1: a frame would make it a 0
    plain = only_glyph(paper_digit(digit, 100))
    out = only_glyph(boxed(digit, grid=grid))
    assert similarity(out, plain) > 0.7  # a frame kept in the digit scores about 0.2


def test_scan_drops_the_slivers_of_tilted_grid_lines(mnist_sample) -> None:
    """A photographed grid is a little tilted: what the removed lines leave beside them
    must not come back as extra 1s."""
    digit = mnist_sample[0][7]  # a 1
    page = np.full((160, 160), 235, np.uint8)
    page[63:99, 65:101] = np.minimum(page[63:99, 65:101], paper_digit(digit, 36))  # in a cell
    img = Image.fromarray(page)
    draw = ImageDraw.Draw(img)
    for k in (20, 60, 100, 140):  # squared paper, three pixels off square over the page
        draw.line([(k, 0), (k + 3, 159)], fill=150, width=3)
        draw.line([(0, k), (159, k + 3)], fill=150, width=3)
    found = read_gray(np.asarray(img).astype(np.float32) / 255)
    assert len(found.glyphs) == 1, [g.box for g in found.glyphs]
    assert similarity(found.glyphs[0].pixels, only_glyph(paper_digit(digit, 36))) > 0.7


@pytest.mark.parametrize(("side", "pen"), [(16, 3), (64, 10), (200, 24)])
def test_scan_bold_zero_filling_a_tight_crop_is_not_a_frame(side: int, pen: int) -> None:
    """Its flat sides look like a cell's lines, but they are pen strokes with nothing
    inside: one glyph, the whole ring, not two arcs or 'nearly blank'."""
    img = Image.new("L", (side, side), 255)
    ImageDraw.Draw(img).rounded_rectangle(
        [side * 0.1, 0, side * 0.9 - 1, side - 1], radius=side * 0.3, outline=0, width=pen
    )
    out = only_glyph(np.asarray(img), one_digit=False)
    left, right = out[14, 4:12].max(), out[14, 16:24].max()
    top, bottom = out[3:8, 10:18].max(), out[20:26, 10:18].max()
    assert min(left, right, top, bottom) > 0.5, "the whole ring: sides, top and bottom"


def test_scan_empty_printed_cell_is_still_nearly_blank() -> None:
    img = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(img).rectangle([8, 8, 91, 91], outline=30, width=3)
    found = read_gray(np.asarray(img).astype(np.float32) / 255)
    assert found.glyphs == ()
    assert found.reason == "nearly blank: only lines or specks"


@pytest.mark.parametrize("tilt", [-4.0, 2.0, 5.0])
def test_scan_reads_a_digit_on_squared_paper_photographed_askew(mnist_sample, tilt) -> None:
    """Grid lines a few degrees off the image's rows no longer swallow the digit: the page
    is turned straight, its lines removed, and the box comes back in the upload's pixels."""
    digit = mnist_sample[0][4]  # a 3
    grid = Image.new("L", (800, 800), 250)
    draw = ImageDraw.Draw(grid)
    for k in range(0, 800, 40):
        draw.line([(k, 0), (k, 799)], fill=170, width=2)
        draw.line([(0, k), (799, k)], fill=170, width=2)
    page = np.asarray(grid.rotate(tilt, resample=Image.BILINEAR, fillcolor=250))[200:600, 200:600]
    page = page.copy()
    page[130:270, 130:270] = np.minimum(page[130:270, 130:270], paper_digit(digit, 140))
    found = read_gray(page.astype(np.float32) / 255)
    assert len(found.glyphs) == 1, [g.box for g in found.glyphs]
    (g,) = found.glyphs
    ys, xs = np.nonzero(paper_digit(digit, 140) < 128)
    want = (130 + xs.min(), 130 + ys.min(), 131 + xs.max(), 131 + ys.max())
    assert max(abs(a - b) for a, b in zip(g.box, want, strict=True)) <= 20, (g.box, want)
    assert similarity(g.pixels, only_glyph(paper_digit(digit, 140))) > 0.7


def test_scan_cell_cut_tight_keeps_the_digit_not_the_border(mnist_sample) -> None:
    digit = mnist_sample[0][0]
    cell = boxed(digit)[6:154, 6:154]  # the frame's sides run along the image edges
    assert similarity(only_glyph(cell), only_glyph(paper_digit(digit, 100))) > 0.75


@pytest.mark.parametrize("one_digit", [True, False])
@pytest.mark.parametrize("line", ["margin", "page edge"])
def test_scan_a_line_along_the_edge_beside_a_digit_is_dropped(
    mnist_sample, line: str, one_digit: bool
) -> None:
    """A margin line or the page's edge, thin and spanning the image, is page structure:
    the page stage drops it, so only the digit is read."""
    digit = mnist_sample[0][0]
    page = np.full((240, 200), 255, np.uint8)
    page[60:180, 40:160] = paper_digit(digit, 120)
    alone = only_glyph(page)
    if line == "margin":
        page[:, 4:7] = 90
    else:
        page[232:235, :] = 90
    assert similarity(only_glyph(page, one_digit), alone) > 0.95


def test_scan_keeps_a_seven_bar_drawn_edge_to_edge() -> None:
    img = Image.new("L", (100, 120), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(0, 4), (99, 4)], fill=0, width=8)  # the bar touches both sides
    draw.line([(99, 4), (40, 119)], fill=0, width=8)
    out = only_glyph(np.asarray(img))
    assert out[4:9].sum() > 5, "the bar is a stroke, not a page line"


# ---------------------------------------------------------------- 3. transparent margin


def test_scan_decides_polarity_on_an_opaque_card_in_a_transparent_margin(mnist_sample) -> None:
    digit = mnist_sample[0][4]
    rgba = np.zeros((200, 200, 4), np.uint8)  # transparent margin
    rgba[40:160, 40:160, :3] = 30  # a dark opaque card
    rgba[40:160, 40:160, 3] = 255
    light = np.asarray(Image.fromarray(digit).resize((100, 100), Image.BICUBIC))
    rgba[50:150, 50:150, :3] = np.maximum(30, light)[..., None]  # a light digit on it
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    (g,) = scan(buf.getvalue(), LIMITS, one_digit=True).glyphs
    assert similarity(g.pixels, digit / 255) > 0.75


# ---------------------------------------------------------------- 4. faint and thin strokes


def test_scan_keeps_a_faint_stroke_attached(mnist_sample) -> None:
    digit = mnist_sample[0][0].astype(np.float32)
    page = paper_digit(digit.astype(np.uint8), 200).astype(np.float32)
    faint = page.copy()
    faint[100:] = 255 - (255 - faint[100:]) * 0.35  # the lower half written faintly
    strong = only_glyph(page.astype(np.uint8))
    out = only_glyph(faint.astype(np.uint8))
    assert out[16:].sum() > 0.3 * strong[16:].sum(), "the faint half is kept"


def test_scan_widens_one_pixel_lines_to_mnist_strokes() -> None:
    img = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(img).ellipse([90, 40, 210, 260], outline=0, width=1)  # a 1-px 0
    out = only_glyph(np.asarray(img))
    row = out[14]
    inked = np.flatnonzero(row > 0.5)
    assert inked.size >= 4, row  # two strokes, each at least 2 px wide
    assert float(out.max()) == pytest.approx(1.0)


# ---------------------------------------------------------------- 5. digits touching edges


@pytest.mark.parametrize("side", [8, 16])
def test_scan_bitmaps_cut_tight_read_as_with_a_margin(mnist_sample, side: int) -> None:
    digit = mnist_sample[0][1]
    ys, xs = np.nonzero(digit > 30)
    tight = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    bitmap = 255 - np.asarray(Image.fromarray(tight).resize((side, side), Image.BOX))
    with_margin = np.pad(bitmap, side // 2, constant_values=255)
    # Different sizes go through different enlargements: alike, not equal.
    assert similarity(only_glyph(bitmap), only_glyph(with_margin)) > 0.75


def test_scan_z_shaped_two_cut_tight_keeps_its_bars() -> None:
    # Bars along the top and bottom edges: two full-width bands, once taken for rulings.
    z = np.full((16, 16), 255, np.uint8)
    z[0:2, :] = 0
    z[14:16, :] = 0
    for i in range(2, 14):
        z[i, 15 - i : 17 - i] = 0
    out = only_glyph(z)
    rows = np.flatnonzero(out.max(axis=1) > 0.5)
    assert out[rows[0]].sum() > 8, "top bar kept"
    assert out[rows[-1]].sum() > 8, "bottom bar kept"


# ---------------------------------------------------------------- nothing to read


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [
        (np.full((28, 28), 255, np.uint8), "blank"),
        (np.zeros((28, 28), np.uint8), "blank"),
        (np.full((400, 300), 128, np.uint8), "blank"),
        (np.random.default_rng(0).integers(0, 256, (200, 200)).astype(np.uint8), "noise"),
        (np.random.default_rng(1).integers(0, 256, (28, 28)).astype(np.uint8), "noise"),
    ],
)
def test_scan_nothing_to_read_says_why(pixels: np.ndarray, reason: str) -> None:
    found = scan(png_bytes(pixels), LIMITS)
    assert found.glyphs == ()
    assert found.reason is not None
    assert reason in found.reason or "texture" in found.reason or "specks" in found.reason


def test_scan_non_finite_pixels_are_nothing_to_read() -> None:
    gray = np.zeros((40, 40), np.float32)
    gray[5, 5] = np.nan
    found = read_gray(gray)
    assert found.glyphs == ()
    assert "non-finite" in (found.reason or "")


def test_scan_a_speck_on_blank_paper_is_nearly_blank() -> None:
    page = np.full((600, 600), 250, np.uint8)
    page[300:302, 300:302] = 0
    found = scan(png_bytes(page), LIMITS)
    assert found.glyphs == ()


# ---------------------------------------------------------------- whole numbers


def number_page(digits: list[np.ndarray], rows: int = 1, touch: bool = False) -> np.ndarray:
    per_row = len(digits) // rows
    step = 60 if touch else 100
    page = np.full((40 + rows * 110, 60 + per_row * step + 40), 255, np.uint8)
    for i, d in enumerate(digits):
        r, c = divmod(i, per_row)
        y, x = 20 + r * 110, 30 + c * step
        page[y : y + 100, x : x + 100] = np.minimum(page[y : y + 100, x : x + 100],
                                                  paper_digit(d, 100))  # fmt: skip
    return page


def test_scan_rows_of_digits_in_reading_order_with_boxes(mnist_sample) -> None:
    images, labels = mnist_sample
    page = number_page(list(images[:6]), rows=2)
    found = scan(png_bytes(page), LIMITS)
    assert [g.row for g in found.glyphs] == [0, 0, 0, 1, 1, 1]
    for i, g in enumerate(found.glyphs):
        r, c = divmod(i, 3)
        x0, y0, x1, y1 = g.box
        assert 30 + c * 100 <= x0 < x1 <= 130 + c * 100, g.box
        assert 20 + r * 110 <= y0 < y1 <= 120 + r * 110, g.box


def test_scan_boxes_are_in_the_uploads_pixels_when_it_was_shrunk(mnist_sample) -> None:
    images, _ = mnist_sample
    page = number_page(list(images[:2]))
    big = np.asarray(Image.fromarray(page).resize((page.shape[1] * 10, page.shape[0] * 10)))
    small_boxes = [g.box for g in scan(png_bytes(page), LIMITS).glyphs]
    big_boxes = [g.box for g in scan(png_bytes(big), LIMITS).glyphs]
    assert len(big_boxes) == len(small_boxes) == 2
    for s, b in zip(small_boxes, big_boxes, strict=True):
        assert np.allclose(np.array(b) / 10, s, atol=3), (s, b)


def test_scan_splits_touching_digits(mnist_sample) -> None:
    images, labels = mnist_sample
    # Two digits overlapping so their strokes join into one component.
    page = np.full((140, 220), 255, np.uint8)
    for x, d in ((20, images[0]), (90, images[2])):
        page[20:120, x : x + 100] = np.minimum(page[20:120, x : x + 100], paper_digit(d, 100))
    found = scan(png_bytes(page), LIMITS)
    assert len(found.glyphs) == 2, [g.box for g in found.glyphs]


def test_scan_one_digit_reads_a_row_as_one(mnist_sample) -> None:
    page = number_page(list(mnist_sample[0][:3]))
    assert len(scan(png_bytes(page), LIMITS, one_digit=True).glyphs) == 1


def test_scan_row_of_digits_in_box_cells_drops_the_walls(mnist_sample) -> None:
    images, _ = mnist_sample
    # A form's number field: a row of boxes, a digit written in each, thin printed walls.
    page = np.full((80, 30 + 4 * 50), 255, np.uint8)
    for i, d in enumerate(images[:4]):
        x = 15 + i * 50 + 5
        page[20:60, x : x + 40] = np.minimum(page[20:60, x : x + 40], paper_digit(d, 40))
    img = Image.fromarray(page)
    draw = ImageDraw.Draw(img)
    draw.line([(15, 16), (215, 16)], fill=90, width=2)
    draw.line([(15, 63), (215, 63)], fill=90, width=2)
    for i in range(5):
        draw.line([(15 + i * 50, 16), (15 + i * 50, 63)], fill=90, width=2)
    found = scan(png_bytes(np.asarray(img)), LIMITS)
    assert len(found.glyphs) == 4, [g.box for g in found.glyphs]


def test_scan_keeps_a_thin_one_opening_a_number(mnist_sample) -> None:
    images, _ = mnist_sample
    page = number_page(list(images[:3]))
    page = np.pad(page[:, 30:], ((0, 0), (0, 0)), constant_values=255)
    img = Image.fromarray(np.pad(page, ((0, 0), (50, 0)), constant_values=255))
    # A 1 written as a thin straight stroke, close to the photo's left edge.
    ImageDraw.Draw(img).line([(8, 35), (10, 110)], fill=0, width=3)
    found = scan(png_bytes(np.asarray(img)), LIMITS)
    assert len(found.glyphs) == 4, [g.box for g in found.glyphs]
    assert found.glyphs[0].box[0] < 15


def test_scan_two_small_digits_in_a_canvas_corner_are_a_number() -> None:
    # "12" drawn small in the top left of a 28x28 canvas, a gap between the digits.
    img = Image.new("L", (28, 28), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(4, 6), (6, 4), (6, 20)], fill=0, width=2)
    draw.arc([(10, 3), (20, 12)], 180, 30, fill=0, width=2)
    draw.line([(19, 10), (10, 20), (21, 20)], fill=0, width=2)
    found = scan(png_bytes(np.asarray(img)), LIMITS)
    assert len(found.glyphs) == 2, [g.box for g in found.glyphs]
    assert found.glyphs[0].box[2] <= found.glyphs[1].box[0] + 2


def test_scan_one_digit_with_a_speck_stays_one_digit(mnist_sample) -> None:
    images, _ = mnist_sample
    page = np.full((140, 160), 255, np.uint8)
    page[20:120, 30:130] = paper_digit(images[0], 100)
    page[60:63, 145:148] = 0  # a speck of dust beside it
    found = scan(png_bytes(page), LIMITS)
    assert len(found.glyphs) == 1, [g.box for g in found.glyphs]


def test_scan_a_line_under_a_number_running_past_it_is_removed(mnist_sample) -> None:
    images, _ = mnist_sample
    page = number_page(list(images[:2]))
    img = Image.fromarray(page)
    # A grid line under the number, a little tilted, from one edge of the photo to the other.
    ImageDraw.Draw(img).line([(0, 118), (page.shape[1], 112)], fill=60, width=4)
    found = scan(png_bytes(np.asarray(img)), LIMITS)
    assert len(found.glyphs) == 2, [g.box for g in found.glyphs]
    assert all(g.box[3] <= 116 for g in found.glyphs), [g.box for g in found.glyphs]


def test_find_digits_on_single_pixel_specks_finds_none() -> None:
    # Areas of one pixel each pass no size test: no group is left (this raised before).
    from service.vision.glyphs import find_digits

    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35:6, 5:35:6] = True
    assert find_digits(mask, (0, 0, 40, 40)) == []
