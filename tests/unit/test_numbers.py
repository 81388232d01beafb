"""The number lattice (service/vision/numbers.py) called alone, on inputs built here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.vision.decode import ImageLimits
from service.vision.glyphs import Part
from service.vision.numbers import NUMBERS, Lattice, Pick, Span, choose, over_segment
from service.vision.preprocess import Glyph, Scan, read_gray, scan
from service.vision.reading import read
from tests.conftest import png_bytes

LIMITS = ImageLimits.from_settings(Settings())

ROW_H = 40


def bar(width: int, height: int = ROW_H) -> np.ndarray:
    """An upright stroke, 6 px wide, on a `width` wide strip (a 1)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[:, width // 2 - 3 : width // 2 + 3] = True
    return mask


def loop(width: int, height: int = ROW_H) -> np.ndarray:
    """A ring of 5 px strokes filling the strip (a 0)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[:5], mask[-5:], mask[:, :5], mask[:, -5:] = True, True, True, True
    return mask


def touching_pair() -> Part:
    """Two rings joined by a short neck at mid-height: one component, two digits."""
    left, right = loop(30), loop(30)
    mask = np.zeros((ROW_H, 68), dtype=bool)
    mask[:, :30], mask[:, 38:] = left, right
    mask[18:22, 30:38] = True  # the neck
    return Part((10, 5, 78, 5 + ROW_H), mask)


def part_at(mask: np.ndarray, x0: int, y0: int = 5) -> Part:
    h, w = mask.shape
    return Part((x0, y0, x0 + w, y0 + h), mask)


def probs(digit: int | None, p: float = 0.98) -> list[float]:
    """An 11-class row: `digit` at `p` (None: "not a digit" at `p`), the rest spread."""
    row = [(1 - p) / 10] * 11
    row[10 if digit is None else digit] = p
    return row


# ---------------------------------------------------------------- over-segmenting


def test_a_lone_glyph_no_wider_than_a_digit_gets_no_candidates() -> None:
    assert over_segment([[part_at(loop(30), 10)]]) is None


def test_the_lattice_turned_off_gives_no_candidates() -> None:
    off = dataclasses.replace(NUMBERS, lattice=False)
    assert over_segment([[touching_pair()]], off) is None


def test_a_wide_lone_glyph_is_cut_at_its_neck() -> None:
    found = over_segment([[touching_pair()]])
    assert found is not None
    extra, lattice = found
    # The whole glyph is geometry's (input 0) and spans every piece; the rest are new.
    n = lattice.pieces[0]
    assert [s.index for s in lattice.spans if (s.start, s.end) == (0, n)] == [0]
    assert all(s.index >= 1 for s in lattice.spans if (s.start, s.end) != (0, n))
    assert all(row == 0 for row, _ in extra)
    # One cut lies in the neck, between the rings (x 40 to 48 in the page).
    ends = {part.box[2] for _, part in extra}
    assert any(40 <= x <= 48 for x in ends), ends
    for _, part in extra:
        assert part.mask.shape == (part.box[3] - part.box[1], part.box[2] - part.box[0])
        assert 10 <= part.box[0] < part.box[2] <= 78


def test_every_candidate_covers_at_most_max_span_pieces_but_geometrys_glyphs() -> None:
    found = over_segment([[touching_pair(), part_at(bar(20), 80)]])
    assert found is not None
    _, lattice = found
    for s in lattice.spans:
        assert s.end - s.start <= NUMBERS.max_span or s.index < 2


def test_neighbours_become_one_candidate_only_when_close() -> None:
    close = [[part_at(bar(20), 10), part_at(bar(20), 32)]]
    far = [[part_at(bar(20), 10), part_at(bar(20), 60)]]
    found = over_segment(close)
    assert found is not None
    extra, lattice = found
    assert [(s.start, s.end) for s in lattice.spans if s.index >= 2] == [(0, 2)]
    assert extra[0][1].box == (10 + 7, 5, 32 + 13, 5 + ROW_H)
    assert over_segment(far) is None  # nothing beyond geometry's glyphs to choose from


def test_over_the_candidate_budget_geometry_stands() -> None:
    row = [part_at(bar(20), 10 + 22 * i) for i in range(8)]
    assert over_segment([row]) is not None
    assert over_segment([row], dataclasses.replace(NUMBERS, max_candidates=10)) is None


# ---------------------------------------------------------------- choosing


def pair_lattice() -> Lattice:
    return Lattice((2,), (Span(0, 0, 2, 1.6, 1.0, 0), Span(0, 0, 1, 0.7, 1.0, 1),
                          Span(0, 1, 2, 0.7, 1.0, 2)), glyphs=1)  # fmt: skip


def digits(lattice: Lattice, rows: list[list[float]], rejected: list[bool]) -> list[int]:
    """The inputs `choose` reads as digits."""
    return [pick.index for pick in choose(lattice, rows, rejected) if pick.digit]


def test_choose_splits_a_rejected_pair_into_two_sure_digits() -> None:
    rows = [probs(None), probs(1), probs(2)]
    assert digits(pair_lattice(), rows, [True, False, False]) == [1, 2]


def test_choose_keeps_a_sure_digit_whole_over_two_unsure_halves() -> None:
    rows = [probs(0, 0.99), probs(1, 0.5), probs(1, 0.5)]
    narrow = Lattice((2,), (Span(0, 0, 2, 0.8, 1.0, 0), *pair_lattice().spans[1:]), 1)
    assert digits(narrow, rows, [False, False, False]) == [0]


def test_choose_charges_implausible_widths() -> None:
    # The whole reads as a sure 8, but it is 1.6 rows wide: two digits read as well win.
    rows = [probs(8, 0.99), probs(3, 0.9), probs(5, 0.9)]
    assert digits(pair_lattice(), rows, [False, False, False]) == [1, 2]


def test_choose_drops_a_dash_and_a_ten_class_model_drops_nothing() -> None:
    lattice = Lattice((3,), tuple(Span(0, i, i + 1, 0.6, 1.0, i) for i in range(3)), 3)
    rows = [probs(4), probs(None), probs(2)]
    picked = choose(lattice, rows, [False, True, False])
    assert picked == [Pick(0, True), Pick(1, False), Pick(2, True)]
    ten = [r[:10] for r in [probs(4), probs(7, 0.3), probs(2)]]
    assert digits(lattice, ten, [False, False, False]) == [0, 1, 2]


# ---------------------------------------------------------------- the read stage


def glyph(x0: int, row: int = 0) -> Glyph:
    return Glyph(np.zeros((28, 28), np.float32), (x0, 0, x0 + 10, 20), row)


def test_read_takes_the_lattices_digits() -> None:
    scan = Scan((glyph(0),), candidates=(glyph(0), glyph(10)), lattice=pair_lattice())
    # Geometry's one glyph reads as an unsure 8, 1.6 rows wide; its halves as a sure 1 and 7.
    answer = read(scan, [probs(8, 0.6), probs(1), probs(7)])
    assert answer.kind == "number"
    assert answer.number == "17"
    assert [d.box for d in answer.digits] == [(0, 0, 10, 20), (10, 0, 20, 20)]


def test_read_keeps_geometrys_refusal_of_a_word() -> None:
    scan = Scan((glyph(0), glyph(20), glyph(40)), candidates=(glyph(0),),
                lattice=Lattice((3,), (Span(0, 0, 2, 0.9, 1.0, 3),), 3))  # fmt: skip
    rows = [probs(None), probs(None), probs(1), probs(4)]
    assert read(scan, rows).kind == "not_a_digit"


def test_read_wants_a_row_per_input() -> None:
    scan = Scan((glyph(0),), candidates=(glyph(10),), lattice=pair_lattice())
    with pytest.raises(ValueError, match="probability rows"):
        read(scan, [probs(1)])


# ---------------------------------------------------------------- through read_gray


def paper(digit: np.ndarray, size: int = 100) -> np.ndarray:
    """An MNIST digit as dark ink on white paper at `size` px, uint8."""
    return 255 - np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))


def test_read_gray_a_plain_digit_has_no_candidates(mnist_sample) -> None:
    images, _ = mnist_sample
    assert read_gray(images[0].astype(np.float32) / 255).candidates == ()
    page = np.full((140, 140), 255, np.uint8)
    page[20:120, 20:120] = paper(images[0])
    found = scan(png_bytes(page), LIMITS)
    assert len(found.glyphs) == 1
    assert found.candidates == ()
    assert found.lattice is None


def test_read_gray_offers_candidates_for_digits_that_touch(mnist_sample) -> None:
    images, _ = mnist_sample
    page = np.full((140, 220), 255, np.uint8)  # strokes touch: geometry's split cuts them
    for x, d in ((20, images[0]), (70, images[2])):
        page[20:120, x : x + 100] = np.minimum(page[20:120, x : x + 100], paper(d))
    found = scan(png_bytes(page), LIMITS)
    assert found.lattice is not None
    assert found.candidates
    assert len(found.inputs) == len(found.glyphs) + len(found.candidates)
    assert max(s.index for s in found.lattice.spans) == len(found.inputs) - 1
    assert all(g.pixels.shape == (28, 28) for g in found.inputs)
    assert scan(png_bytes(page), LIMITS, one_digit=True).candidates == ()
