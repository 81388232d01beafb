"""Each stage of the reader called alone, on inputs built here (service/vision/)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from service.config import Settings
from service.vision.boxes import BoxMap, Scale, Shift, Turn
from service.vision.decode import ImageLimits, decode_upload
from service.vision.glyphs import GLYPHS, find_glyphs
from service.vision.ink import INK, Ink, find_ink
from service.vision.normalise import NORMALISE, to_mnist
from service.vision.page import PAGE, Page, clear_page
from service.vision.preprocess import READER, Reader, read_gray
from service.vision.reading import READ, read

LIMITS = ImageLimits.from_settings(Settings())


def png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def ring(side: int = 100, pen: int = 8) -> np.ndarray:
    """A drawn 0: dark ink on white paper, uint8."""
    img = Image.new("L", (side, side), 255)
    ImageDraw.Draw(img).ellipse([side * 0.25, side * 0.1, side * 0.75, side * 0.9], outline=0,
                                width=pen)  # fmt: skip
    return np.asarray(img)


def page_of(mask: np.ndarray, pad: int = 0) -> Page:
    h, w = mask.shape
    return Page(mask.astype(np.float32), mask, (pad, pad, w - pad, h - pad), None)


def ink_of(mask: np.ndarray, pad: int = 4) -> Ink:
    padded = np.pad(mask, pad)
    return Ink(padded.astype(np.float32), padded, 0.5, 1.0, 1.0, pad)


# ---------------------------------------------------------------- boxes


def test_boxmap_maps_back_through_every_step_and_rounds_outwards() -> None:
    boxes = BoxMap(1000, 500).then(Scale(0.5, 0.5), Shift(-10, -20), Scale(2, 2), Shift(8, 8))
    # upload x = ((x - 8) / 2 + 10) / 0.5, y = ((y - 8) / 2 + 20) / 0.5
    assert boxes.to_upload((48, 48, 108.5, 68)) == (60, 80, 121, 100)


def test_boxmap_leaves_out_identity_steps_and_clamps_to_the_upload() -> None:
    boxes = BoxMap(28, 28).then(Scale(1, 1), Shift(0, 0))
    assert boxes.steps == ()
    assert boxes.to_upload((-3, -1, 40, 28)) == (0, 0, 28, 28)
    assert boxes.to_upload((30, 30, 30, 30)) == (27, 27, 28, 28), "never empty"


def test_boxmap_turn_back_undoes_a_rotation() -> None:
    img = np.zeros((200, 300), np.float32)
    img[80:100, 140:160] = 1
    turned = ndimage.rotate(img, 5.0, reshape=True, order=1)
    ys, xs = np.nonzero(turned > 0.5)
    turn = Turn(5.0, (0, 0), turned.shape, img.shape)
    back = BoxMap(300, 200).then(turn).to_upload((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert max(abs(a - b) for a, b in zip(back, (140, 80, 160, 100), strict=True)) <= 3, back


# ---------------------------------------------------------------- decode


def test_decode_returns_the_uploads_size_and_no_card_for_an_opaque_png() -> None:
    d = decode_upload(png(ring(60)), LIMITS)
    assert (d.width, d.height, d.card) == (60, 60, None)
    assert d.gray.shape == (60, 60)
    assert d.gray.dtype == np.float32


def test_decode_finds_an_opaque_card_in_a_transparent_margin() -> None:
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[20:80, 30:90, :3] = 40
    rgba[40:60, 50:70, :3] = 220  # something on the card: not one flat colour
    rgba[20:80, 30:90, 3] = 255
    assert decode_upload(png(rgba, "RGBA"), LIMITS).card == (30, 20, 90, 80)


def test_decode_a_flat_opaque_rectangle_is_a_stroke_not_a_card() -> None:
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[10:90, 45:55, 3] = 255  # a hard-edged black bar: a drawn 1
    assert decode_upload(png(rgba, "RGBA"), LIMITS).card is None


def test_decode_gives_the_full_size_of_a_big_jpeg_it_decoded_smaller() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((3000, 2400), 200, np.uint8)).save(buf, format="JPEG")
    d = decode_upload(buf.getvalue(), LIMITS)
    assert (d.width, d.height) == (2400, 3000)
    assert max(d.gray.shape) <= 1024


# ---------------------------------------------------------------- ink


def test_ink_polarity_dark_on_white_and_white_on_black_give_the_same_strokes() -> None:
    paper = ring().astype(np.float32) / 255
    a, b = find_ink(paper), find_ink(1 - paper)
    assert a.reason is None
    assert b.reason is None
    assert np.array_equal(a.mask, b.mask)
    assert a.mask.mean() > 0.02


def test_ink_undoes_uneven_lighting() -> None:
    paper = ring().astype(np.float32) / 255
    shade = np.linspace(0.45, 1.0, 100, dtype=np.float32)[None, :]
    lit = find_ink(paper * shade)
    flat = find_ink(paper * shade, dataclasses.replace(INK, lighting=False))
    truth = find_ink(paper).mask
    assert (lit.mask != truth).mean() < (flat.mask != truth).mean()


def test_ink_hysteresis_keeps_a_faint_stroke_joined_to_a_strong_one() -> None:
    gray = np.ones((80, 80), np.float32)
    gray[10:70, 30:50] = 0.0  # a strong stroke
    gray[40:44, 50:75] = 0.65  # a faint one joined to it, under the stroke threshold
    found = find_ink(gray)
    single = find_ink(gray, dataclasses.replace(INK, hysteresis=False)).mask
    faint = np.s_[40 + found.pad : 44 + found.pad, 50 + found.pad : 75 + found.pad]
    assert found.mask[faint].all(), "the faint stroke is kept"
    assert not single[faint].any(), "one threshold loses it"


@pytest.mark.parametrize(
    ("gray", "reason"),
    [
        (np.full((50, 50), 0.6, np.float32), "blank"),
        (np.random.default_rng(0).random((120, 120)).astype(np.float32), "texture"),
        (np.full((30, 30), np.nan, np.float32), "non-finite"),
    ],
)
def test_ink_says_why_an_image_has_no_strokes(gray: np.ndarray, reason: str) -> None:
    found = find_ink(gray)
    assert found.reason is not None
    assert reason in found.reason


def test_ink_passes_an_mnist_like_28x28_digit_through_as_it_is() -> None:
    digit = np.zeros((28, 28), np.float32)
    digit[5:23, 12:16] = 1.0  # a 1, centred, full strength
    assert np.array_equal(find_ink(digit).as_mnist, digit)
    off = find_ink(digit, dataclasses.replace(INK, pass_through=False))
    assert off.as_mnist is None
    assert off.mask.any()


# ---------------------------------------------------------------- page


def ruled() -> np.ndarray:
    mask = np.zeros((300, 300), bool)
    for y in range(20, 300, 40):
        mask[y : y + 2] = True
    mask[100:200, 120:135] = True  # a 1 across a ruling
    return mask


def test_page_takes_out_rulings_and_keeps_the_stroke_across_them() -> None:
    mask = ruled()
    out = clear_page(ink_of(mask)).mask[4:-4, 4:-4]
    assert not out[20:22, 10:100].any(), "the ruling is gone"
    assert out[100:200, 120:135].mean() > 0.9, "the 1 crossing the rulings stays"
    off = dataclasses.replace(PAGE, rulings=False, frames=False, lone_lines=False)
    assert clear_page(ink_of(mask), off).mask[24:26, 10:100].all()


def test_page_takes_out_a_frame_around_a_digit() -> None:
    mask = np.zeros((120, 120), bool)
    mask[5:8, 5:115] = mask[112:115, 5:115] = True
    mask[5:115, 5:8] = mask[5:115, 112:115] = True
    mask[30:90, 55:62] = True
    out = clear_page(ink_of(mask)).mask[4:-4, 4:-4]
    assert not out[5:8].any()
    assert out[30:90, 55:62].all()
    # (Its sides also span the image, and it is a row of one box: the ruling and cell
    # rules would take them out too.)
    kept = dataclasses.replace(PAGE, frames=False, rulings=False, cells=False)
    off = clear_page(ink_of(mask), kept).mask[4:-4, 4:-4]
    assert off[5:8, 5:115].all()


def test_page_keeps_a_seven_bar_alone() -> None:
    mask = np.zeros((100, 100), bool)
    mask[5:12, 5:95] = True
    for y in range(12, 95):
        x = 95 - (y - 12) * 50 // 83
        mask[y, x - 4 : x + 4] = True
    assert np.array_equal(clear_page(ink_of(mask)).mask, np.pad(mask, 4))


def test_page_turns_a_squared_page_photographed_askew() -> None:
    mask = np.zeros((400, 400), bool)
    for k in range(0, 400, 40):
        mask[k : k + 2] = True
        mask[:, k : k + 2] = True
    tilted = ndimage.rotate(mask.astype(np.float32), 4.0, reshape=False, order=0) > 0.5
    ink = Ink(tilted.astype(np.float32), tilted, 0.5, 1.0, 1.0, 0)
    page = clear_page(ink)
    assert page.turn is not None
    assert abs(abs(page.turn.degrees) - 4.0) <= 0.5
    assert clear_page(ink, dataclasses.replace(PAGE, skew=False)).turn is None


# ---------------------------------------------------------------- glyphs


def blobs(*boxes: tuple[int, int, int, int], shape: tuple[int, int] = (80, 200)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
        mask[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4] = False  # rings, like 0s
    return mask


def test_glyphs_finds_a_row_of_digits_in_reading_order() -> None:
    rows = find_glyphs(page_of(blobs((110, 10, 140, 60), (20, 10, 50, 60), (65, 12, 95, 62))))
    assert [[p.box[0] for p in r] for r in rows] == [[20, 65, 110]]


def test_glyphs_one_digit_reads_the_biggest_and_what_is_near_it() -> None:
    rows = find_glyphs(page_of(blobs((20, 10, 50, 60), (65, 12, 95, 62))), one_digit=True)
    assert len(rows) == 1
    assert len(rows[0]) == 1


def test_glyphs_merges_a_detached_bar_into_its_digit() -> None:
    mask = blobs((60, 30, 90, 70), (110, 30, 140, 70))
    mask[20:28, 60:92] = True  # a 5's bar, detached above its body
    (row,) = find_glyphs(page_of(mask))
    assert [g.box[1] for g in row] == [20, 30], "the bar is part of the first digit"
    off = find_glyphs(page_of(mask), p=dataclasses.replace(GLYPHS, merge_stacked=False))
    assert [g.box[1] for r in off for g in r] == [30, 30], "alone, the bar is dropped"


def test_glyphs_splits_a_glyph_much_wider_than_tall() -> None:
    mask = blobs((20, 10, 64, 60), (63, 10, 107, 60), shape=(70, 130))  # two 0s touching
    assert [len(r) for r in find_glyphs(page_of(mask))] == [2]
    off = find_glyphs(page_of(mask), p=dataclasses.replace(GLYPHS, split=False))
    assert [len(r) for r in off] == [1]


def test_glyphs_drop_specks() -> None:
    mask = np.zeros((400, 400), bool)
    mask[100:102, 100:102] = True
    assert find_glyphs(page_of(mask)) == []


# ---------------------------------------------------------------- normalise


def test_normalise_fits_the_box_and_centres_by_mass() -> None:
    ink = np.zeros((200, 200), np.float32)
    ink[20:180, 90:110] = 0.8  # a tall bar
    part = find_glyphs(page_of(ink > 0.5))[0][0]
    out = to_mnist(ink, part, 0.4)
    ys, xs = np.nonzero(out > 0.5)
    assert ys.max() - ys.min() + 1 == 20, "the long side fills the 20 px box"
    cy, cx = ndimage.center_of_mass(out)
    assert abs(cy - 14) <= 1
    assert abs(cx - 14) <= 1
    assert out.max() == pytest.approx(1.0), "levelled to full ink"


def test_normalise_widens_thin_strokes() -> None:
    img = Image.new("L", (300, 300), 0)
    ImageDraw.Draw(img).ellipse([90, 40, 210, 260], outline=255, width=1)  # a 1-px 0
    ink = np.asarray(img).astype(np.float32) / 255
    part = find_glyphs(page_of(ink > 0.5))[0][0]
    wide = to_mnist(ink, part, 0.5)
    thin = to_mnist(ink, part, 0.5, dataclasses.replace(NORMALISE, widen=False))
    assert (wide > 0.5).sum() > (thin > 0.5).sum()


# ---------------------------------------------------------------- the pipeline and read


def test_pipeline_boxes_come_back_in_the_images_pixels() -> None:
    gray = np.ones((100, 260), np.float32)
    gray[20:80, 40:48] = 0  # a 1
    gray[20:80, 120:128] = 0  # another
    found = read_gray(gray)
    assert [g.box for g in found.glyphs] == [(40, 20, 48, 80), (120, 20, 128, 80)]


def test_pipeline_runs_with_a_stage_replaced() -> None:
    gray = ring().astype(np.float32) / 255
    reader = Reader(page=dataclasses.replace(PAGE, frames=False, rulings=False))
    assert reader != READER
    assert len(read_gray(gray, reader=reader).glyphs) == 1


def test_read_rules_can_be_turned_off() -> None:
    from service.vision.preprocess import Glyph, Scan

    marks = tuple(Glyph(np.zeros((28, 28), np.float32), (x, 0, x + 10, 20), 0) for x in (0, 20, 40))
    digit, reject = [0.9] + [0.0] * 9 + [0.1], [0.0] * 10 + [1.0]
    rows = [digit, reject, reject]
    assert read(Scan(marks), rows, 0.5).kind == "not_a_digit"
    off = dataclasses.replace(READ, mostly_rejected=False, tall_letter=False)
    assert read(Scan(marks), rows, 0.5, off).kind == "digit"
