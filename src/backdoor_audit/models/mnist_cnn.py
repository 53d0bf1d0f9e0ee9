"""The 4-layer CNN of the ANP paper's appendix for MNIST: 2 conv layers + 1 FC layer + output.

Conv(C,16,5)-ReLU-MaxPool2, Conv(16,32,5)-ReLU-MaxPool2, Flatten, Linear(->512)-ReLU,
Linear(512, classes): 48 conv neurons and 512 FC neurons.

"mnist-cnn-bn" adds BatchNorm after each conv and after the FC layer (BatchNorm1d), the form the
ANP authors' code can prune: it perturbs and masks only BatchNorm layers (NoisyBatchNorm2d and
NoisyBatchNorm1d), so its 16 + 32 + 512 = 560 neurons are BN channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class MnistCNN(nn.Module):
    """Two 5x5 conv blocks and a 512-unit hidden layer; works for any input size >= 16x16."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, batchnorm: bool = False) -> None:
        super().__init__()
        c = in_shape[0]

        def norm(n: int, dims: int = 2) -> nn.Module:
            if not batchnorm:
                return nn.Identity()
            return nn.BatchNorm2d(n) if dims == 2 else nn.BatchNorm1d(n)

        self.features = nn.Sequential(
            nn.Conv2d(c, 16, kernel_size=5, bias=not batchnorm),
            norm(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, bias=not batchnorm),
            norm(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 512, bias=not batchnorm),
            norm(512, dims=1),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("mnist-cnn")
def mnist_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ANP appendix MNIST CNN."""
    return MnistCNN(in_shape, num_classes)


@register_model("mnist-cnn-bn")
def mnist_cnn_bn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """ANP appendix MNIST CNN with BatchNorm after each hidden layer."""
    return MnistCNN(in_shape, num_classes, batchnorm=True)
