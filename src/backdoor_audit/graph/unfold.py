"""BatchNorm put back behind folded convolutions while a method trains, and folded again after.

An eval-mode export folds each BatchNorm into its conv: ``W' = gamma / sigma * W``. Training ``W'``
directly at the learning rate that suits the BN model is a step ``(sigma / gamma)^2`` times larger in
the BN model's terms, and nothing renormalises the activations; on the CIFAR-10 zoo's folded
BadNets file 30 SGD steps at a constant lr 0.01 took the clean accuracy from 82% to 9%, where the
BN-kept file trains as usual. :class:`VirtualBatchNorm` restores the BN model's dynamics: each
folded conv's output o is normalised by the batch's statistics and scaled by a trainable
``gamma``/``beta`` initialised to o's clean-set deviation and mean (so the function starts where it
was), with running statistics kept as BN keeps them (momentum 0.1, unbiased variance). ``fold()``
gives the conv weight and bias that compute the trained layer with those running statistics:
``W * gamma / s_r`` and ``(b - mu_r) * gamma / s_r + beta`` -- initializers only, as the file had.
"""

from __future__ import annotations

import torch
from torch import nn

from .executor import OnnxExecutor
from .masks import conv_statistics
from .neurons import Layer


class VirtualBatchNorm:
    def __init__(self, executor: OnnxExecutor, layers: list[Layer], x: torch.Tensor, *, momentum: float = 0.1,
                 eps: float = 1e-5):
        self.executor, self.layers, self.momentum, self.eps = executor, list(layers), momentum, eps
        stats = conv_statistics(executor, self.layers, x, eps=eps)
        self.gamma = {n: nn.Parameter(sd.clone()) for n, (_, sd) in stats.items()}
        self.beta = {n: nn.Parameter(mu.clone()) for n, (mu, _) in stats.items()}
        self.run_mean = {n: mu.clone() for n, (mu, _) in stats.items()}
        self.run_var = {n: (sd * sd - eps).clamp_min(0) for n, (_, sd) in stats.items()}

    def parameters(self) -> list[nn.Parameter]:
        return [*self.gamma.values(), *self.beta.values()]

    def _fn(self, name: str):
        def fn(o: torch.Tensor) -> torch.Tensor:
            shape = [1, -1] + [1] * (o.dim() - 2)
            dims = [0] + list(range(2, o.dim()))
            mean, var = o.mean(dim=dims), o.var(dim=dims, unbiased=False)
            with torch.no_grad():
                n = o.numel() // max(o.shape[1], 1)
                self.run_mean[name].mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
                self.run_var[name].mul_(1 - self.momentum).add_(var.detach() * (n / max(n - 1, 1)),
                                                                alpha=self.momentum)
            z = (o - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
            return self.gamma[name].view(shape) * z + self.beta[name].view(shape)

        return fn

    def __enter__(self) -> "VirtualBatchNorm":
        for layer in self.layers:
            self.executor.set_output_modulator(layer.name, self._fn(layer.name))
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            self.executor.set_output_modulator(layer.name, None)

    def fold(self) -> None:
        """Write the trained layers, with the running statistics, into the convs' weights and biases."""
        ex = self.executor
        with torch.no_grad():
            for layer in self.layers:
                scale = self.gamma[layer.name] / torch.sqrt(self.run_var[layer.name] + self.eps)
                w, b = ex.value(layer.weight), ex.value(layer.bias)
                w.mul_(scale.view([-1] + [1] * (w.dim() - 1)))
                b.copy_((b - self.run_mean[layer.name]) * scale + self.beta[layer.name])


def foldable_convs(inventory) -> list[Layer]:
    """Conv layers with their own bias that no BatchNorm follows (in a file without BN nodes)."""
    if inventory.has_batchnorm:
        return []
    return [l for l in inventory.layers if l.kind == "conv" and l.bias is not None and l.bias_node == l.name]

