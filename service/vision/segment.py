"""Find the digits in an ink mask: page structure (rulings, frames, cells, grid lines) taken
out, ink components grouped into digits, digits into rows, touching digits split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: 8-connectivity: diagonal pixels of one stroke belong together.
_EIGHT = np.ones((3, 3), dtype=bool)

#: Bands of rows (or columns) [a, b) holding a line.
Bands = list[tuple[int, int]]


@dataclass(frozen=True)
class Part:
    """One digit's place in the mask: its box [x0, y0, x1, y1) and its own ink."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool, the box's shape: this digit's pixels only


# ---------------------------------------------------------------- page structure


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


def _bands(lines: np.ndarray, thickest: float) -> list[tuple[int, int]]:
    """Consecutive rows holding long runs, as [a, b) bands no thicker than `thickest`."""
    has = lines.any(axis=1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], has, [0]))))
    return [
        (int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a <= thickest
    ]


def _rulings(mask: np.ndarray) -> tuple[Bands, Bands, np.ndarray]:
    """Bands (rows, columns) and pixels of ruled-paper lines: thin bands of ink spanning the
    whole page.

    Rulings repeat, so a direction counts only with two or more such bands (one long bar is
    not enough: a 7 drawn edge to edge has one). Once a page is ruled, a single full-height
    line across it (the margin) is page structure too.
    """
    found: dict[int, list[tuple[int, int]]] = {}
    for axis in (1, 0):  # axis 1: bands of rows (horizontal lines); axis 0: columns
        span = mask.mean(axis=axis) > 0.7
        edges = np.flatnonzero(np.diff(np.concatenate(([0], span.astype(np.int8), [0]))))
        limit = max(2, round(0.02 * span.size))
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


def _frame_lines(
    mask: np.ndarray,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], np.ndarray]:
    """Bands and pixels of straight lines long enough to be a frame, cell or grid.

    A line counts when it is straight, thin and runs along 2/3 of the image. Lines are page
    structure only in combinations a digit does not make: three or more (a frame, a grid),
    or a horizontal and a vertical one both at the edges (the corner of a cell cut tight).
    A single bar (a 7's top, a 1's base) or a bar with a stem (a 4) stays.
    """
    h, w = mask.shape
    no_lines: tuple[Bands, Bands, np.ndarray] = ([], [], np.zeros_like(mask))
    if mask.sum(axis=1).max() < 0.5 * w and mask.sum(axis=0).max() < 0.5 * h:
        return no_lines  # no row or column holds enough ink for a line: skip the run pass
    # Scanned lines are faint and broken: bridge gaps of a few pixels along each direction.
    # Photographed ones are a little tilted, a staircase of short runs on adjacent rows:
    # runs are measured on the mask thickened by a pixel across the line.
    gap = max(1, round(0.03 * max(h, w)))
    hl = _runs(_thickened(mask, 0), max(8, int(0.65 * w)), gap) & mask
    vl = _runs(_thickened(mask, 1).T, max(8, int(0.65 * h)), gap).T & mask
    hb = _bands(hl, max(2, 0.1 * h))
    vb = _bands(vl.T, max(2, 0.1 * w))
    lines = np.zeros_like(mask)
    at_edge_h = [b for b in hb if b[0] < 0.15 * h or b[1] > 0.85 * h]
    at_edge_v = [b for b in vb if b[0] < 0.15 * w or b[1] > 0.85 * w]
    structure = (hb and vb and len(hb) + len(vb) >= 3) or len(hb) >= 3 or len(vb) >= 3
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


def _cell_walls(mask: np.ndarray) -> tuple[Bands, Bands, np.ndarray]:
    """Bands and pixels of a row of boxes on a form: two long horizontal lines and the
    straight walls joining them, two or more (one box has two sides).

    The walls are as tall as the row, not the image, so the frame test misses them; a digit
    inside a box rarely reaches from its top line to its bottom line in one straight run.
    """
    h, w = mask.shape
    gap = max(1, round(0.03 * max(h, w)))
    hl = _runs(mask, max(8, int(0.5 * w)), gap)
    hb = _bands(hl, max(2, 0.1 * h))
    lines = np.zeros_like(mask)
    walls: Bands = []
    rows: Bands = []
    for (a0, a1), (b0, b1) in zip(hb, hb[1:], strict=False):
        if b0 - a1 < 8:
            continue  # a doubled or thick line, not a row of boxes
        span = b1 - a0 + 2
        slab = mask[max(a0 - 1, 0) : b1 + 1]
        # A wall reaches from one line to the other.
        vl = _runs(slab.T, b0 - a1, max(1, round(0.05 * span))).T
        # It ends at the lines: a stroke (or a grid line) going on past them is no wall.
        above, below = mask[max(a0 - 3, 0)], mask[min(b1 + 2, h - 1)]
        found = [
            (c0, c1)
            for c0, c1 in _bands(vl.T, max(2, 0.1 * span))
            if not (above[c0:c1].any() or below[c0:c1].any())
        ]
        if len(found) < 2:
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


def _lone_lines(mask: np.ndarray) -> np.ndarray:
    """Pixels of long, thin lines (ruled or grid lines, a little tilted) that run past the
    writing at both ends: an underline or the grid under a number. A digit's own bar (a 7's
    top, a 2's base) ends where its strokes do, at one end at least."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if mask.sum(axis=1).max() < 0.4 * w:
        return out  # no row holds enough ink for a line: skip the run pass
    gap = max(1, round(0.03 * max(h, w)))
    # A tilted line is a staircase of long runs, each shorter than the line.
    pieces = _runs(mask, max(8, int(0.25 * w)), gap)
    labels, count = ndimage.label(pieces, structure=_EIGHT)
    found = []
    every = np.zeros_like(mask)
    for i, (by, bx) in enumerate(ndimage.find_objects(labels)):
        if bx.stop - bx.start < 0.65 * w or by.stop - by.start > 0.15 * h:
            continue
        line = labels == i + 1
        # Its ragged fringe (runs too short to be found) goes with it.
        y0, y1 = max(by.start - 2, 0), min(by.stop + 2, h)
        line[y0:y1] = ndimage.binary_dilation(line[y0:y1], _EIGHT, iterations=2) & mask[y0:y1]
        found.append((bx, line))
        every |= line
    rest = np.flatnonzero((mask & ~every).any(axis=0))
    margin = 0.05 * w
    for bx, line in found:
        if rest.size and bx.start < rest[0] - margin and bx.stop > rest[-1] + margin:
            out |= line
    return out


def _mend_across(mask: np.ndarray, line: np.ndarray) -> np.ndarray:
    """The line's pixels where a stroke crosses it: ink just above and just below it."""
    on = line.any(axis=0)
    top = np.argmax(line, axis=0)
    bottom = line.shape[0] - 1 - np.argmax(line[::-1], axis=0)
    cols = np.arange(line.shape[1])
    above = mask[np.maximum(top - 2, 0), cols]
    below = mask[np.minimum(bottom + 2, line.shape[0] - 1), cols]
    return line & (on & above & below)[None, :]


def page_skew(mask: np.ndarray) -> float:
    """The angle (degrees, for `scipy.ndimage.rotate`) that straightens the ruled or grid
    lines of a page photographed a little askew, or 0.0.

    Line finding works on rows and columns: a grid tilted by a few degrees is neither, and
    its lines swallow the digits. The page is sheared by trial angles; at the right one,
    three or more rows or columns each hold ink along most of the page, more than upright.
    A lone tilted line (an underline) is left to `_lone_lines`.
    """
    h, w = mask.shape
    if min(h, w) < _SKEW_MIN_SIDE:
        return 0.0  # a crop this small holds a digit, not a page of lines
    coarse_trial = _skew_trial(mask, _SKEW_SIDE // 2)
    fine_trial = _skew_trial(mask, _SKEW_SIDE)
    if coarse_trial is None or fine_trial is None:
        return 0.0
    # The angle roughly on a small copy, then closely (every quarter degree) on a larger one.
    coarse = max(coarse_trial(d) for d in np.arange(-_MAX_SKEW, _MAX_SKEW + 1e-9, 1.0))
    level = fine_trial(0.0)[0]
    score, _, best = max(fine_trial(d) for d in coarse[2] + np.arange(-1.0, 1.01, 0.25))
    # Turning is for pages clearly askew: a few more lines straight than upright, by a
    # degree or more (less is left to the line tests, which allow a pixel of tilt per run).
    if score < _PAGE_LINES or score < level + 2 or abs(best) < 1.0:
        return 0.0
    return best


def _skew_trial(mask: np.ndarray, side: int) -> Callable[[float], tuple[int, float, float]] | None:
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
    if ys.size < 50:
        return None
    # Every k-th ink pixel is plenty to see a line (a line's count falls in proportion).
    k = max(1, ys.size // _SKEW_POINTS)
    ys, xs = ys[::k], xs[::k]
    sh, sw = small.shape
    thin = max(2.0, _THIN * max(sh, sw))

    def trial(deg: float) -> tuple[int, float, float]:
        """(page lines, sharpness, degrees): lines first; between angles that find as many,
        the one whose rows and columns are most concentrated (the lines run straight)."""
        t = float(np.tan(np.radians(deg)))
        rows = np.bincount(np.round(ys - xs * t).astype(np.int64) - int(np.floor(-sw * abs(t))))
        cols = np.bincount(np.round(xs + ys * t).astype(np.int64) - int(np.floor(-sh * abs(t))))
        lines = _thin_bands(rows, _SPAN * sw / k, thin) + _thin_bands(cols, _SPAN * sh / k, thin)
        return lines, float(rows @ rows + cols @ cols), float(deg)

    return trial


def _thin_bands(counts: np.ndarray, least: float, thickest: float) -> int:
    """How many runs of consecutive entries reaching `least` are at most `thickest` long:
    page lines, not the thick strokes of a digit that fills the image."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], counts >= least, [0])).astype(np.int8)))
    return int(np.count_nonzero(edges[1::2] - edges[::2] <= thickest))


#: Side of the pooled mask the skew is measured on (half that for the rough search),
#: smallest mask searched, largest tilt tried (degrees), the
#: share of the page a row must hold to be a page line, and how many thin lines make a
#: ruled or squared page (a digit has at most two long strokes: a 4's bar and stem).
_SKEW_SIDE = 256
_SKEW_MIN_SIDE = 160
_SKEW_POINTS = 4000
_MAX_SKEW = 8.0
_SPAN = 0.6
_PAGE_LINES = 3
#: Page lines are at most this thick (share of the side, pooled).
_THIN = 0.03


def remove_structure(mask: np.ndarray) -> np.ndarray:
    """The mask without rulings, frames, cells and grid lines; strokes crossing them mended."""
    h, w = mask.shape
    cell_rows, cell_walls, cells = _cell_walls(mask)
    ruled_rows, ruled_cols, ruled = _rulings(mask & ~cells)
    out = mask & ~ruled
    hb, vb, lines = _frame_lines(out & ~cells)
    hb, vb, lines = hb + cell_rows, vb + cell_walls, lines | cells
    if not hb and not vb:
        lone = _lone_lines(out)
        lone_t = _lone_lines(out.T).T
        if lone.any() or lone_t.any():
            out = out & ~(lone & ~_mend_across(out, lone))
            out = out & ~(lone_t & ~_mend_across(out.T, lone_t.T).T)
            ruled_rows += _bands(lone, 0.15 * h)
            ruled_cols += _bands(lone_t.T, 0.15 * w)
        return _drop_line_slivers(out, ruled_rows, ruled_cols)
    hb = [_with_fringe(out, lines, a, b) for a, b in hb]
    vb = [_with_fringe(out.T, lines.T, a, b) for a, b in vb]
    for a, b in hb:
        lines[a:b] |= out[a:b] & lines[a:b].any(axis=0, keepdims=True)
    for a, b in vb:
        lines[:, a:b] |= out[:, a:b] & lines[:, a:b].any(axis=1, keepdims=True)
    kept = _mend_crossings(out, out & ~lines, hb, vb)
    kept = _drop_line_slivers(kept, hb + ruled_rows, vb + ruled_cols)
    if not ruled_rows and not ruled_cols and _bold_ring(kept, hb, vb):
        return out
    return kept


def _bold_ring(kept: np.ndarray, hb: Bands, vb: Bands) -> bool:
    """Whether the "frame" is the drawing itself: a bold 0 filling a tight crop.

    Its lines are as thick as pen strokes (a printed cell's are thin) and nothing is left
    inside once they are gone (a cell holds its digit apart from the frame).
    """
    if not hb or not vb:
        return False
    thickness = float(np.mean([b - a for a, b in hb + vb]))
    if thickness < _BOLD * max(kept.shape):
        return False
    y0, y1 = min(b for _, b in hb), max(a for a, _ in hb)
    x0, x1 = min(b for _, b in vb), max(a for a, _ in vb)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return False
    my, mx = max(1, (y1 - y0) // 6), max(1, (x1 - x0) // 6)
    inner = kept[y0 + my : y1 - my, x0 + mx : x1 - mx]
    return inner.size > 0 and float(inner.mean()) < 0.01


def _mend_crossings(before: np.ndarray, after: np.ndarray, hb: Bands, vb: Bands) -> np.ndarray:
    """`after` (lines in bands `hb`, `vb` removed from `before`) with the pixels put back
    where a stroke crosses a line: it continues on both sides of it. Where two removed
    lines cross, nothing is put back."""
    h, w = before.shape
    kept = after.copy()
    in_cols = np.zeros(w, dtype=bool)
    for a, b in vb:
        in_cols[a:b] = True
    in_rows = np.zeros(h, dtype=bool)
    for a, b in hb:
        in_rows[a:b] = True
    for a, b in hb:
        cross = before[max(a - 2, 0)] & before[min(b + 1, h - 1)] & ~in_cols
        kept[a:b, cross] = before[a:b, cross]
    for a, b in vb:
        cross = before[:, max(a - 2, 0)] & before[:, min(b + 1, w - 1)] & ~in_rows
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
    labels, count = ndimage.label(kept, structure=_EIGHT)
    if count == 0:
        return kept
    outside = np.bincount(labels[~zone], minlength=count + 1)
    drop = outside == 0
    drop[0] = False
    return kept & ~drop[labels]


def _with_fringe(out: np.ndarray, lines: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """A line's band of rows [a, b) grown over its blurred edges.

    A photographed line's edges are soft: the rows just outside its band hold a broken
    trace of it, too short to count as the line, which would survive as a thin frame
    around the digit (a boxed 5 read as 3). A row next to the band that is inked along
    much of the line's length is such a trace; a pen stroke touching the line covers only
    a little of it. Growth stops at half the band's thickness on each side, and only
    frame lines along the image's edges grow.
    """
    size = out.shape[0]
    if _EDGE * size < a and b < (1 - _EDGE) * size:
        return a, b  # only a frame's lines, along the edges: not a digit's stem in the middle
    extent = lines[a:b].any(axis=0)
    n = int(extent.sum())
    if n == 0:
        return a, b
    limit = max(1, (b - a) // 2)
    lo, hi = a, b
    while lo > max(a - limit, 0) and out[lo - 1, extent].sum() > _FRINGE * n:
        lo -= 1
    while hi < min(b + limit, size) and out[hi, extent].sum() > _FRINGE * n:
        hi += 1
    return lo, hi


#: Share of the image along each edge where a cell's frame runs.
_EDGE = 0.15
#: Lines at least this thick (share of the image's side) are pen strokes, not printed lines.
_BOLD = 0.07
#: Share of a line's length along which a neighbouring row must be inked to be its edge.
_FRINGE = 0.3


def drop_frame_remnants(mask: np.ndarray, image: tuple[int, int, int, int]) -> np.ndarray:
    """The mask without thin lines along the image's edges (what is left of a cell's frame,
    too faint or cut to be found whole) when other sizeable ink remains: a lone 1 stays."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count < 2:
        return mask
    x0, y0, x1, y1 = image
    zone_x, zone_y = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    heights = np.array([by.stop - by.start for by, _ in boxes])
    widths = np.array([bx.stop - bx.start for _, bx in boxes])
    upright = np.zeros(count, dtype=bool)
    lying = np.zeros(count, dtype=bool)
    for i, (by, bx) in enumerate(boxes):
        near_side = bx.start < x0 + zone_x or bx.stop > x1 - zone_x
        near_top = by.start < y0 + zone_y or by.stop > y1 - zone_y
        upright[i] = near_side and widths[i] <= 0.25 * heights[i] and heights[i] >= 0.5 * (y1 - y0)
        lying[i] = near_top and heights[i] <= 0.25 * widths[i] and widths[i] >= 0.5 * (x1 - x0)
    # A frame's line is longer than the digits it holds; a 1 at the start of a row is not.
    others = ~(upright | lying) & (heights > 0.25 * widths) & (areas >= 0.04 * areas.max())
    if not others.any():
        return mask
    tallest = heights[others].max()
    widest = widths[others].max()
    remnant = np.zeros(count + 1, dtype=bool)
    remnant[1:] = (upright & (heights > 1.1 * tallest)) | (lying & (widths > 1.1 * widest))
    if not remnant.any() or areas[~remnant[1:]].sum() < 0.2 * areas.sum():
        return mask
    return mask & ~remnant[labels]


# ---------------------------------------------------------------- one digit


def select_digit(mask: np.ndarray) -> np.ndarray:
    """Keep the largest ink component and sizeable ones near it; drop specks, far blobs and
    page-edge lines. The reading of an image known to hold one digit."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count <= 1:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    _drop_edge_lines(areas, boxes, mask.shape)
    order = np.argsort(areas)[::-1]
    main = int(order[0])
    y0, y1 = boxes[main][0].start, boxes[main][0].stop
    x0, x1 = boxes[main][1].start, boxes[main][1].stop
    keep = [main]
    changed = True
    while changed:
        changed = False
        margin = 0.35 * max(y1 - y0, x1 - x0)
        for idx in order[1:]:
            i = int(idx)
            if i in keep or areas[i] < max(0.04 * areas[main], 2):
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


def _drop_edge_lines(areas: np.ndarray, boxes: list, shape: tuple[int, ...]) -> None:
    h, w = shape
    for i, (by, bx) in enumerate(boxes):
        bh, bw = by.stop - by.start, bx.stop - bx.start
        # A margin line or a page edge: spans (almost) the whole image and is thin.
        if (bh > 0.9 * h and bw < 0.05 * w) or (bw > 0.9 * w and bh < 0.05 * h):
            areas[i] = 0


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


def find_digits(mask: np.ndarray, image: tuple[int, int, int, int]) -> list[list[Part]]:
    """Rows (top to bottom) of digits (left to right) in an ink mask; [] when it has none.

    Components stacked closely above one another are one digit (a 5's detached bar);
    digits side by side with similar heights and modest gaps form a row; far blobs and
    specks are dropped; a digit much wider than its row is tall is split at ink minima.
    """
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    _drop_edge_lines(areas, boxes, mask.shape)
    if not areas.any():
        return []
    biggest = int(areas.max())
    tallest = max(b[0].stop - b[0].start for b, a in zip(boxes, areas, strict=True) if a)
    groups = [
        _Group(bx.start, by.start, bx.stop, by.stop, [i + 1], int(areas[i]))
        for i, (by, bx) in enumerate(boxes)
        if areas[i] >= max(0.04 * biggest, 2) and (by.stop - by.start) >= 0.2 * tallest
    ]
    if not groups:
        return []  # only single-pixel specks: nothing a digit is made of
    groups = _merge_stacked(groups)
    big = max(g.h for g in groups)
    groups = [g for g in groups if g.h >= 0.35 * big or g.area >= 0.25 * biggest]
    if len(groups) > 1:
        groups = _drop_cut_fragments(groups, image)
    rows = _rows(groups)
    rows = _keep_connected(rows)
    parts: list[list[Part]] = []
    total = sum(len(r) for r in rows)
    for row in rows:
        row_h = float(np.median([g.h for g in row]))
        out: list[Part] = []
        for g in row:
            own = np.isin(labels[g.y0 : g.y1, g.x0 : g.x1], g.ids)
            wide = 1.6 if total == 1 else 1.15
            if g.w > wide * max(row_h, g.h):
                out += _split(own, g, max(row_h, g.h))
            else:
                out.append(Part((g.x0, g.y0, g.x1, g.y1), own))
        parts.append(out)
    return parts


def _drop_cut_fragments(groups: list[_Group], image: tuple[int, int, int, int]) -> list[_Group]:
    """Drop what the crop cut: a thin line along an edge (the rest of a cell's frame), or a
    neighbour's piece at the left or right edge, shorter than the digits inside."""
    x0, y0, x1, y1 = image
    edge = 0.03 * max(x1 - x0, y1 - y0) + 1
    # The crop cuts a neighbour: its ink runs into the edge. A digit near it stays clear.
    cut = 0.01 * max(x1 - x0, y1 - y0) + 1
    inside = [g for g in groups if g.x0 > x0 + edge and g.x1 < x1 - edge]
    tallest_inside = max((g.h for g in inside), default=0)
    kept = []
    for g in groups:
        at_side = g.x0 <= x0 + edge or g.x1 >= x1 - edge
        at_top = g.y0 <= y0 + edge or g.y1 >= y1 - edge
        thin_line = (at_side and g.w <= 0.25 * g.h and g.h >= 0.7 * (y1 - y0)) or (
            at_top and g.h <= 0.25 * g.w and g.w >= 0.7 * (x1 - x0)
        )
        piece = (g.x0 <= x0 + cut or g.x1 >= x1 - cut) and g.h < 0.8 * tallest_inside
        at_end = g.y0 <= y0 + cut or g.y1 >= y1 - cut
        if not (thin_line or piece or _ruled_fragment(g, groups, at_end)):
            kept.append(g)
    return kept or groups


def _ruled_fragment(g: _Group, groups: list[_Group], cut: bool) -> bool:
    """A piece of a printed line: straight, upright, shorter than the digits, and cut by
    the crop's top or bottom or much thinner than their pen strokes (a digit's ink per row
    of height is at least one stroke wide; a 1 written with the same pen is as wide)."""
    others = [o for o in groups if o is not g]
    if g.w > 0.25 * g.h or not others or g.h >= 0.8 * max(o.h for o in others):
        return False
    ink_per_row = float(np.median([o.area / o.h for o in others]))
    return cut or g.w < 0.35 * ink_per_row


def _merge_stacked(groups: list[_Group]) -> list[_Group]:
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
                stacked = overlap_x >= 0.5 * min(a.w, b.w) and gap_y <= 0.25 * tall
                # Two narrow digits side by side ("11", "17") are each nearly as tall as
                # the pair and overlap little; a digit's pieces rarely both are.
                pair = min(a.h, b.h) >= 0.75 * tall and overlap_x <= 0.2 * min(a.w, b.w)
                touching = (
                    overlap_x >= -0.03 * tall
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


def _rows(groups: list[_Group]) -> list[list[_Group]]:
    rows: list[list[_Group]] = []
    for g in sorted(groups, key=lambda g: (g.y0 + g.y1) / 2):
        for row in rows:
            top, bottom = min(r.y0 for r in row), max(r.y1 for r in row)
            if min(bottom, g.y1) - max(top, g.y0) >= 0.4 * min(g.h, bottom - top):
                row.append(g)
                break
        else:
            rows.append([g])
    return [sorted(row, key=lambda g: g.x0) for row in rows]


def _keep_connected(rows: list[list[_Group]]) -> list[list[_Group]]:
    """The main row's chain of close digits around its biggest, and rows close to it."""
    chains = []
    for row in rows:
        row_h = max(float(np.median([g.h for g in row])), 1.0)
        gaps = [b.x0 - a.x1 for a, b in zip(row, row[1:], strict=False)]
        reach = 2.0 * row_h
        if len(gaps) >= 3:
            # Digits written far apart are still one number when evenly spaced: a gap
            # counts as a break only when much wider than the row's usual one.
            reach = max(reach, 1.6 * float(np.sort(gaps)[(len(gaps) - 1) // 2]))
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
            if nxt_h < 0.5 * main_h or nxt_h > 2 * main_h or gap > 1.5 * main_h:
                break
            kept.insert(0, nxt) if step < 0 else kept.append(nxt)
            i += step
    return kept


def _split(own: np.ndarray, g: _Group, row_h: float) -> list[Part]:
    """Cut touching digits at the columns with least ink near the even cuts."""
    pieces = max(2, min(6, round(g.w / (0.7 * row_h))))
    column = own.sum(axis=0)
    cuts = [0]
    for k in range(1, pieces):
        centre = round(k * g.w / pieces)
        reach = max(1, round(0.2 * g.w / pieces))
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
