"""Stage 3, page structure: what in an ink mask is the page, not the writing. A page
photographed askew is turned straight; ruled lines, frames, rows of form cells, grid lines
and lone underlines are taken out; strokes crossing them are mended; slivers and the
remnants of a frame cut by the crop are dropped.

`clear_page(ink)` returns a `Page`: the (possibly turned) ink, the mask of the writing
alone, the box of the image inside its padding, and the turn for the `BoxMap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.vision.boxes import Turn
from service.vision.ink import EIGHT, Ink

#: Bands of rows (or columns) [a, b) holding a line.
Bands = list[tuple[int, int]]


@dataclass(frozen=True)
class PageParams:
    """Thresholds of the page stage; a `bool` field turns its rule off (the ablation)."""

    # Skew: a ruled or squared page a degree or more askew is turned straight.
    skew: bool = True
    #: Side of the pooled mask the skew is measured on (half that for the rough search),
    #: smallest mask searched, ink pixels sampled, largest tilt tried (degrees).
    skew_side: int = 256
    skew_min_side: int = 160
    skew_points: int = 4000
    max_skew: float = 8.0
    #: A row must hold this share of the page to be a page line; this many make a page
    #: (a digit has at most two long strokes: a 4's bar and stem); at most `skew_thin`
    #: of the side thick.
    skew_span: float = 0.6
    page_lines: int = 3
    skew_thin: float = 0.03
    #: Turned only when the turn makes `skew_gain` more lines straight, by `min_skew` or more.
    skew_gain: int = 2
    min_skew: float = 1.0
    #: A page whose upright rectangle keeps less than this share of a side is not turned.
    turn_keep: float = 0.7

    # Rulings: thin bands spanning `ruling_span` of the page, two or more.
    rulings: bool = True
    ruling_span: float = 0.7
    ruling_thick: float = 0.02

    # Lines in general: gaps bridged along a line (share of the longer side), shortest run.
    line_gap: float = 0.03
    min_run: int = 8
    #: A band of line rows is at most this share of the image thick.
    line_thick: float = 0.1

    # Frames, cells and grids: straight lines along `frame_length` of the image, in
    # combinations a digit does not make (three or more, or a corner at the edges).
    frames: bool = True
    frame_quick: float = 0.5
    frame_length: float = 0.65
    edge: float = 0.15
    structure_lines: int = 3

    # Rows of form cells: two long lines (`cell_length` of the width) `cell_min_gap` apart,
    # joined by two or more straight walls that end at them.
    cells: bool = True
    cell_length: float = 0.5
    cell_min_gap: int = 8
    wall_gap: float = 0.05
    wall_thick: float = 0.1
    min_walls: int = 2

    # Lone lines: a long thin line running past the writing at both ends (an underline).
    lone_lines: bool = True
    lone_quick: float = 0.4
    lone_piece: float = 0.25
    lone_length: float = 0.65
    lone_thick: float = 0.15
    lone_fringe: int = 2
    lone_past: float = 0.05

    # Repairs.
    #: Put back a line's pixels where a stroke crosses it (ink `mend_reach` px either side).
    mend: bool = True
    mend_reach: int = 2
    #: Drop ink lying wholly beside removed lines.
    slivers: bool = True
    #: Keep a bold 0 filling a tight crop whole: "lines" at least `bold` of the side thick
    #: with less than `ring_inside` ink within.
    bold_ring: bool = True
    bold: float = 0.07
    ring_inside: float = 0.01
    #: Drop thin lines along the edges (what is left of a frame), `remnant_long` times longer
    #: than the digits, when the rest holds `remnant_rest` of the ink.
    remnants: bool = True
    remnant_thin: float = 0.25
    remnant_length: float = 0.5
    remnant_min_area: float = 0.04
    remnant_long: float = 1.1
    remnant_rest: float = 0.2


PAGE = PageParams()


@dataclass(frozen=True)
class Page:
    """The writing of one image: `mask` (page structure removed) over `ink`, the box of the
    image inside the padding, and the turn applied (None: upright)."""

    ink: np.ndarray
    mask: np.ndarray
    image: tuple[int, int, int, int]
    turn: Turn | None


def clear_page(ink: Ink, p: PageParams = PAGE) -> Page:
    """The writing of an image's ink: page turned straight, structure taken out."""
    pixels, mask, pad = ink.ink, ink.mask, ink.pad
    turn = None
    if p.skew:
        degrees = page_skew(mask, p)
        turned = _turned(pixels, pad, degrees, p) if degrees else None
        if turned is not None:
            # A ruled or squared page photographed askew: turned straight, its lines run
            # along rows and columns, where they are found and removed.
            pixels, turn = turned
            mask = ink.mask_of(pixels)
    image = (pad, pad, pixels.shape[1] - pad, pixels.shape[0] - pad)
    mask = _remove_structure(mask, p)
    if p.remnants:
        mask = _drop_frame_remnants(mask, image, p)
    return Page(pixels, mask, image, turn)


# ---------------------------------------------------------------- skew


def _turned(
    ink: np.ndarray, pad: int, degrees: float, p: PageParams
) -> tuple[np.ndarray, Turn] | None:
    """`ink` (padded by `pad`) turned by `degrees`, cut to the upright rectangle inside the
    turned page (along its tilted edges, lines are cut short and would pass for 1s) and
    padded again; None for a long strip, whose upright rectangle would lose much of it."""
    c, s = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
    h, w = ink.shape[0] - 2 * pad, ink.shape[1] - 2 * pad
    iw, ih = int(w * c - h * s), int(h * c - w * s)
    if iw < p.turn_keep * w or ih < p.turn_keep * h:
        return None
    turned = ndimage.rotate(ink, degrees, reshape=True, order=1)
    x0, y0 = (turned.shape[1] - iw) // 2, (turned.shape[0] - ih) // 2
    cut = np.pad(turned[y0 : y0 + ih, x0 : x0 + iw], pad)
    return cut, Turn(degrees, (x0 - pad, y0 - pad), turned.shape, ink.shape)


def page_skew(mask: np.ndarray, p: PageParams = PAGE) -> float:
    """The angle (degrees, for `scipy.ndimage.rotate`) that straightens the ruled or grid
    lines of a page photographed a little askew, or 0.0.

    Line finding works on rows and columns: a grid tilted by a few degrees is neither, and
    its lines swallow the digits. The page is sheared by trial angles; at the right one,
    three or more rows or columns each hold ink along most of the page, more than upright.
    A lone tilted line (an underline) is left to the lone-line rule.
    """
    h, w = mask.shape
    if min(h, w) < p.skew_min_side:
        return 0.0  # a crop this small holds a digit, not a page of lines
    coarse_trial = _skew_trial(mask, p.skew_side // 2, p)
    fine_trial = _skew_trial(mask, p.skew_side, p)
    if coarse_trial is None or fine_trial is None:
        return 0.0
    # The angle roughly on a small copy, then closely (every quarter degree) on a larger one.
    coarse = max(coarse_trial(d) for d in np.arange(-p.max_skew, p.max_skew + 1e-9, 1.0))
    level = fine_trial(0.0)[0]
    score, _, best = max(fine_trial(d) for d in coarse[2] + np.arange(-1.0, 1.01, 0.25))
    # Turning is for pages clearly askew: a few more lines straight than upright, by a
    # degree or more (less is left to the line tests, which allow a pixel of tilt per run).
    if score < p.page_lines or score < level + p.skew_gain or abs(best) < p.min_skew:
        return 0.0
    return best


def _skew_trial(
    mask: np.ndarray, side: int, p: PageParams
) -> Callable[[float], tuple[int, float, float]] | None:
    """A test of trial angles on the mask pooled to about `side` pixels (None: no ink)."""
    h, w = mask.shape
    f = max(1, max(h, w) // side)
    # Pooled by OR-ing the f x f strided views: a thin line survives pooling (and this is
    # far cheaper than .any() over a reshaped array).
    small = np.zeros((h // f, w // f), dtype=bool)
    for i in range(f):
        for j in range(f):
            small |= mask[i : h // f * f : f, j : w // f * f : f]
    ys, xs = np.nonzero(small)
    if ys.size < _SKEW_MIN_INK:
        return None
    # Every k-th ink pixel is plenty to see a line (a line's count falls in proportion).
    k = max(1, ys.size // p.skew_points)
    ys, xs = ys[::k], xs[::k]
    sh, sw = small.shape
    thin = max(2.0, p.skew_thin * max(sh, sw))

    def trial(deg: float) -> tuple[int, float, float]:
        """(page lines, sharpness, degrees): lines first; between angles that find as many,
        the one whose rows and columns are most concentrated (the lines run straight)."""
        t = float(np.tan(np.radians(deg)))
        rows = np.bincount(np.round(ys - xs * t).astype(np.int64) - int(np.floor(-sw * abs(t))))
        cols = np.bincount(np.round(xs + ys * t).astype(np.int64) - int(np.floor(-sh * abs(t))))
        span = p.skew_span
        lines = _thin_bands(rows, span * sw / k, thin) + _thin_bands(cols, span * sh / k, thin)
        return lines, float(rows @ rows + cols @ cols), float(deg)

    return trial


#: Fewer ink pixels than this in the pooled mask: nothing to measure a skew on.
_SKEW_MIN_INK = 50


def _thin_bands(counts: np.ndarray, least: float, thickest: float) -> int:
    """How many runs of consecutive entries reaching `least` are at most `thickest` long:
    page lines, not the thick strokes of a digit that fills the image."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], counts >= least, [0])).astype(np.int8)))
    return int(np.count_nonzero(edges[1::2] - edges[::2] <= thickest))


# ---------------------------------------------------------------- line finding


def _runs(mask: np.ndarray, min_len: int, bridge: int = 0) -> np.ndarray:
    """Pixels on horizontal runs of ink at least `min_len` long, counting runs split by gaps
    of up to `bridge` pixels as one (a run-length pass, O(pixels))."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    sr, sc = np.nonzero(d == 1)
    _, ec = np.nonzero(d == -1)  # row-major order: the k-th end closes the k-th start
    if sr.size == 0:
        return np.zeros_like(mask)
    # A new run begins at each row change or gap wider than `bridge`.
    new = np.ones(sr.size, dtype=bool)
    new[1:] = (sr[1:] != sr[:-1]) | (sc[1:] - ec[:-1] > bridge)
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:] - 1, sr.size - 1)
    rows, starts, ends = sr[firsts], sc[firsts], ec[lasts]
    long = (ends - starts) >= min_len
    marks = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(marks, (rows[long], starts[long]), 1)
    np.add.at(marks, (rows[long], ends[long]), -1)
    return (np.cumsum(marks, axis=1)[:, :w] > 0) & mask


def _bands(lines: np.ndarray, thickest: float) -> Bands:
    """Consecutive rows holding long runs, as [a, b) bands no thicker than `thickest`."""
    has = lines.any(axis=1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], has, [0]))))
    return [
        (int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a <= thickest
    ]


def _gap(shape: tuple[int, ...], p: PageParams) -> int:
    return max(1, round(p.line_gap * max(shape)))


def _rulings(mask: np.ndarray, p: PageParams) -> tuple[Bands, Bands, np.ndarray]:
    """Bands (rows, columns) and pixels of ruled-paper lines: thin bands of ink spanning the
    whole page.

    Rulings repeat, so a direction counts only with two or more such bands (one long bar is
    not enough: a 7 drawn edge to edge has one). Once a page is ruled, a single full-height
    line across it (the margin) is page structure too.
    """
    found: dict[int, Bands] = {}
    for axis in (1, 0):  # axis 1: bands of rows (horizontal lines); axis 0: columns
        span = mask.mean(axis=axis) > p.ruling_span
        edges = np.flatnonzero(np.diff(np.concatenate(([0], span.astype(np.int8), [0]))))
        limit = max(2, round(p.ruling_thick * span.size))
        found[axis] = [
            (a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a <= limit
        ]
    lines = np.zeros_like(mask)
    if len(found[1]) < 2 and len(found[0]) < 2:
        return [], [], lines
    for a, b in found[1]:
        lines[a:b, :] = mask[a:b, :]
    for a, b in found[0]:
        lines[:, a:b] = mask[:, a:b]
    return found[1], found[0], lines


def _frame_lines(mask: np.ndarray, p: PageParams) -> tuple[Bands, Bands, np.ndarray]:
    """Bands and pixels of straight lines long enough to be a frame, cell or grid.

    A line counts when it is straight, thin and runs along 2/3 of the image. Lines are page
    structure only in combinations a digit does not make: three or more (a frame, a grid),
    or a horizontal and a vertical one both at the edges (the corner of a cell cut tight).
    A single bar (a 7's top, a 1's base) or a bar with a stem (a 4) stays.
    """
    h, w = mask.shape
    lines = np.zeros_like(mask)
    if mask.sum(axis=1).max() < p.frame_quick * w and mask.sum(axis=0).max() < p.frame_quick * h:
        return [], [], lines  # no row or column holds enough ink for a line: skip the run pass
    # Scanned lines are faint and broken: bridge gaps of a few pixels along each direction.
    # Photographed ones are a little tilted, a staircase of short runs on adjacent rows:
    # runs are measured on the mask thickened by a pixel across the line.
    gap = _gap(mask.shape, p)
    hl = _runs(_thickened(mask, 0), max(p.min_run, int(p.frame_length * w)), gap) & mask
    vl = _runs(_thickened(mask, 1).T, max(p.min_run, int(p.frame_length * h)), gap).T & mask
    hb = _bands(hl, max(2, p.line_thick * h))
    vb = _bands(vl.T, max(2, p.line_thick * w))
    at_edge_h = [b for b in hb if b[0] < p.edge * h or b[1] > (1 - p.edge) * h]
    at_edge_v = [b for b in vb if b[0] < p.edge * w or b[1] > (1 - p.edge) * w]
    n = p.structure_lines
    structure = (hb and vb and len(hb) + len(vb) >= n) or len(hb) >= n or len(vb) >= n
    if not (structure or (at_edge_h and at_edge_v)):
        return [], [], lines
    for a, b in hb:
        lines[a:b] |= hl[a:b]
    for a, b in vb:
        lines[:, a:b] |= vl[:, a:b]
    return hb, vb, lines


def _thickened(mask: np.ndarray, axis: int) -> np.ndarray:
    """The mask grown by one pixel on both sides along `axis` (0: up and down).

    The same as `ndimage.binary_dilation` with a 3x1 element, at a tenth of its cost (two
    shifted ORs; 0.9 against 8.7 ms on a 1100x900 mask), on the path of every photo.
    """
    out = mask.copy()
    if axis == 0:
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
    else:
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
    return out


def _cell_walls(mask: np.ndarray, p: PageParams) -> tuple[Bands, Bands, np.ndarray]:
    """Bands and pixels of a row of boxes on a form: two long horizontal lines and the
    straight walls joining them, two or more (one box has two sides).

    The walls are as tall as the row, not the image, so the frame test misses them; a digit
    inside a box rarely reaches from its top line to its bottom line in one straight run.
    """
    h, w = mask.shape
    gap = _gap(mask.shape, p)
    hl = _runs(mask, max(p.min_run, int(p.cell_length * w)), gap)
    hb = _bands(hl, max(2, p.line_thick * h))
    lines = np.zeros_like(mask)
    walls: Bands = []
    rows: Bands = []
    for (a0, a1), (b0, b1) in zip(hb, hb[1:], strict=False):
        if b0 - a1 < p.cell_min_gap:
            continue  # a doubled or thick line, not a row of boxes
        span = b1 - a0 + 2
        slab = mask[max(a0 - 1, 0) : b1 + 1]
        # A wall reaches from one line to the other.
        vl = _runs(slab.T, b0 - a1, max(1, round(p.wall_gap * span))).T
        # It ends at the lines: a stroke (or a grid line) going on past them is no wall.
        above, below = mask[max(a0 - 3, 0)], mask[min(b1 + 2, h - 1)]
        found = [
            (c0, c1)
            for c0, c1 in _bands(vl.T, max(2, p.wall_thick * span))
            if not (above[c0:c1].any() or below[c0:c1].any())
        ]
        if len(found) < p.min_walls:
            continue
        rows += [(max(a0 - 1, 0), a1 + 1), (b0 - 1, min(b1 + 1, h))]
        # Scanned lines are ragged: a pixel more on each side goes with them.
        for c0, c1 in found:
            c0, c1 = max(c0 - 1, 0), min(c1 + 1, w)
            lines[max(a0 - 1, 0) : b1 + 1, c0:c1] = slab[:, c0:c1]
            walls.append((c0, c1))
    rows = list(dict.fromkeys(rows))
    along = ndimage.binary_dilation(hl, structure=np.ones((3, 1), dtype=bool))
    for a, b in rows:
        lines[a:b] |= along[a:b] & mask[a:b]
    return rows, walls, lines


def _lone_lines(mask: np.ndarray, p: PageParams) -> np.ndarray:
    """Pixels of long, thin lines (ruled or grid lines, a little tilted) that run past the
    writing at both ends: an underline or the grid under a number. A digit's own bar (a 7's
    top, a 2's base) ends where its strokes do, at one end at least."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if mask.sum(axis=1).max() < p.lone_quick * w:
        return out  # no row holds enough ink for a line: skip the run pass
    # A tilted line is a staircase of long runs, each shorter than the line.
    pieces = _runs(mask, max(p.min_run, int(p.lone_piece * w)), _gap(mask.shape, p))
    labels, _ = ndimage.label(pieces, structure=EIGHT)
    found = []
    every = np.zeros_like(mask)
    for i, (by, bx) in enumerate(ndimage.find_objects(labels)):
        if bx.stop - bx.start < p.lone_length * w or by.stop - by.start > p.lone_thick * h:
            continue
        line = labels == i + 1
        # Its ragged fringe (runs too short to be found) goes with it.
        f = p.lone_fringe
        y0, y1 = max(by.start - f, 0), min(by.stop + f, h)
        line[y0:y1] = ndimage.binary_dilation(line[y0:y1], EIGHT, iterations=f) & mask[y0:y1]
        found.append((bx, line))
        every |= line
    rest = np.flatnonzero((mask & ~every).any(axis=0))
    margin = p.lone_past * w
    for bx, line in found:
        if rest.size and bx.start < rest[0] - margin and bx.stop > rest[-1] + margin:
            out |= line
    return out


# ---------------------------------------------------------------- removal and repairs


def _remove_structure(mask: np.ndarray, p: PageParams) -> np.ndarray:
    """The mask without rulings, frames, cells and grid lines; strokes crossing them mended."""
    h, w = mask.shape
    no_lines: tuple[Bands, Bands, np.ndarray] = ([], [], np.zeros_like(mask))
    cell_rows, cell_walls, cells = _cell_walls(mask, p) if p.cells else no_lines
    ruled_rows, ruled_cols, ruled = _rulings(mask & ~cells, p) if p.rulings else no_lines
    out = mask & ~ruled
    hb, vb, lines = _frame_lines(out & ~cells, p) if p.frames else no_lines
    hb, vb, lines = hb + cell_rows, vb + cell_walls, lines | cells
    if not hb and not vb:
        if p.lone_lines:
            lone = _lone_lines(out, p)
            lone_t = _lone_lines(out.T, p).T
            if lone.any() or lone_t.any():
                out = out & ~(lone & ~_mend_across(out, lone, p))
                out = out & ~(lone_t & ~_mend_across(out.T, lone_t.T, p).T)
                ruled_rows += _bands(lone, p.lone_thick * h)
                ruled_cols += _bands(lone_t.T, p.lone_thick * w)
        return _drop_line_slivers(out, ruled_rows, ruled_cols) if p.slivers else out
    for a, b in hb:
        lines[a:b] |= out[a:b] & lines[a:b].any(axis=0, keepdims=True)
    for a, b in vb:
        lines[:, a:b] |= out[:, a:b] & lines[:, a:b].any(axis=1, keepdims=True)
    kept = _mend_crossings(out, out & ~lines, hb, vb, p) if p.mend else out & ~lines
    if p.slivers:
        kept = _drop_line_slivers(kept, hb + ruled_rows, vb + ruled_cols)
    if p.bold_ring and not ruled_rows and not ruled_cols and _bold_ring(kept, hb, vb, p):
        return out
    return kept


def _mend_across(mask: np.ndarray, line: np.ndarray, p: PageParams) -> np.ndarray:
    """The line's pixels where a stroke crosses it: ink just above and just below it."""
    if not p.mend:
        return np.zeros_like(line)
    on = line.any(axis=0)
    top = np.argmax(line, axis=0)
    bottom = line.shape[0] - 1 - np.argmax(line[::-1], axis=0)
    cols = np.arange(line.shape[1])
    r = p.mend_reach
    above = mask[np.maximum(top - r, 0), cols]
    below = mask[np.minimum(bottom + r, line.shape[0] - 1), cols]
    return line & (on & above & below)[None, :]


def _bold_ring(kept: np.ndarray, hb: Bands, vb: Bands, p: PageParams) -> bool:
    """Whether the "frame" is the drawing itself: a bold 0 filling a tight crop.

    Its lines are as thick as pen strokes (a printed cell's are thin) and nothing is left
    inside once they are gone (a cell holds its digit apart from the frame).
    """
    if not hb or not vb:
        return False
    thickness = float(np.mean([b - a for a, b in hb + vb]))
    if thickness < p.bold * max(kept.shape):
        return False
    y0, y1 = min(b for _, b in hb), max(a for a, _ in hb)
    x0, x1 = min(b for _, b in vb), max(a for a, _ in vb)
    if y1 - y0 < _RING_MIN or x1 - x0 < _RING_MIN:
        return False
    my, mx = max(1, (y1 - y0) // 6), max(1, (x1 - x0) // 6)  # a sixth in from the lines
    inner = kept[y0 + my : y1 - my, x0 + mx : x1 - mx]
    return inner.size > 0 and float(inner.mean()) < p.ring_inside


#: A ring's inside is at least this many pixels across.
_RING_MIN = 4


def _mend_crossings(
    before: np.ndarray, after: np.ndarray, hb: Bands, vb: Bands, p: PageParams
) -> np.ndarray:
    """`after` (lines in bands `hb`, `vb` removed from `before`) with the pixels put back
    where a stroke crosses a line: it continues on both sides of it. Where two removed
    lines cross, nothing is put back."""
    h, w = before.shape
    kept = after.copy()
    r = p.mend_reach
    in_cols = np.zeros(w, dtype=bool)
    for a, b in vb:
        in_cols[a:b] = True
    in_rows = np.zeros(h, dtype=bool)
    for a, b in hb:
        in_rows[a:b] = True
    for a, b in hb:
        cross = before[max(a - r, 0)] & before[min(b + r - 1, h - 1)] & ~in_cols
        kept[a:b, cross] = before[a:b, cross]
    for a, b in vb:
        cross = before[:, max(a - r, 0)] & before[:, min(b + r - 1, w - 1)] & ~in_rows
        kept[cross, a:b] = before[cross, a:b]
    return kept


def _drop_line_slivers(kept: np.ndarray, hb: Bands, vb: Bands) -> np.ndarray:
    """The mask without slivers left beside removed lines.

    A photographed grid line is a little tilted, so its band of long runs misses thin
    strips along its sides; alone, such strips read as a 1. Ink that lies wholly within a
    line's width of the removed lines is such a strip (or a speck on them); a stroke
    crossing or touching a line reaches beyond, so it stays.
    """
    if not hb and not vb:
        return kept
    zone = np.zeros_like(kept)
    for a, b in hb:
        zone[max(a - max(2, b - a), 0) : b + max(2, b - a)] = True
    for a, b in vb:
        zone[:, max(a - max(2, b - a), 0) : b + max(2, b - a)] = True
    labels, count = ndimage.label(kept, structure=EIGHT)
    if count == 0:
        return kept
    outside = np.bincount(labels[~zone], minlength=count + 1)
    drop = outside == 0
    drop[0] = False
    return kept & ~drop[labels]


def _drop_frame_remnants(
    mask: np.ndarray, image: tuple[int, int, int, int], p: PageParams
) -> np.ndarray:
    """The mask without thin lines along the image's edges (what is left of a cell's frame,
    too faint or cut to be found whole) when other sizeable ink remains: a lone 1 stays."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count < 2:
        return mask
    x0, y0, x1, y1 = image
    zone_x, zone_y = p.edge * (x1 - x0), p.edge * (y1 - y0)
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    heights = np.array([by.stop - by.start for by, _ in boxes])
    widths = np.array([bx.stop - bx.start for _, bx in boxes])
    upright = np.zeros(count, dtype=bool)
    lying = np.zeros(count, dtype=bool)
    thin, long = p.remnant_thin, p.remnant_length
    for i, (by, bx) in enumerate(boxes):
        near_side = bx.start < x0 + zone_x or bx.stop > x1 - zone_x
        near_top = by.start < y0 + zone_y or by.stop > y1 - zone_y
        upright[i] = near_side and widths[i] <= thin * heights[i] and heights[i] >= long * (y1 - y0)
        lying[i] = near_top and heights[i] <= thin * widths[i] and widths[i] >= long * (x1 - x0)
    # A frame's line is longer than the digits it holds; a 1 at the start of a row is not.
    others = (
        ~(upright | lying) & (heights > thin * widths) & (areas >= p.remnant_min_area * areas.max())
    )
    if not others.any():
        return mask
    tallest = heights[others].max()
    widest = widths[others].max()
    remnant = np.zeros(count + 1, dtype=bool)
    remnant[1:] = (upright & (heights > p.remnant_long * tallest)) | (
        lying & (widths > p.remnant_long * widest)
    )
    if not remnant.any() or areas[~remnant[1:]].sum() < p.remnant_rest * areas.sum():
        return mask
    return mask & ~remnant[labels]
