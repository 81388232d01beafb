"""Batched augmentation that mimics real uploads after the service's preprocessing.

torchvision's transforms draw one set of parameters per call; here every image of a batch
gets its own rotation, scale, shift and shear in a single `grid_sample`, which is what makes
augmented training fit in minutes on two CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 12.0,
    scale: tuple[float, float] = (0.85, 1.12),
    shift_px: float = 2.0,
    shear_degrees: float = 8.0,
    stretch: float = 0.2,
    elastic: float = 0.0,
) -> torch.Tensor:
    """Per-image random rotation/scale/shear/translation of a [N,1,28,28] batch in [0,1].

    `stretch` scales width and height apart (digits stretched to fill a form box, narrow
    1s written wide); `elastic` adds a smooth random displacement field of that many
    pixels (Simard et al., 2003), drawn on a coarse 4x4 grid and upsampled.
    """
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-degrees, degrees) * math.pi / 180
    shear = uniform(-shear_degrees, shear_degrees) * math.pi / 180
    s = uniform(*scale)
    aspect = torch.exp(uniform(-stretch, stretch))
    sx, sy = s * aspect.sqrt(), s / aspect.sqrt()
    tx = uniform(-shift_px, shift_px) * 2 / x.shape[-1]
    ty = uniform(-shift_px, shift_px) * 2 / x.shape[-2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input ones, so the matrix is the inverse warp.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    if elastic > 0:
        coarse = torch.randn(n, 2, 4, 4, generator=generator) * (elastic * 2 / x.shape[-1])
        coarse = coarse * torch.rand(n, 1, 1, 1, generator=generator)  # some barely bent
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_stroke(
    x: torch.Tensor, generator: torch.Generator, *, p_thick: float = 0.25, p_thin: float = 0.15
) -> torch.Tensor:
    """Thicken (marker) or thin (fine pen) strokes of some images with grey-level morphology."""
    n = x.shape[0]
    r = torch.rand(n, generator=generator).to(x.device)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    # A soft dilation keeps anti-aliased edges: blend the dilated and the original images.
    thick = 0.5 * (thick + x).clamp(max=1.0) + 0.5 * thick
    thin = -F.max_pool2d(-x, 2, stride=1, padding=0)
    thin = F.pad(thin, (0, 1, 0, 1))
    out = torch.where((r < p_thick).view(n, 1, 1, 1), thick, x)
    use_thin = ((r >= p_thick) & (r < p_thick + p_thin)).view(n, 1, 1, 1)
    return torch.where(use_thin, torch.maximum(thin, 0.6 * x), out)


def augment(x: torch.Tensor, generator: torch.Generator, *, elastic: float = 0.0) -> torch.Tensor:
    """Full training augmentation of a [N,1,28,28] batch of pixel values in [0,1]."""
    return random_affine(random_stroke(x, generator), generator, elastic=elastic).clamp_(0.0, 1.0)


def _ink_boxes(x: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    boxes: list[tuple[int, int, int, int] | None] = []
    for img in x:
        ys, xs = np.nonzero(img > 64)
        boxes.append(None if ys.size == 0 else (ys.min(), ys.max(), xs.min(), xs.max()))
    return boxes


def add_styles(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Extra copies of MNIST 7s with a crossbar and 1s with a long flag and a foot.

    These European styles are rare in MNIST (American writers) and common in uploads; a
    1 with a long flag is read as 7 without them. Returns only the new [M,28,28] uint8
    images and labels; the caller appends them to the training set.
    """
    out, out_labels = [], []
    for digit in (7, 1):
        idx = np.flatnonzero(labels == digit)
        idx = rng.choice(idx, size=int(len(idx) * share), replace=False)
        for i, box in zip(idx, _ink_boxes(images[idx]), strict=True):
            if box is None:
                continue
            y0, y1, x0, x1 = box
            img = images[i].copy()
            h = y1 - y0 + 1
            if digit == 7:
                # The bar crosses the stem halfway down: find the stem in that row.
                y = y0 + int(h * rng.uniform(0.45, 0.6))
                xs = np.nonzero(img[y] > 64)[0]
                cx = int(xs.mean()) if xs.size else (x0 + x1) // 2
                half = int(rng.integers(3, 6))
                img[y : y + 2, max(cx - half, 0) : min(cx + half + 1, 28)] = 255
            else:
                # Flag: from the top of the stem down-left, about as wide as the stem (real
                # ones are long and heavy: a thin short flag taught the model little).
                xs = np.nonzero(img[y0] > 64)[0]
                tx = int(xs.mean()) if xs.size else (x0 + x1) // 2
                pen = int(np.clip(np.count_nonzero(img[y0 + h // 2] > 64) // 2 + 1, 2, 3))
                # Steeper than a 7's bar (rows down per column left), and no wider than
                # about half the height: flatter or wider, it is a 7.
                slope = rng.uniform(0.7, 1.5)
                reach = min(h * rng.uniform(0.2, 0.55) / slope, 0.45 * h)
                for t in range(int(reach) + 1):
                    yy, xx = y0 + int(t * slope), tx - t
                    if xx >= 0 and yy < 28:
                        img[yy : yy + pen, max(xx - pen // 2, 0) : xx + (pen + 1) // 2] = 255
                if rng.random() < 0.5:  # and a foot
                    bx = np.nonzero(img[y1] > 64)[0]
                    fx = int(bx.mean()) if bx.size else tx
                    img[y1 - 1 : y1 + 1, max(fx - 4, 0) : min(fx + 5, 28)] = 255
            out.append(img)
            out_labels.append(digit)
    return np.stack(out), np.array(out_labels, dtype=labels.dtype)
