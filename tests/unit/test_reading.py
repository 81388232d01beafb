"""The per-file decision: digit, number or not a digit, from a scan and model rows."""

from __future__ import annotations

import numpy as np
import pytest

from service.vision.preprocess import Glyph, Scan
from service.vision.reading import read


def glyph(x0: int, row: int = 0, tall: int = 20) -> Glyph:
    return Glyph(np.zeros((28, 28), np.float32), (x0, 10 - tall // 2, x0 + 10, 10 + tall // 2), row)


def one_hot(digit: int, p: float = 0.9, classes: int = 10) -> list[float]:
    row = [(1 - p) / (classes - 1)] * classes
    row[digit] = p
    return row


def test_read_scan_without_glyphs_is_not_a_digit_with_its_reason() -> None:
    r = read(Scan((), "blank: no ink in the image"), [])
    assert (r.kind, r.digit, r.number, r.confidence) == ("not_a_digit", None, None, None)
    assert r.reason == "blank: no ink in the image"


def test_read_one_glyph_is_a_digit() -> None:
    r = read(Scan((glyph(0),)), [one_hot(7, 0.8)])
    assert (r.kind, r.digit, r.number) == ("digit", 7, "7")
    assert r.confidence == pytest.approx(0.8)
    assert r.reason is None


def test_read_glyphs_in_rows_make_a_number_with_newlines() -> None:
    scan = Scan((glyph(0), glyph(20), glyph(0, row=1), glyph(20, row=1)))
    rows = [one_hot(2), one_hot(0), one_hot(2), one_hot(6)]
    r = read(scan, rows)
    assert (r.kind, r.digit, r.number) == ("number", None, "20\n26")
    assert r.confidence == pytest.approx(0.9**4)
    assert [d.box for d in r.digits] == [g.box for g in scan.glyphs]


def test_read_ten_class_model_never_rejects() -> None:
    r = read(Scan((glyph(0),)), [[0.1] * 10])
    assert r.kind == "digit"


@pytest.mark.parametrize(
    ("p_reject", "threshold", "kind"),
    [(0.6, None, "not_a_digit"), (0.05, None, "digit"), (0.05, 0.04, "not_a_digit")],
)
def test_read_eleven_class_model_rejects_by_class_or_threshold(
    p_reject: float, threshold: float | None, kind: str
) -> None:
    row = [(1 - p_reject) / 10] * 10 + [p_reject]
    row[4] += 0.001
    r = read(Scan((glyph(0),)), [row], threshold)
    assert r.kind == kind
    if kind == "not_a_digit":
        assert r.digit is None
        assert r.reason


def test_read_rejected_glyphs_drop_out_of_a_number() -> None:
    dash = [0.0] * 10 + [1.0]
    r = read(Scan((glyph(0), glyph(20, tall=4), glyph(40))), [one_hot(3, classes=11), dash,
                                                              one_hot(1, classes=11)])  # fmt: skip
    assert (r.kind, r.number) == ("number", "31")


def test_read_a_rejected_mark_as_tall_as_the_digits_makes_a_word() -> None:
    """ "hello": h and e are rejected, l, l and o read as 1, 1, 0; the file is a word."""
    letter = [0.0] * 10 + [1.0]
    marks = Scan(tuple(glyph(20 * i) for i in range(5)))
    rows = [letter, letter, one_hot(1, classes=11), one_hot(1, classes=11), one_hot(0, classes=11)]
    r = read(marks, rows)
    assert (r.kind, r.number) == ("not_a_digit", None)
    assert r.reason == "letters among its marks: a word, not a number"


def test_read_mostly_rejected_glyphs_make_the_file_not_a_digit() -> None:
    letter = [0.0] * 10 + [1.0]
    word = Scan(tuple(glyph(20 * i) for i in range(4)))
    r = read(word, [letter, one_hot(1, classes=11), letter, one_hot(7, classes=11)])
    assert (r.kind, r.digit, r.number) == ("not_a_digit", None, None)
    assert r.reason == "most of its marks are not digits"
    dashed = Scan((glyph(0, tall=4), *word.glyphs[1:]))
    r = read(
        dashed, [letter, one_hot(1, classes=11), one_hot(2, classes=11), one_hot(7, classes=11)]
    )
    assert (r.kind, r.number) == ("number", "127")
