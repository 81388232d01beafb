"""Stage 6, read: what one uploaded file says (a digit, a number, or not a digit), decided
in one place from its scan and the model's probabilities for each of its glyphs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from service.vision.numbers import NOT_A_DIGIT, NUMBERS, NumberParams, Pick, choose
from service.vision.preprocess import Glyph, Scan

Kind = Literal["digit", "number", "not_a_digit"]

__all__ = ["NOT_A_DIGIT", "READ", "DigitRead", "Kind", "ReadParams", "Reading", "read"]


@dataclass(frozen=True)
class DigitRead:
    """One digit of a number: what it is, how sure, and where."""

    digit: int
    confidence: float
    box: tuple[int, int, int, int]
    row: int
    probabilities: list[float]
    glyph: Glyph


@dataclass(frozen=True)
class Reading:
    """One file's answer. `digit` is set only for kind "digit", `number` for "number" (and
    "digit"), `reason` only for "not_a_digit"."""

    kind: Kind
    digits: tuple[DigitRead, ...] = ()
    reason: str | None = None

    @property
    def digit(self) -> int | None:
        return self.digits[0].digit if self.kind == "digit" else None

    @property
    def confidence(self) -> float | None:
        """The chance the whole answer is right: one digit's probability, or the product of
        a number's (each digit must be right)."""
        if not self.digits:
            return None
        product = 1.0
        for d in self.digits:
            product *= d.confidence
        return product

    @property
    def number(self) -> str | None:
        if not self.digits:
            return None
        text = ""
        for i, d in enumerate(self.digits):
            if i and d.row != self.digits[i - 1].row:
                text += "\n"
            text += str(d.digit)
        return text


def _rejected(row: list[float], reject_threshold: float | None) -> bool:
    if len(row) <= NOT_A_DIGIT:
        return False  # a 10-class model cannot say "not a digit"
    if reject_threshold is not None:
        return row[NOT_A_DIGIT] >= reject_threshold
    return max(range(len(row)), key=row.__getitem__) == NOT_A_DIGIT


@dataclass(frozen=True)
class ReadParams:
    """The rules of the read stage; a `bool` field turns one off (the ablation)."""

    #: The word rules apply to files of at least this many marks.
    word_marks: int = 3
    #: Half the marks or more rejected: the few that pass are letters of a word.
    mostly_rejected: bool = True
    #: A rejected mark at least `letter_height` of the digits' median height is a letter
    #: (a dash, a dot or a comma is far shorter): the file is a word.
    tall_letter: bool = True
    letter_height: float = 0.75
    #: The costs of choosing a number's digits among its candidates (`service.vision.numbers`).
    numbers: NumberParams = field(default=NUMBERS)


READ = ReadParams()


def _tall_letter(glyphs: tuple[Glyph, ...], digits: list[DigitRead], share: float) -> bool:
    """Whether a mark the model rejected is about as tall as the digits it read."""
    kept = {id(d.glyph) for d in digits}
    heights = sorted(d.box[3] - d.box[1] for d in digits)
    typical = heights[len(heights) // 2]
    return any(g.box[3] - g.box[1] >= share * typical for g in glyphs if id(g) not in kept)


def _digit(glyph: Glyph, row: list[float]) -> DigitRead:
    # The answer is a digit: its probabilities are the ten digit columns, renormalised
    # (the served confidence, calibrated on real digits; docs/accuracy.md).
    total = sum(row[:10]) or 1.0
    digit_row = [p / total for p in row[:10]]
    digit = max(range(10), key=digit_row.__getitem__)  # first maximum, as torch.argmax
    return DigitRead(digit, digit_row[digit], glyph.box, glyph.row, digit_row, glyph)


def _marks(
    scan: Scan, rows: list[list[float]], reject_threshold: float | None, p: ReadParams
) -> tuple[list[Pick], list[DigitRead]]:
    """The file's marks and the digits among them: geometry's glyphs, or with a lattice
    the candidates on its cheapest path."""
    refused = [_rejected(row, reject_threshold) for row in rows]
    if scan.lattice is None:
        picked = [Pick(i, not refused[i]) for i in range(len(scan.glyphs))]
    else:
        picked = choose(scan.lattice, rows, refused, p.numbers)
    inputs = scan.inputs
    return picked, [_digit(inputs[m.index], rows[m.index]) for m in picked if m.digit]


def read(
    scan: Scan,
    rows: list[list[float]],
    reject_threshold: float | None = None,
    p: ReadParams = READ,
) -> Reading:
    """The reading of one file from its scan and one probability row per input (its glyphs,
    then its candidates).

    The file's marks are its glyphs, or where the scan has a lattice of candidates (a
    number), the candidates on the lattice's cheapest path (`service.vision.numbers`).
    Marks the model calls "not a digit" (a dash, a letter) drop out of a number. A file
    left with no digit is "not_a_digit", and so is one of three or more marks where such
    marks are half or more, or where one is as tall as the digits (a letter: a word).
    With one digit it is a "digit", with more a "number".
    """
    if not scan.glyphs:
        return Reading("not_a_digit", reason=scan.reason or "nothing to read")
    if len(rows) != len(scan.inputs):
        raise ValueError(f"{len(rows)} probability rows for {len(scan.inputs)} inputs")
    marks, digits = _marks(scan, rows, reject_threshold, p)
    if not digits:
        reason = "the model reads it as not a digit"
        return Reading("not_a_digit", reason=reason)
    # Marks are counted in geometry's glyphs: a dropped candidate that joins three weighs
    # as much as three dropped glyphs (with geometry alone, every mark is one glyph).
    rejected = sum(m.glyphs for m in marks if not m.digit)
    many = sum(m.glyphs for m in marks) >= p.word_marks
    if p.mostly_rejected and many and rejected >= len(digits):
        # A dash or a slash drops out of a number; when half the marks or more of three or
        # more are not digits, the few that pass are letters of a word or parts of a
        # drawing that happen to look like digits. (Two marks are often one digit broken
        # in two, a small bitmap's thin stroke: the piece that reads as a digit stands.)
        return Reading("not_a_digit", reason="most of its marks are not digits")
    glyphs = tuple(scan.inputs[m.index] for m in marks)
    if p.tall_letter and many and rejected and _tall_letter(glyphs, digits, p.letter_height):
        # "hello" keeps l, l and o, which read as 1, 1 and 0: a mark as tall as the digits
        # that is not one is a letter (a dash, a dot or a comma is far shorter).
        return Reading("not_a_digit", reason="letters among its marks: a word, not a number")
    return Reading("digit" if len(digits) == 1 else "number", tuple(digits))
