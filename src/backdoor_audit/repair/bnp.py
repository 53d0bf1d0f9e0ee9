"""BN-statistics-based pruning, BNP (Zheng et al., NeurIPS 2022, "Pre-activation Distributions
Expose Backdoor Neurons").

A BatchNorm's running statistics were gathered on the (poisoned) training data; a backdoor neuron's
pre-activation there is a mixture of its benign and its poisoned population, so it sits far from
the same neuron's distribution on clean data. Per BN channel k, with the clean mean and variance
(mu1, v1) of the BN input and the stored ones (mu2, v2), the KL divergence of the two Gaussians

    KL_k = log(sqrt(v2) / sqrt(v1)) + (v1 + (mu1 - mu2)^2) / (2 v2) - 1/2

is compared within its layer, and channels above mean + u * std (u = 3, std with Bessel's
correction) are pruned: their BN scale set to 0, the shift kept (the authors' defense.py). The
authors take one batch of clean images for (mu1, v1); we take all of the defender's images
(``n_images`` limits them), with the unbiased variance as their code does.

A folded file has no running statistics: BNP says so and stops (exit 2).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, layer_limit, register_method

OPTIONS = [
    Option("u", float, 3.0, "prune channels whose KL divergence exceeds mean + u * std of their layer",
           "EP/BNP appendix B (u_K = 3) and the authors' defense.py", minimum=0),
    Option("n_images", int, 0, "clean images for the clean statistics (0: all)", minimum=0),
]


def kl_divergence(mu1, v1, mu2, v2) -> np.ndarray:
    """KL(N(mu1, v1) || N(mu2, v2)) per channel."""
    return np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (mu1 - mu2) ** 2) / (2 * v2) - 0.5


@register_method("bnp", summary="BN-statistics pruning: prune BN channels whose clean pre-activation statistics "
                 "diverge most from the stored (training) ones", source="Zheng et al., NeurIPS 2022",
                 needs="unlabeled", options=OPTIONS)
def run_bnp(ctx: RepairContext, *, u: float, n_images: int) -> RepairResult:
    bns = [l for l in ctx.inventory.layers if l.kind == "bn"]
    if not bns:
        raise SpecError("bnp needs BatchNormalization running statistics, and this file has none (BN folded into "
                        "the convolutions at export, or never there); try clp, nc or anp --param renorm=conv")
    if ctx.x is None:
        raise SpecError("bnp needs clean images (--data; labels are not used)")
    missing = [l.name for l in bns if l.mean is None or l.var is None]
    if missing:
        raise SpecError(f"BatchNormalization {missing[0]} reads computed statistics, not initializers")
    ex = ctx.executor
    x = ctx.x if n_images == 0 else ctx.x[:n_images]
    names = [ex.node_input(l.name) for l in bns]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(x), 256):
            got = ex.run(x[i:i + 256], capture=names)
            for n in names:
                parts[n].append(got[n].transpose(0, 1).reshape(got[n].shape[1], -1).double())
    masks, scores = {}, {}
    for layer, n in zip(bns, names):
        feats = torch.cat(parts[n], dim=1)
        mu1, v1 = feats.mean(1).cpu().numpy(), feats.var(1, unbiased=True).cpu().numpy()
        mu2 = ex.value(layer.mean).detach().double().cpu().numpy()
        v2 = ex.value(layer.var).detach().double().cpu().numpy()
        kl = kl_divergence(mu1, np.maximum(v1, 1e-12), mu2, np.maximum(v2, 1e-12))
        limit = layer_limit(kl, u)
        masks[layer.name] = (kl <= limit).astype(np.float32)
        scores[layer.name] = kl.astype(np.float32)
    return RepairResult("bnp", {"u": u, "n_images": n_images}, masks=masks, semantics="keep-bias", scores=scores,
                        log={"images": int(len(x)), "layers": len(masks)})
