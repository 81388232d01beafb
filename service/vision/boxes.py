"""Where a glyph is: one object that maps boxes from any stage's pixels back to the
upload's.

Each stage that changes the geometry (decoding shrinks, an opaque card is cut out, the
working copy is scaled and padded, a page is turned straight) appends its step to the
`BoxMap` it was given; a box found in the last stage's pixels goes back through every
step in reverse and is rounded once, outwards, to whole upload pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: A box [x0, y0, x1, y1) (right and bottom exclusive), in some stage's pixels.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Scale:
    """x' = x * fx, y' = y * fy (resizing)."""

    fx: float
    fy: float

    def back(self, box: Box) -> Box:
        return box[0] / self.fx, box[1] / self.fy, box[2] / self.fx, box[3] / self.fy


@dataclass(frozen=True)
class Shift:
    """x' = x + dx, y' = y + dy (padding: positive; cutting out: negative)."""

    dx: float
    dy: float

    def back(self, box: Box) -> Box:
        return box[0] - self.dx, box[1] - self.dy, box[2] - self.dx, box[3] - self.dy


@dataclass(frozen=True)
class Turn:
    """An image turned by `degrees` (`scipy.ndimage.rotate`, reshaped to `turned`) from
    one of shape `straight`, then cut at `offset` (x, y) in the turned image."""

    degrees: float
    offset: tuple[int, int]
    turned: tuple[int, ...]
    straight: tuple[int, ...]

    def back(self, box: Box) -> Box:
        """The box around `box`'s corners turned back into the image before the turn."""
        x0, y0 = box[0] + self.offset[0], box[1] + self.offset[1]
        x1, y1 = box[2] + self.offset[0], box[3] + self.offset[1]
        c, s = np.cos(np.radians(self.degrees)), np.sin(np.radians(self.degrees))
        ty, tx = (self.turned[0] - 1) / 2, (self.turned[1] - 1) / 2
        oy, ox = (self.straight[0] - 1) / 2, (self.straight[1] - 1) / 2
        dy = np.array([y0, y0, y1, y1], dtype=np.float64) - ty
        dx = np.array([x0, x1, x0, x1], dtype=np.float64) - tx
        ys, xs = oy + dy * c + dx * s, ox + dx * c - dy * s
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


Step = Scale | Shift | Turn


@dataclass(frozen=True)
class BoxMap:
    """The steps from the upload (`width` x `height`) to the current stage's pixels."""

    width: int
    height: int
    steps: tuple[Step, ...] = ()

    def then(self, *steps: Step) -> BoxMap:
        """This map followed by `steps` (identity steps are left out)."""
        kept = tuple(
            s
            for s in steps
            if not (isinstance(s, Scale) and s.fx == s.fy == 1)
            and not (isinstance(s, Shift) and s.dx == s.dy == 0)
        )
        return BoxMap(self.width, self.height, self.steps + kept)

    def to_upload(self, box: Box) -> tuple[int, int, int, int]:
        """`box` in the upload's pixels: rounded outwards, inside the image, not empty."""
        for step in reversed(self.steps):
            box = step.back(box)
        x0 = min(max(math.floor(box[0]), 0), self.width - 1)
        y0 = min(max(math.floor(box[1]), 0), self.height - 1)
        x1 = min(max(math.ceil(box[2]), x0 + 1), self.width)
        y1 = min(max(math.ceil(box[3]), y0 + 1), self.height)
        return x0, y0, x1, y1
