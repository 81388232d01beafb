"""Stage 4, glyphs: which ink makes each digit. Components grouped into digits (a 5's
detached bar), digits into rows, far blobs and specks dropped, what the crop cut off a
neighbour dropped, touching digits split.

`find_glyphs(page, one_digit)` returns rows (top to bottom) of `Part`s (left to right) in
the page's pixels; [] when nothing is left to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.vision.ink import EIGHT
from service.vision.page import Page


@dataclass(frozen=True)
class GlyphParams:
    """Thresholds of the glyph stage (shares of sizes); a `bool` field turns a rule off."""

    #: A component counts with `min_area` of the biggest's ink and `min_height` of the tallest.
    min_area: float = 0.04
    min_height: float = 0.2
    #: After grouping, a digit is `group_height` of the tallest or `group_area` of the biggest.
    group_height: float = 0.35
    group_area: float = 0.25
    #: Pieces of one digit: stacked (overlapping `stack_overlap` of the narrower, at most
    #: `stack_gap` of the height apart), or touching side by side while no wider than tall.
    merge_stacked: bool = True
    stack_overlap: float = 0.5
    stack_gap: float = 0.25
    pair_height: float = 0.75
    pair_overlap: float = 0.2
    touch_slack: float = 0.03
    #: What the crop cut: a line along an edge, or a neighbour's piece at the left or right.
    cut_fragments: bool = True
    fragment_edge: float = 0.03
    fragment_cut: float = 0.01
    fragment_thin: float = 0.25
    fragment_length: float = 0.7
    fragment_short: float = 0.8
    fragment_stroke: float = 0.35
    #: Glyphs on one row overlap by `row_overlap` of the shorter's height.
    row_overlap: float = 0.4
    #: The main chain: gaps up to `reach` row heights, or `even_reach` times the usual gap
    #: when `even_gaps` or more; rows between `row_low` and `row_high` of its height, at most
    #: `row_gap` heights apart.
    keep_connected: bool = True
    reach: float = 2.0
    even_gaps: int = 3
    even_reach: float = 1.6
    row_low: float = 0.5
    row_high: float = 2.0
    row_gap: float = 1.5
    #: Touching digits: a glyph wider than `wide_alone` (one glyph) or `wide` (in a row)
    #: times the row's height is cut into pieces about `piece_width` heights wide, at the
    #: column of least ink within `cut_reach` of an even cut.
    split: bool = True
    wide_alone: float = 1.6
    wide: float = 1.15
    piece_width: float = 0.7
    max_pieces: int = 6
    cut_reach: float = 0.2
    #: One digit: the largest component and sizeable ones within `near` of its size.
    near: float = 0.35
    #: A glyph smaller than `speck` of the image (at least `min_speck` px) is a speck.
    speck: float = 0.008
    min_speck: int = 4


GLYPHS = GlyphParams()


@dataclass(frozen=True)
class Part:
    """One digit's place in the mask: its box [x0, y0, x1, y1) and its own ink."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool, the box's shape: this digit's pixels only


def find_glyphs(page: Page, one_digit: bool = False, p: GlyphParams = GLYPHS) -> list[list[Part]]:
    """Rows of digits in the page's writing (see the module); `one_digit` reads it as one."""
    mask = page.mask
    rows = [] if one_digit else find_digits(mask, page.image, p)
    if sum(len(r) for r in rows) <= 1:
        digit = _select_digit(mask, p)
        ys, xs = np.nonzero(digit)
        rows = [] if ys.size == 0 else [[_whole(digit, ys, xs)]]
    speck = max(p.min_speck, p.speck * max(mask.shape))
    rows = [[g for g in r if max(g.box[2] - g.box[0], g.box[3] - g.box[1]) >= speck] for r in rows]
    return [r for r in rows if r]


def _whole(digit: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Part:
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Part((x0, y0, x1, y1), digit[y0:y1, x0:x1])


# ---------------------------------------------------------------- one digit


def _select_digit(mask: np.ndarray, p: GlyphParams) -> np.ndarray:
    """Keep the largest ink component and sizeable ones near it; drop specks and far blobs.
    The reading of an image known to hold one digit."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count <= 1:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    order = np.argsort(areas)[::-1]
    main = int(order[0])
    y0, y1 = boxes[main][0].start, boxes[main][0].stop
    x0, x1 = boxes[main][1].start, boxes[main][1].stop
    keep = [main]
    changed = True
    while changed:
        changed = False
        margin = p.near * max(y1 - y0, x1 - x0)
        for idx in order[1:]:
            i = int(idx)
            if i in keep or areas[i] < max(p.min_area * areas[main], 2):
                continue
            by, bx = boxes[i]
            if (
                by.start < y1 + margin
                and by.stop > y0 - margin
                and bx.start < x1 + margin
                and bx.stop > x0 - margin
            ):
                keep.append(i)
                y0, y1 = min(y0, by.start), max(y1, by.stop)
                x0, x1 = min(x0, bx.start), max(x1, bx.stop)
                changed = True
    return np.isin(labels, np.asarray(keep) + 1)


# ---------------------------------------------------------------- several digits


@dataclass
class _Group:
    x0: int
    y0: int
    x1: int
    y1: int
    ids: list[int]
    area: int

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    def absorb(self, other: _Group) -> None:
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        self.ids += other.ids
        self.area += other.area


def find_digits(
    mask: np.ndarray, image: tuple[int, int, int, int], p: GlyphParams = GLYPHS
) -> list[list[Part]]:
    """Rows (top to bottom) of digits (left to right) in an ink mask; [] when it has none.

    Components stacked closely above one another are one digit (a 5's detached bar);
    digits side by side with similar heights and modest gaps form a row; far blobs and
    specks are dropped; a digit much wider than its row is tall is split at ink minima.
    """
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    biggest = int(areas.max())
    tallest = max(by.stop - by.start for by, _ in boxes)
    groups = [
        _Group(bx.start, by.start, bx.stop, by.stop, [i + 1], int(areas[i]))
        for i, (by, bx) in enumerate(boxes)
        if areas[i] >= max(p.min_area * biggest, 2)
        and (by.stop - by.start) >= p.min_height * tallest
    ]
    if not groups:
        return []  # only single-pixel specks: nothing a digit is made of
    if p.merge_stacked:
        groups = _merge_stacked(groups, p)
    big = max(g.h for g in groups)
    groups = [g for g in groups if g.h >= p.group_height * big or g.area >= p.group_area * biggest]
    if len(groups) > 1 and p.cut_fragments:
        groups = _drop_cut_fragments(groups, image, p)
    rows = _rows(groups, p)
    if p.keep_connected:
        rows = _keep_connected(rows, p)
    parts: list[list[Part]] = []
    total = sum(len(r) for r in rows)
    for row in rows:
        row_h = float(np.median([g.h for g in row]))
        out: list[Part] = []
        for g in row:
            own = np.isin(labels[g.y0 : g.y1, g.x0 : g.x1], g.ids)
            wide = p.wide_alone if total == 1 else p.wide
            if p.split and g.w > wide * max(row_h, g.h):
                out += _split(own, g, max(row_h, g.h), p)
            else:
                out.append(Part((g.x0, g.y0, g.x1, g.y1), own))
        parts.append(out)
    return parts


def _drop_cut_fragments(
    groups: list[_Group], image: tuple[int, int, int, int], p: GlyphParams
) -> list[_Group]:
    """Drop what the crop cut: a thin line along an edge (the rest of a cell's frame), or a
    neighbour's piece at the left or right edge, shorter than the digits inside."""
    x0, y0, x1, y1 = image
    edge = p.fragment_edge * max(x1 - x0, y1 - y0) + 1
    # The crop cuts a neighbour: its ink runs into the edge. A digit near it stays clear.
    cut = p.fragment_cut * max(x1 - x0, y1 - y0) + 1
    inside = [g for g in groups if g.x0 > x0 + edge and g.x1 < x1 - edge]
    tallest_inside = max((g.h for g in inside), default=0)
    thin, long = p.fragment_thin, p.fragment_length
    kept = []
    for g in groups:
        at_side = g.x0 <= x0 + edge or g.x1 >= x1 - edge
        at_top = g.y0 <= y0 + edge or g.y1 >= y1 - edge
        thin_line = (at_side and g.w <= thin * g.h and g.h >= long * (y1 - y0)) or (
            at_top and g.h <= thin * g.w and g.w >= long * (x1 - x0)
        )
        piece = (g.x0 <= x0 + cut or g.x1 >= x1 - cut) and g.h < p.fragment_short * tallest_inside
        at_end = g.y0 <= y0 + cut or g.y1 >= y1 - cut
        if not (thin_line or piece or _ruled_fragment(g, groups, at_end, p)):
            kept.append(g)
    return kept or groups


def _ruled_fragment(g: _Group, groups: list[_Group], cut: bool, p: GlyphParams) -> bool:
    """A piece of a printed line: straight, upright, shorter than the digits, and cut by
    the crop's top or bottom or much thinner than their pen strokes (a digit's ink per row
    of height is at least one stroke wide; a 1 written with the same pen is as wide)."""
    others = [o for o in groups if o is not g]
    if g.w > p.fragment_thin * g.h or not others:
        return False
    if g.h >= p.fragment_short * max(o.h for o in others):
        return False
    ink_per_row = float(np.median([o.area / o.h for o in others]))
    return cut or g.w < p.fragment_stroke * ink_per_row


def _merge_stacked(groups: list[_Group], p: GlyphParams) -> list[_Group]:
    """Merge pieces of one digit: stacked closely, or touching side by side while together
    no wider than tall."""
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
                gap_y = max(a.y0, b.y0) - min(a.y1, b.y1)
                tall = max(a.h, b.h)
                stacked = overlap_x >= p.stack_overlap * min(a.w, b.w) and gap_y <= (
                    p.stack_gap * tall
                )
                # Two narrow digits side by side ("11", "17") are each nearly as tall as
                # the pair and overlap little; a digit's pieces rarely both are.
                pair = min(a.h, b.h) >= p.pair_height * tall and overlap_x <= (
                    p.pair_overlap * min(a.w, b.w)
                )
                touching = (
                    overlap_x >= -p.touch_slack * tall
                    and gap_y < 0
                    and max(a.x1, b.x1) - min(a.x0, b.x0) <= tall
                    and not pair
                )
                if stacked or touching:
                    a.absorb(b)
                    groups.remove(b)
                    merged = True
                    break
            if merged:
                break
    return groups


def _rows(groups: list[_Group], p: GlyphParams) -> list[list[_Group]]:
    rows: list[list[_Group]] = []
    for g in sorted(groups, key=lambda g: (g.y0 + g.y1) / 2):
        for row in rows:
            top, bottom = min(r.y0 for r in row), max(r.y1 for r in row)
            if min(bottom, g.y1) - max(top, g.y0) >= p.row_overlap * min(g.h, bottom - top):
                row.append(g)
                break
        else:
            rows.append([g])
    return [sorted(row, key=lambda g: g.x0) for row in rows]


def _keep_connected(rows: list[list[_Group]], p: GlyphParams) -> list[list[_Group]]:
    """The main row's chain of close digits around its biggest, and rows close to it."""
    chains = []
    for row in rows:
        row_h = max(float(np.median([g.h for g in row])), 1.0)
        gaps = [b.x0 - a.x1 for a, b in zip(row, row[1:], strict=False)]
        reach = p.reach * row_h
        if len(gaps) >= p.even_gaps:
            # Digits written far apart are still one number when evenly spaced: a gap
            # counts as a break only when much wider than the row's usual one.
            reach = max(reach, p.even_reach * float(np.sort(gaps)[(len(gaps) - 1) // 2]))
        seed = max(range(len(row)), key=lambda i: row[i].area)
        lo = hi = seed
        while lo > 0 and gaps[lo - 1] <= reach:
            lo -= 1
        while hi < len(row) - 1 and gaps[hi] <= reach:
            hi += 1
        chains.append(row[lo : hi + 1])
    main = max(range(len(chains)), key=lambda i: sum(g.area for g in chains[i]))
    main_h = float(np.median([g.h for g in chains[main]]))
    kept = [chains[main]]
    for step in (-1, 1):  # walk up, then down, while the rows stay close and alike
        i = main
        while 0 <= i + step < len(chains):
            nxt, cur = chains[i + step], chains[i]
            nxt_h = float(np.median([g.h for g in nxt]))
            gap = (
                min(g.y0 for g in cur) - max(g.y1 for g in nxt)
                if step < 0
                else min(g.y0 for g in nxt) - max(g.y1 for g in cur)
            )
            if (
                nxt_h < p.row_low * main_h
                or nxt_h > p.row_high * main_h
                or gap > p.row_gap * main_h
            ):
                break
            kept.insert(0, nxt) if step < 0 else kept.append(nxt)
            i += step
    return kept


def _split(own: np.ndarray, g: _Group, row_h: float, p: GlyphParams) -> list[Part]:
    """Cut touching digits at the columns with least ink near the even cuts."""
    pieces = max(2, min(p.max_pieces, round(g.w / (p.piece_width * row_h))))
    column = own.sum(axis=0)
    cuts = [0]
    for k in range(1, pieces):
        centre = round(k * g.w / pieces)
        reach = max(1, round(p.cut_reach * g.w / pieces))
        lo, hi = max(centre - reach, cuts[-1] + 1), min(centre + reach, g.w - 1)
        if lo >= hi:
            continue
        cuts.append(lo + int(np.argmin(column[lo:hi])))
    cuts.append(g.w)
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        piece = own[:, a:b]
        ys = np.flatnonzero(piece.any(axis=1))
        if ys.size == 0:
            continue
        parts.append(
            Part((g.x0 + a, g.y0 + int(ys[0]), g.x0 + b, g.y0 + int(ys[-1]) + 1),
                 piece[ys[0] : ys[-1] + 1])
        )  # fmt: skip
    return parts
