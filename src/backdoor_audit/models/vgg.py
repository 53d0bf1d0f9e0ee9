"""VGG-11 with BatchNorm for small (32x32 or 28x28) images.

Features: the VGG-11 ("A") config 64,M,128,M,256,256,M,512,512,M,512,512,M, each number a
conv3x3(pad 1, no bias)-BN-ReLU, each M a 2x2 max-pool. A max-pool that would meet a map
smaller than 2x2 is left out (a 28x28 input reaches 1x1 after four pools; 32x32 keeps all five).
Then an adaptive average pool to 1x1 and a classifier Linear(512,512)-ReLU-Linear(512,512)-ReLU-
Linear(512, classes) (the CIFAR-sized VGG classifier, without dropout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: tuple = VGG11, hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, h, w = in_shape
        for v in cfg:
            if v == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(out, 1))


@register_model("vgg-bn")
def vgg_bn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """VGG-11 with BatchNorm and a 512-512 classifier."""
    return VGG(in_shape, num_classes)
