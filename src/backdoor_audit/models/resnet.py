"""ResNet-18, CIFAR variant (He et al. 2016; as in kuangliu/pytorch-cifar and BackdoorBench).

Stem conv3x3(64, stride 1) + BN + ReLU, no max-pool; four stages of 64/128/256/512 channels with
2 basic blocks each (strides 1/2/2/2); global average pool (adaptive, so 28x28 inputs work too);
Linear(512, classes). The basic block is small_resnet's (conv-BN-ReLU-conv-BN + shortcut, a 1x1
conv + BN when the shape changes, then ReLU; the residual add is not in place).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .small_resnet import BasicBlock


def add_stages(net: nn.Module, block: Callable[[int, int, int], nn.Module], widths: tuple[int, ...]) -> int:
    """Give ``net`` stages ``layer1..layerN`` of two ``block(in, out, stride)`` each (stride 2 from the
    second stage on); return the channels of the last stage."""
    in_ch = widths[0]
    for i, width in enumerate(widths):
        setattr(net, f"layer{i + 1}", nn.Sequential(block(in_ch, width, 1 if i == 0 else 2), block(width, width, 1)))
        in_ch = width
    net.num_stages = len(widths)
    return in_ch


def run_stages(net: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Run ``net``'s stages from :func:`add_stages`, then global average pooling, flattened."""
    for i in range(net.num_stages):
        out = getattr(net, f"layer{i + 1}")(out)
    return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 8 basic blocks in 4 stages, ``layer1`` ... ``layer4`` as in the usual code."""

    def __init__(
        self, in_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.fc = nn.Linear(add_stages(self, BasicBlock, widths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.fc(run_stages(self, out))


@register_model("resnet-18")
def resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool)."""
    return ResNet18(in_shape, num_classes)
