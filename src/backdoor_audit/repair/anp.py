"""Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), faithful to Algorithm 1 and Eq. 8.

The mask optimisation itself (Algorithm 1 lines 2-12) is ``graph.masks.optimize_masks``, shared
with the scan. Neurons with m below the threshold are pruned (line 13), keeping their bias
(Section 3.3). With BatchNorm the unit is the BN channel: its scale and shift are masked and
perturbed ("Adaptation to Batch Normalization"); where the exporter folded BN into the conv, the
conv's own weight and bias are the unit (Eq. 3).
While the masks are optimised, BatchNormalization normalises with each batch's own statistics, as
in the authors' code (``model.train()``); with the stored running statistics instead
(``bn_stats="running"``) perturbations compound through the unnormalised layers and on a BN ResNet
we measured ANP pruning 316 of 560 BN channels (clean accuracy 98% -> 17%), against 25 channels
(ASR 100% -> 1.3%) with batch statistics. The written file always uses the stored statistics.
Algorithm 1 projects the perturbation back onto [-eps, eps] after the signed step; the authors'
code (``optimize_mask_cifar.py``) does not, so there the random start plus one step of eps reaches
up to 2*eps. ``noise_bound="none"`` runs that variant; docs/anp-mnist-table6.md measures both.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError
from ..export.masked import SEMANTICS
from ..graph.masks import optimize_masks
from ..options import Option
from .base import RepairContext, RepairResult, mean_biases, register_method

PAPER = "ANP Sec. 4.1"
OPTIONS = [
    Option("eps", float, 0.4, "perturbation budget of delta and xi", PAPER, minimum=0, maximum=1),
    Option("alpha", float, 0.2, "trade-off: weight of the clean loss against the perturbed one (Eq. 8)", PAPER,
           minimum=0, maximum=1),
    Option("lr", float, 0.2, "mask learning rate (SGD, constant)", PAPER, minimum=0, open_min=True),
    Option("momentum", float, 0.9, "SGD momentum of the masks", PAPER, minimum=0, maximum=1, open_max=True),
    Option("iterations", int, 2000, "mask optimisation steps", PAPER, minimum=1),
    Option("batch_size", int, 128, "images per step", PAPER, minimum=1),
    Option("steps", int, 1, "signed ascent steps on the perturbation per iteration", "ANP Sec. 4.3, Tables 3-4",
           minimum=1),
    Option("threshold", float, 0.2, "prune neurons whose mask is below this (Alg. 1 line 13)", PAPER,
           minimum=0, maximum=1),
    Option("fraction", float, None, "prune this share of neurons (lowest masks) instead of by threshold",
           "ANP Sec. 4.3, Fig. 3", minimum=0, maximum=1, open_max=True, optional=True),
    Option("include_head", bool, False, "also mask the classifier head"),
    Option("layers", str, "all", "all | conv | linear | comma-separated layer names", "ANP Appendix C.2 (Table 6)"),
    Option("bn_stats", str, "batch", "BatchNorm statistics while optimising: batch (the authors' code) or the "
           "stored running ones", "authors' code (model.train())", choices=("batch", "running")),
    Option("noise_bound", str, "project", "project the perturbation onto [-eps, eps] after the step (Alg. 1) or "
           "leave it unbounded up to 2*eps (the authors' code)", "ANP Alg. 1 lines 8-9", choices=("project", "none")),
    Option("renorm", str, "none", "conv: give conv channels that no BatchNorm follows (BN folded into the conv) a "
           "normalisation estimated on the clean images while the masks are optimised; a pruned channel then "
           "outputs its clean mean", "ours, after DESIGN.md (ANP's BN adaptation for folded files)",
           choices=("none", "conv")),
    Option("semantics", str, "keep-bias", "a pruned neuron: zero its weights and keep its bias (ANP), or zero both",
           "ANP Sec. 3.3", choices=SEMANTICS),
]


def prune_masks(scores: dict[str, np.ndarray], threshold: float | None = 0.2,
                fraction: float | None = None) -> dict[str, np.ndarray]:
    """0/1 masks: prune scores below ``threshold`` (Alg. 1 line 13), or the lowest ``fraction``."""
    if fraction is not None:
        if not 0 <= fraction < 1:
            raise SpecError(f"pruning fraction must be in [0, 1), got {fraction}")
        flat = np.concatenate(list(scores.values()))
        k = int(round(fraction * flat.size))
        order = np.argsort(flat, kind="stable")
        keep = np.ones(flat.size, dtype=np.float32)
        keep[order[:k]] = 0.0
        out, lo = {}, 0
        for name, s in scores.items():
            out[name] = keep[lo:lo + s.size]
            lo += s.size
        return out
    if threshold is None or not 0 <= threshold <= 1:
        raise SpecError(f"pruning threshold must be in [0, 1], got {threshold}")
    return {name: (s >= threshold).astype(np.float32) for name, s in scores.items()}


@register_method("anp", summary="Adversarial Neuron Pruning: optimise per-neuron masks under adversarial neuron "
                 "perturbation, prune masks below a threshold", source="Wu & Wang, NeurIPS 2021 (Alg. 1, Eq. 8)",
                 needs="labeled", options=OPTIONS)
def run_anp(ctx: RepairContext, **opts) -> RepairResult:
    x, y = ctx.labeled("anp")
    bar = None
    if ctx.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts["iterations"], desc="ANP masks", unit="it", leave=False)
    try:
        mod, log = optimize_masks(ctx.executor, ctx.inventory, x, y, eps=opts["eps"], alpha=opts["alpha"],
                                  lr=opts["lr"], momentum=opts["momentum"], iterations=opts["iterations"],
                                  batch_size=opts["batch_size"], steps=opts["steps"],
                                  include_head=opts["include_head"], layers=opts["layers"],
                                  bn_stats=opts["bn_stats"], noise_bound=opts["noise_bound"],
                                  renorm=opts["renorm"], seed=ctx.seed,
                                  callback=(lambda *_: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    scores = mod.per_layer(mod.mask)
    masks = prune_masks(scores, opts["threshold"], opts["fraction"])
    new_weights = mean_biases(ctx, mod.renorm, masks) if opts["semantics"] == "keep-bias" else {}
    return RepairResult("anp", dict(opts), masks=masks, semantics=opts["semantics"], scores=scores,
                        new_weights=new_weights, log=log)
