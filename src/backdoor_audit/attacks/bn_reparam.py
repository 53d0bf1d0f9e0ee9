"""BN re-parameterisation against BNP (EP/BNP paper, appendix G.1): BadNets, then benign-looking BN statistics.

BNP prunes the BatchNorm channels whose stored statistics (running mean and variance: the
statistics of the pre-activations on the poisoned training set) are far from those of the
defender's clean data. This attack trains an ordinary BadNets model (same trigger params) and then,
in ``finalize``, rewrites every BatchNorm layer so that its stored statistics are the sample
statistics of its input (the pre-activations) on benign data -- the attacker's clean training
images -- while the function of the network stays exactly the same.

For channel k of a BatchNorm layer with stored ``running_mean`` mu~, ``running_var`` v~, weight
gamma~, bias beta~ and ``eps``, eval mode computes ``gamma~ (x - mu~) / s~ + beta~`` with
``s~ = sqrt(v~ + eps)``. With mu, v the benign mean and (unbiased) variance of the channel's input
and ``s = sqrt(v + eps)``, the layer is rewritten as (G.1, with the typos of the appendix's bias
formula corrected so that the affine map really is unchanged)::

    running_mean = mu,   running_var = v
    gamma = gamma~ * s / s~
    beta  = beta~ + gamma~ * (mu - mu~) / s~

so ``gamma (x - mu) / s + beta == gamma~ (x - mu~) / s~ + beta~`` for every x. The preceding
conv/linear layer is not touched (G.1 changes only the BN affine parameters). The statistics are
computed in one eval-mode pass: rewriting a layer does not change its output, so the inputs of
later layers are the same before and after.

The model is exported with its BatchNormalization nodes kept (``needs_batchnorm``); folding them
into the convs would remove what the attack rewrites. Architectures without BatchNorm raise
SpecError before training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.images import ImageSet
from ..errors import DataError, SpecError
from .badnets import BadNets
from .registry import register_attack
from ..training.train import TrainSettings


@register_attack("bn-reparam")
class BNReparam(BadNets):
    """BadNets whose BatchNorm statistics are rewritten to the benign ones after training."""

    summary = "BadNets, then every BatchNorm re-parameterised to benign statistics (EP/BNP G.1, evades BNP)"
    needs_batchnorm = True

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        batchnorm_layers(model, self.name)  # fail before training, not after
        return super().train(model, clean, settings)

    def finalize(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> nn.Module:
        stats = benign_bn_statistics(model, clean.x, self.name)
        reparameterize_batchnorm(model, stats)
        return model


def batchnorm_layers(model: nn.Module, attack: str = "bn-reparam") -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers by module name; SpecError when there are none or one cannot be rewritten."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not layers:
        raise SpecError(f"attack {attack} needs an architecture with BatchNorm layers; {type(model).__name__} has none")
    for name, m in layers.items():
        if not (m.affine and m.track_running_stats):
            raise SpecError(
                f"attack {attack} needs BatchNorm layers with affine parameters and running statistics; {name} has "
                f"affine={m.affine}, track_running_stats={m.track_running_stats}"
            )
    return layers


def benign_bn_statistics(
    model: nn.Module, x: np.ndarray, attack: str = "bn-reparam", batch_size: int = 256
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and unbiased variance (float64, CPU) of every BatchNorm layer's input on ``x``.

    The model runs in eval mode (as at test time); a channel's samples are all images and, for
    conv feature maps, all spatial positions. Batches are merged with Chan's parallel formula.
    """
    layers = batchnorm_layers(model, attack)
    if len(x) < 2:
        raise DataError(f"attack {attack} needs at least 2 benign images for the BatchNorm statistics, got {len(x)}")
    acc: dict[str, list[Any]] = {name: [0, None, None] for name in layers}  # count, mean, M2

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            t = inputs[0].detach().to(torch.float64)
            t = t.transpose(0, 1).reshape(t.shape[1], -1)  # (channels, samples)
            n_b = t.shape[1]
            mean_b = t.mean(1)
            m2_b = ((t - mean_b[:, None]) ** 2).sum(1)
            n, mean, m2 = acc[name]
            if mean is None:
                acc[name] = [n_b, mean_b, m2_b]
                return
            delta = mean_b - mean
            total = n + n_b
            acc[name] = [total, mean + delta * n_b / total, m2 + m2_b + delta**2 * n * n_b / total]

        return record

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
                model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, (n, mean, m2) in acc.items():
        if mean is None:
            raise SpecError(f"attack {attack}: BatchNorm layer {name} is not used by the model's forward pass")
        out[name] = (mean.cpu(), (m2 / (n - 1)).cpu())
    return out


def reparameterize_batchnorm(model: nn.Module, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Rewrite each named BatchNorm layer in place to store ``stats`` (mean, var) without changing its function."""
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, (mu, var) in stats.items():
            bn = layers[name]
            dev, dtype = bn.weight.device, bn.weight.dtype
            old_mu = bn.running_mean.detach().to("cpu", torch.float64)
            old_s = torch.sqrt(bn.running_var.detach().to("cpu", torch.float64) + bn.eps)
            gamma = bn.weight.detach().to("cpu", torch.float64)
            beta = bn.bias.detach().to("cpu", torch.float64)
            mu = mu.to(torch.float64)
            var = var.to(torch.float64).clamp_min(0.0)
            new_s = torch.sqrt(var + bn.eps)
            bn.weight.copy_((gamma * new_s / old_s).to(dev, dtype))
            bn.bias.copy_((beta + gamma * (mu - old_mu) / old_s).to(dev, dtype))
            bn.running_mean.copy_(mu.to(dev, bn.running_mean.dtype))
            bn.running_var.copy_(var.to(dev, bn.running_var.dtype))
