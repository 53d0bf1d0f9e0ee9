"""Channel statistics over clean data (``channel_moments``, also behind ANP's re-estimated
normalisation in ``masks``), and how far a BatchNorm's stored statistics sit from them.

A BatchNormalization's running mean and variance were gathered on the training data, poisoned or
not. Per BN channel, with the mean and unbiased variance (mu1, v1) of the BN's input over clean
images and the stored (mu2, v2), the KL divergence of the two Gaussians

    KL = log(sqrt(v2) / sqrt(v1)) + (v1 + (mu1 - mu2)^2) / (2 v2) - 1/2

is large for a backdoor neuron, whose training population mixed benign and poisoned inputs (EP/BNP,
Zheng et al., NeurIPS 2022). BNP prunes on it (``repair.bnp``); the scan's ``bn-kl`` detector
judges whole models by it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SpecError
from .executor import OnnxExecutor
from .neurons import NeuronInventory


def channel_moments(executor: OnnxExecutor, names: list[str], x: torch.Tensor,
                    batch: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per tensor name: every channel's mean and (population) variance over ``x`` and all
    positions, in float64, and the number of values each is over; streamed in batches."""
    sums: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            got = executor.run(x[i:i + batch], capture=names)
            for n in names:
                o = got[n].transpose(0, 1).reshape(got[n].shape[1], -1).double()
                sums[n].append(torch.stack([o.sum(1), (o * o).sum(1), torch.full_like(o[:, 0], o.shape[1])]))
    out = {}
    for n in names:
        s, sq, count = torch.stack(sums[n]).sum(0)
        mean = s / count
        out[n] = (mean, (sq / count - mean * mean).clamp_min(0), int(count[0]))
    return out


def kl_divergence(mu1, v1, mu2, v2) -> np.ndarray:
    """KL(N(mu1, v1) || N(mu2, v2)) per channel."""
    return np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (mu1 - mu2) ** 2) / (2 * v2) - 0.5


def bn_layers(inventory: NeuronInventory) -> list:
    """The BatchNormalization layers whose statistics are initializers; SpecError for one that
    reads computed statistics. Empty for a folded file."""
    bns = [l for l in inventory.layers if l.kind == "bn"]
    missing = [l.name for l in bns if l.mean is None or l.var is None]
    if missing:
        raise SpecError(f"BatchNormalization {missing[0]} reads computed statistics, not initializers")
    return bns


def bn_divergences(executor: OnnxExecutor, inventory: NeuronInventory, x: torch.Tensor,
                   batch: int = 256) -> dict[str, np.ndarray]:
    """Per BN layer name, the KL divergence of every channel's clean statistics (over ``x``) from
    the stored ones."""
    bns = bn_layers(inventory)
    names = [executor.node_input(l.name) for l in bns]
    moments = channel_moments(executor, names, x, batch)
    out = {}
    for layer, n in zip(bns, names):
        mean, var, count = moments[n]
        mu1 = mean.cpu().numpy()
        v1 = (var * count / max(count - 1, 1)).cpu().numpy()  # unbiased, as the authors' code
        mu2 = executor.value(layer.mean).detach().double().cpu().numpy()
        v2 = executor.value(layer.var).detach().double().cpu().numpy()
        out[layer.name] = kl_divergence(mu1, np.maximum(v1, 1e-12), mu2, np.maximum(v2, 1e-12))
    return out
