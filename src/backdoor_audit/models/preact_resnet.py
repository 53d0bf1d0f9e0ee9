"""Pre-activation ResNet-18, CIFAR variant (He et al. 2016, "Identity Mappings in Deep Residual
Networks"), laid out as BackdoorBench's ``preact_resnet.PreActResNet18``.

Stem conv3x3(64, stride 1, no BN/ReLU after it), four stages of 64/128/256/512 channels with 2
pre-activation blocks each (strides 1/2/2/2), adaptive global average pool, Linear(512, classes).
Block: BN-ReLU, then conv3x3-BN-ReLU-conv3x3, plus a shortcut: the identity, or (when the shape
changes) a 1x1 conv without BN applied to the pre-activated input. Like BackdoorBench (and
kuangliu/pytorch-cifar) there is no final BN-ReLU before the pool, unlike the paper's Fig. 1.

So the BatchNorm layers here normalise a residual sum or a stage input, not (only) a conv output:
``bn1`` of each block follows the previous block's Add, and only ``bn2`` follows a conv, so an
exporter can fold at most the ``bn2`` layers into convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .resnet import add_stages, run_stages


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(
        self, in_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False)
        self.linear = nn.Linear(add_stages(self, PreActBlock, widths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(run_stages(self, self.conv1(x)))


@register_model("preact-resnet-18")
def preact_resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR PreAct-ResNet-18 as in BackdoorBench."""
    return PreActResNet18(in_shape, num_classes)
