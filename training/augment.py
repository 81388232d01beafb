"""Batched augmentation that mimics real uploads after the service's preprocessing.

torchvision's transforms draw one set of parameters per call; here every image of a batch
gets its own rotation, scale, shift and shear in a single `grid_sample`, which is what makes
augmented training fit in minutes on two CPU cores.
"""

from __future__ import annotations

import math

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
) -> torch.Tensor:
    """Per-image random rotation/scale/shear/translation of a [N,1,28,28] batch in [0,1]."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-degrees, degrees) * math.pi / 180
    shear = uniform(-shear_degrees, shear_degrees) * math.pi / 180
    s = uniform(*scale)
    tx = uniform(-shift_px, shift_px) * 2 / x.shape[-1]
    ty = uniform(-shift_px, shift_px) * 2 / x.shape[-2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coordinates to input ones, so the matrix is the inverse warp.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / s
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / s
    theta[:, 1, 0] = sin / s
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
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


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Full training augmentation of a [N,1,28,28] batch of pixel values in [0,1]."""
    return random_affine(random_stroke(x, generator), generator).clamp_(0.0, 1.0)
