"""MobileNetV2 (Sandler et al. 2018), CIFAR variant as in kuangliu/pytorch-cifar.

Stem conv3x3(32, stride 1)-BN-ReLU6; inverted-residual stages (expansion t, channels c, blocks n,
first stride s) (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2),
(6,320,1,1): the stem and the second stage use stride 1 instead of ImageNet's 2, so a 32x32
input ends at 4x4. Then conv1x1(1280)-BN-ReLU6, adaptive average pool, Linear(1280, classes).

Block: conv1x1 expand-BN-ReLU6, depthwise conv3x3(stride)-BN-ReLU6, conv1x1 project-BN; for
stride 1 a shortcut is added (identity, or conv1x1-BN when the channel count changes, as in
kuangliu's code). ReLU6 is ``nn.ReLU6``, which exports to ONNX Clip(0, 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int) -> None:
        super().__init__()
        mid = expansion * in_ch
        self.stride = stride
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU6()
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


class MobileNetV2(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: tuple = CIFAR_CFG) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks: list[nn.Module] = []
        in_ch = 32
        for expansion, out_ch, n, stride in cfg:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_ch, out_ch, expansion, s))
                in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.act = nn.ReLU6()
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = self.act(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


@register_model("mobilenetv2")
def mobilenetv2(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """CIFAR MobileNetV2 (stride-1 stem and second stage)."""
    return MobileNetV2(in_shape, num_classes)
