"""The 5-layer fully-connected network of the ANP paper's appendix for MNIST.

Flatten, then 4 hidden Linear(->500)-ReLU layers (2000 hidden neurons, the count in the
appendix's Table 5) and Linear(500, classes). Works for any (C, H, W): the first layer takes
C*H*W inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class MnistFC(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 500, depth: int = 4) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        width = c * h * w
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


@register_model("mnist-fc")
def mnist_fc(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ANP appendix MNIST fully-connected network (4 x 500 hidden units)."""
    return MnistFC(in_shape, num_classes)
