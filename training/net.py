"""The shipped CNN: small enough for fast CPU inference, deep enough for 99.6%+."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Net(nn.Module):
    """Three conv-BN-ReLU stages (32, 48, 96 channels) with max-pooling, then one linear layer.

    `classes` is 10 for digits only, or 11 with "not a digit" as the last class.

    Pooling early keeps the expensive convolutions at 14x14 and 7x7; BatchNorm folds into
    the convolutions at export, so inference is three convolutions and a matmul.
    """

    def __init__(
        self, widths: tuple[int, int, int] = (32, 48, 96), dropout: float = 0.2, classes: int = 10
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_block(1, w1),
            nn.MaxPool2d(2),  # 28 -> 14
            *_block(w1, w2),
            nn.MaxPool2d(2),  # 14 -> 7
            *_block(w2, w3),
            nn.MaxPool2d(2),  # 7 -> 3
        )
        self.flat_features = w3 * 3 * 3
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(self.flat_features, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_mflops(model: nn.Module) -> float:
    """Multiply-adds x 2 of convolutions and linear layers for one 1x28x28 image, in millions."""
    flops = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal flops
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        flops += 2 * out.numel() * k

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal flops
        flops += 2 * out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for h in handles:
        h.remove()
    return flops / 1e6
