"""BN-statistics-based pruning, BNP (Zheng et al., NeurIPS 2022, "Pre-activation Distributions
Expose Backdoor Neurons").

A BatchNorm's running statistics were gathered on the (poisoned) training data; a backdoor neuron's
pre-activation there is a mixture of its benign and its poisoned population, so it sits far from
the same neuron's distribution on clean data. Per BN channel the KL divergence of the clean
Gaussian from the stored one (``graph.bnstats``) is compared within its layer, and channels above
mean + u * std (u = 3, std with Bessel's correction) are pruned: their BN scale set to 0, the
shift kept (the authors' defense.py). The authors take one batch of clean images for the clean
statistics; we take all of the defender's images (``n_images`` limits them), with the unbiased
variance as their code does.

A folded file has no running statistics: BNP says so and stops (exit 2).
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from ..graph.bnstats import bn_divergences
from ..options import Option
from .base import RepairContext, RepairResult, layer_limit, register_method

OPTIONS = [
    Option("u", float, 3.0, "prune channels whose KL divergence exceeds mean + u * std of their layer",
           "EP/BNP appendix B (u_K = 3) and the authors' defense.py", minimum=0),
    Option("n_images", int, 0, "clean images for the clean statistics (0: all)", minimum=0),
]


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
    x = ctx.x if n_images == 0 else ctx.x[:n_images]
    masks, scores = {}, {}
    for name, kl in bn_divergences(ctx.executor, ctx.inventory, x).items():
        masks[name] = (kl <= layer_limit(kl, u)).astype(np.float32)
        scores[name] = kl.astype(np.float32)
    return RepairResult("bnp", {"u": u, "n_images": n_images}, masks=masks, semantics="keep-bias", scores=scores,
                        log={"images": int(len(x)), "layers": len(masks)})
