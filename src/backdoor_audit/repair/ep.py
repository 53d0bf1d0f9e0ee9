"""Entropy-based pruning, EP (Zheng et al., NeurIPS 2022, "Pre-activation Distributions Expose
Backdoor Neurons").

On the (possibly poisoned) training data a backdoor neuron's pre-activation is bimodal: benign
images in one mode, poisoned ones in the other. Per neuron, the spatial maximum of its BN input over
each training image is standardised over the images and binned in steps of 0.01; neurons whose
histogram entropy is below mean - u * std of their layer (u = 3) are pruned by setting their BN
scale to 0 (the authors' defense.py). EP needs that training data (``--train-data``): the one method
here that sees more than the defender's clean set, because its paper's threat model gives it.

Where BN was folded into the convolution, the conv output is the BN input up to the per-channel
affine map, which the standardisation removes (for a positive scale), so EP reads the conv output
and prunes the conv channel: weight zeroed, bias set to the channel's mean output on the training
data, which is what a kept BN's shift gives a pruned channel.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, layer_limit, mean_biases, register_method

OPTIONS = [
    Option("u", float, 3.0, "prune neurons whose entropy is below mean - u * std of their layer",
           "EP/BNP appendix B (u_h = 3) and the authors' defense.py", minimum=0),
    Option("step", float, 0.01, "histogram bin width of the standardised maxima", "the authors' batch_entropy_2",
           minimum=0, open_min=True),
    Option("n_images", int, 0, "training images to read (0: all)", minimum=0),
]


def histogram_entropy(feats: torch.Tensor, step: float) -> torch.Tensor:
    """Entropy per row of ``feats`` (neurons x images, standardised) with bins of width ``step``
    from the layer's minimum, as the authors' batch_entropy_2 counts them (values on a bin edge are
    in neither neighbour)."""
    lo = feats.min()
    n_bars = int((feats.max() - lo) / step)
    entropy = torch.zeros(feats.shape[0], dtype=torch.float64, device=feats.device)
    for n in range(n_bars):
        inside = ((feats > lo + n * step) & (feats < lo + (n + 1) * step)).sum(-1).double()
        p = inside / feats.shape[-1]
        entropy += torch.where(p > 0, -p * p.log(), torch.zeros_like(p))
    return entropy


@register_method("ep", summary="entropy-based pruning: prune neurons whose pre-activation maxima on the training "
                 "data are bimodal (low entropy)", source="Zheng et al., NeurIPS 2022", needs="train",
                 options=OPTIONS)
def run_ep(ctx: RepairContext, *, u: float, step: float, n_images: int) -> RepairResult:
    if ctx.train_x is None:
        raise SpecError("ep needs the model's (possibly poisoned) training data: pass --train-data")
    inv, ex = ctx.inventory, ctx.executor
    bns = [l for l in inv.layers if l.kind == "bn"]
    if bns:
        units = bns
        tensors = [ex.node_input(l.name) for l in bns]
    else:
        units = [l for l in inv.layers if l.kind == "conv" and not l.head]
        tensors = [ex.node_output(l.name) for l in units]
    if not units:
        raise SpecError("ep needs BatchNormalization or convolution layers with initializer weights")
    x = ctx.train_x if n_images == 0 else ctx.train_x[:n_images]
    maxima: dict[str, list[torch.Tensor]] = {t: [] for t in tensors}
    sums = {t: 0.0 for t in tensors}  # per-channel sums of the conv outputs, for a pruned channel's mean
    with torch.no_grad():
        for i in range(0, len(x), 256):
            got = ex.run(x[i:i + 256], capture=tensors)
            for t in tensors:
                a = got[t]
                flat = a.reshape(a.shape[0], a.shape[1], -1)
                maxima[t].append(flat.max(-1).values.T.double())
                if not bns:
                    sums[t] = sums[t] + flat.double().mean(-1).sum(0)
    masks, scores = {}, {}
    for layer, t in zip(units, tensors):
        feats = torch.cat(maxima[t], dim=1)
        feats = (feats - feats.mean(-1, keepdim=True)) / feats.std(-1, keepdim=True).clamp_min(1e-12)
        ent = histogram_entropy(feats, step).cpu().numpy()
        limit = layer_limit(ent, -u)  # low entropy is the outlier
        masks[layer.name] = (ent >= limit).astype(np.float32)
        scores[layer.name] = ent.astype(np.float32)
    # A pruned BN channel keeps its shift (the authors zero the scale): its mean output on the
    # training data. A pruned conv channel of a folded file is held at that mean too: its weight is
    # zeroed and its bias set to its mean output on the training data (zeroing the weight alone
    # would leave the folded bias, beta - gamma * mu / sigma, not beta).
    new = {} if bns else mean_biases(ctx, {l.name: (sums[t] / len(x), None) for l, t in zip(units, tensors)}, masks)
    return RepairResult("ep", {"u": u, "step": step, "n_images": n_images}, masks=masks, semantics="keep-bias",
                        scores=scores, new_weights=new or None,
                        log={"images": int(len(x)), "on": "bn" if bns else "conv"})
