"""ResNet-18, CIFAR variant (He et al. 2016; as in kuangliu/pytorch-cifar and BackdoorBench).

Stem conv3x3(64, stride 1) + BN + ReLU, no max-pool; four stages of 64/128/256/512 channels with
2 basic blocks each (strides 1/2/2/2); global average pool (adaptive, so 28x28 inputs work too);
Linear(512, classes). The basic block is small_resnet's (conv-BN-ReLU-conv-BN + shortcut, a 1x1
conv + BN when the shape changes, then ReLU; the residual add is not in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .small_resnet import BasicBlock


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 8 basic blocks in 4 stages, ``layer1`` ... ``layer4`` as in the usual code."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(in_ch, width, stride), BasicBlock(width, width, 1)))
            in_ch = width
        self.num_stages = len(widths)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


@register_model("resnet-18")
def resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool)."""
    return ResNet18(in_shape, num_classes)
