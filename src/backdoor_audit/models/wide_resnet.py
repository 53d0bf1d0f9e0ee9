"""Wide ResNet (Zagoruyko & Komodakis 2016), depth 28, widen factor 1: WRN-28-1.

Stem conv3x3(16); three groups of (28 - 4) / 6 = 4 pre-activation basic blocks with 16k/32k/64k
channels for k = 1, i.e. 16/32/64 (strides 1/2/2); final BN-ReLU, adaptive average pool,
Linear(64, classes). No dropout. Block (as in the reference code): BN-ReLU, conv3x3(stride)-BN-
ReLU-conv3x3, plus the identity when the shape is kept, else a 1x1 conv (no BN) applied to the
pre-activated input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .preact_resnet import PreActBlock  # the same pre-activation basic block
from .registry import register_model


class WideResNet(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, depth: int = 28, widen: int = 1) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False)
        in_ch = widths[0]
        for g, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_ch, width, s))
                in_ch = width
            setattr(self, f"block{g + 1}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


@register_model("wrn-28-1")
def wrn_28_1(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """WideResNet-28-1 (16/16/32/64 channels, pre-activation blocks)."""
    return WideResNet(in_shape, num_classes, depth=28, widen=1)
