"""Numbers by recognition: the candidate glyphs of each row, and the reading the model's
scores of them make best.

Geometry (stage 4) cuts a row into glyphs by its gaps and one split rule; where digits
touch, overlap or break, that guess is often wrong. This stage over-segments each row into
primitive pieces (geometry's glyphs, the wide ones also cut at narrow necks of their ink and
near even cuts) and offers every run of 1 to `max_span` consecutive, close pieces as a
candidate glyph. The data plane scores all of them in the batch it already forms; the read
stage (`choose`) takes the cheapest path through each row: a candidate read as a digit costs
-log P(digit) plus a cost per digit, per glyph of geometry's it joins and for an
implausible width or height; one dropped as "not a digit" (only where geometry's glyphs
begin and end) a cost per glyph plus -log P(not a digit). Geometry's own reading is always
one of the paths.

`over_segment(rows, p)` returns the extra candidates (`Part`s in the page's pixels) and the
`Lattice` that says which pieces each candidate covers, or None where geometry's reading
stands alone: one glyph no wider than geometry leaves one (a plain digit costs nothing
more), nothing beyond geometry's glyphs to choose from, or more candidates than
`max_candidates` (the work per image is bounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.vision.glyphs import Part

#: The model's class for "not a digit" (an 11-class model); a 10-class model has none.
NOT_A_DIGIT = 10


@dataclass(frozen=True)
class NumberParams:
    """Thresholds and costs of the lattice (sizes are shares of the row's height)."""

    #: Off: geometry's glyphs are the reading (the ablation's simplest form).
    lattice: bool = True
    #: At most `max_candidates` candidate glyphs per image, geometry's included; more and
    #: geometry's reading stands (bounds the normalising and the model's batch).
    max_candidates: int = 48
    #: A candidate joins at most `max_span` consecutive pieces (geometry's own glyphs are
    #: candidates whatever their span).
    max_span: int = 3
    #: A lone glyph is over-segmented only when wider than `lone_wide` x its height (as
    #: wide as geometry's own split rule leaves one): a plain digit keeps geometry's
    #: reading at geometry's cost.
    lone_wide: float = 1.6
    #: A glyph wider than `cut_wide` x the row's height gets candidate cuts, at columns of
    #: locally least ink that are one run no thicker than `neck_stroke` strokes, or that hold
    #: at most `neck_share` of the glyph's median column, and at the least inked column
    #: within `cut_reach` of each even cut into 2 to w / `piece_width` pieces; at most
    #: `max_cuts`, each piece at least `cut_margin` wide.
    cut_wide: float = 0.9
    neck_stroke: float = 1.6
    neck_share: float = 0.5
    max_cuts: int = 4
    cut_margin: float = 0.3
    piece_width: float = 0.6
    cut_reach: float = 0.2
    #: Pieces further apart than `join_gap` are never one glyph (a broken digit's pieces
    #: overlap or nearly touch; digits written apart are apart).
    join_gap: float = 0.1
    #: Costs (in nats, like -log P): dropping a candidate as not a digit, per glyph of
    #: geometry's it covers (dropping two glyphs at once costs as much as one by one); each
    #: digit read (against reading a digit's halves as two); per unit of width over
    #: `max_width` and of height under `min_height`; reading glyphs geometry kept apart as
    #: one digit, per glyph joined.
    drop_cost: float = 3.0
    digit_cost: float = 0.5
    join_cost: float = 1.0
    max_width: float = 1.2
    width_cost: float = 8.0
    min_height: float = 0.5
    height_cost: float = 4.0
    #: A candidate that is not one of geometry's glyphs reads as a digit only when the model
    #: gives that digit at least `min_digit` (an unsure reading stays geometry's).
    min_digit: float = 0.5
    #: Probabilities are floored at `floor` before the log.
    floor: float = 1e-6


NUMBERS = NumberParams()


@dataclass(frozen=True)
class Span:
    """One candidate: pieces [start, end) of row `row`, its size in row heights, and its
    glyph's position in the scan's inputs (geometry's glyphs first, then the extra ones)."""

    row: int
    start: int
    end: int
    width: float
    height: float
    index: int
    #: Whether it begins and ends where geometry's glyphs do: only such a candidate may be
    #: dropped as not a digit (a cut that leaves a piece of a glyph over is a wrong cut).
    whole: bool = True
    #: How many of geometry's glyphs it covers (in part or whole).
    glyphs: int = 1


@dataclass(frozen=True)
class Lattice:
    """Every row's piece count, every candidate (see the module), and how many of the
    inputs are geometry's glyphs (the candidates' inputs follow them)."""

    pieces: tuple[int, ...]
    spans: tuple[Span, ...]
    glyphs: int


@dataclass(frozen=True)
class Pick:
    """One candidate on the chosen path: its input, whether it reads as a digit (else it
    is dropped as not one), and how many of geometry's glyphs it covers."""

    index: int
    digit: bool
    glyphs: int = 1


@dataclass(frozen=True)
class _Piece:
    x0: int
    x1: int
    part: int  # geometry's glyph (flattened index) this piece was cut from


def over_segment(
    rows: list[list[Part]], p: NumberParams = NUMBERS
) -> tuple[list[tuple[int, Part]], Lattice] | None:
    """The extra candidate glyphs ((row, part) in the page's pixels) and the lattice of
    geometry's `rows`, or None where geometry's reading stands (see the module)."""
    parts = [part for row in rows for part in row]
    if not p.lattice or not parts:
        return None
    if len(parts) == 1:
        x0, y0, x1, y1 = parts[0].box
        if x1 - x0 <= p.lone_wide * (y1 - y0):
            return None
    extra: list[tuple[int, Part]] = []
    spans: list[Span] = []
    sizes: list[int] = []
    first = 0
    for r, row in enumerate(rows):
        row_h = max(float(np.median([g.box[3] - g.box[1] for g in row])), 1.0)
        pieces: list[_Piece] = []
        for k, g in enumerate(row):
            pieces += _cut(g, first + k, row_h, p)
        sizes.append(len(pieces))
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces) + 1):
                run = pieces[i:j]
                whole = _whole_part(run, parts)
                if whole is None and (j - i > p.max_span or _gap(run) > p.join_gap * row_h):
                    continue
                if whole is not None:
                    index, part = whole, parts[whole]
                else:
                    part = _join(run, parts)
                    index = len(parts) + len(extra)
                    extra.append((r, part))
                bx0, by0, bx1, by1 = part.box
                bounds = (
                    run[0].x0 == parts[run[0].part].box[0]
                    and run[-1].x1 == parts[run[-1].part].box[2]
                )
                size = ((bx1 - bx0) / row_h, (by1 - by0) / row_h)
                covered = len({piece.part for piece in run})
                spans.append(Span(r, i, j, *size, index, bounds, covered))
                if len(spans) > p.max_candidates:
                    return None
        first += len(row)
    if not extra:
        return None  # nothing to choose: geometry's glyphs are every candidate
    return extra, Lattice(tuple(sizes), tuple(spans), len(parts))


def _cut(g: Part, index: int, row_h: float, p: NumberParams) -> list[_Piece]:
    """Geometry's glyph `g` as pieces: whole, or cut at its narrow necks when wide."""
    x0, _, x1, _ = g.box
    w = x1 - x0
    if w <= p.cut_wide * max(row_h, g.box[3] - g.box[1]):
        return [_Piece(x0, x1, index)]
    mask = g.mask
    column = mask.sum(axis=0).astype(np.float64)
    runs = (np.diff(mask.astype(np.int8), axis=0, prepend=0) == 1).sum(axis=0)
    stroke = _stroke_width(mask)
    inked = column[column > 0]
    median = float(np.median(inked)) if inked.size else 0.0
    margin = max(1, math.ceil(p.cut_margin * row_h))
    smooth = np.convolve(column, np.ones(3) / 3, mode="same")
    options = []
    for c in range(margin, w - margin + 1):
        if column[c] == 0:
            continue
        local = smooth[c] <= smooth[max(c - 1, 0)] and smooth[c] <= smooth[min(c + 1, w - 1)]
        neck = runs[c] == 1 and column[c] <= p.neck_stroke * stroke
        if local and (neck or column[c] <= p.neck_share * median):
            options.append(c)
    # Overlapping digits have no neck: also the column of least ink near each even cut
    # into pieces about `piece_width` wide (geometry's split, but as candidates only).
    count = max(2, round(w / (p.piece_width * row_h)))
    for n in range(2, count + 1):
        for k in range(1, n):
            lo = max(margin, round((k - p.cut_reach) * w / n))
            hi = min(w - margin, round((k + p.cut_reach) * w / n))
            if lo < hi:
                options.append(lo + int(np.argmin(column[lo : hi + 1])))
    cuts: list[int] = []
    for c in sorted(set(options), key=lambda c: (column[c], c)):
        if len(cuts) == p.max_cuts:
            break
        if all(abs(c - o) >= margin for o in cuts):
            cuts.append(c)
    bounds = [0, *sorted(cuts), w]
    return [_Piece(x0 + a, x0 + b, index) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the outline (as normalise's)."""
    area = int(mask.sum())
    outline = area - int(ndimage.binary_erosion(mask).sum())
    return 2.0 * area / max(outline, 1)


def _gap(run: list[_Piece]) -> int:
    """The widest gap between consecutive pieces of `run` (0 or less where they touch)."""
    return max((b.x0 - a.x1 for a, b in zip(run, run[1:], strict=False)), default=0)


def _whole_part(run: list[_Piece], parts: list[Part]) -> int | None:
    """Geometry's glyph when `run` is exactly all of that glyph's pieces, else None."""
    g = run[0].part
    if run[-1].part != g:
        return None
    box = parts[g].box
    return g if (run[0].x0, run[-1].x1) == (box[0], box[2]) else None


def _join(run: list[_Piece], parts: list[Part]) -> Part:
    """The candidate glyph made of `run`: its pieces' ink, boxed tightly."""
    x0, x1 = min(piece.x0 for piece in run), max(piece.x1 for piece in run)
    sources = [parts[i] for i in dict.fromkeys(piece.part for piece in run)]
    y0 = min(s.box[1] for s in sources)
    y1 = max(s.box[3] for s in sources)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for piece in run:
        src = parts[piece.part]
        sx0, sy0 = src.box[0], src.box[1]
        cols = src.mask[:, piece.x0 - sx0 : piece.x1 - sx0]
        mask[sy0 - y0 : sy0 - y0 + cols.shape[0], piece.x0 - x0 : piece.x1 - x0] |= cols
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return Part((x0, y0, x1, y1), mask)
    ty0, ty1, tx0, tx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return Part((x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1), mask[ty0:ty1, tx0:tx1])


def choose(
    lattice: Lattice,
    probs: list[list[float]],
    rejected: list[bool],
    p: NumberParams = NUMBERS,
) -> list[Pick]:
    """The candidates on each row's cheapest path (see the module), in reading order.
    `probs` holds
    one probability row per input, `rejected` whether the read stage calls that input "not
    a digit" (such a candidate can only be dropped)."""
    by_end: dict[tuple[int, int], list[Span]] = {}
    for s in lattice.spans:
        by_end.setdefault((s.row, s.end), []).append(s)
    chosen: list[Pick] = []
    for r, n in enumerate(lattice.pieces):
        best = [0.0] + [math.inf] * n
        back: list[tuple[int, Pick]] = [(0, Pick(-1, False))] * (n + 1)
        for j in range(1, n + 1):
            for s in by_end.get((r, j), []):
                cost, digit = _cost(s, probs[s.index], rejected[s.index], lattice.glyphs, p)
                if best[s.start] + cost < best[j]:
                    best[j] = best[s.start] + cost
                    back[j] = (s.start, Pick(s.index, digit, s.glyphs))
        path: list[Pick] = []
        j = n
        while j > 0 and math.isfinite(best[j]):
            j, pick = back[j]
            path.append(pick)
        chosen += reversed(path)
    return chosen


def _cost(
    s: Span, row: list[float], rejected: bool, extra: int, p: NumberParams
) -> tuple[float, bool]:
    """The cheaper way to read one candidate: (its cost, whether it is read as a digit)."""
    drop = math.inf
    if len(row) > NOT_A_DIGIT and s.whole:
        drop = p.drop_cost * s.glyphs - math.log(max(row[NOT_A_DIGIT], p.floor))
    sure = max(row[:NOT_A_DIGIT])
    if rejected or (s.index >= extra and sure < p.min_digit):
        return drop, False
    shape = p.width_cost * max(0.0, s.width - p.max_width)
    shape += p.height_cost * max(0.0, p.min_height - s.height)
    joined = p.join_cost * (s.glyphs - 1)
    digit = p.digit_cost + joined + shape - math.log(max(sure, p.floor))
    return (digit, True) if digit <= drop else (drop, False)
