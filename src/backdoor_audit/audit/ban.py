"""BAN: backdoors activated by adversarial neuron noise (Xu et al., NeurIPS 2024), as a detector.

Two steps, as the authors' ``ban_detection.py`` runs them:

1. **Feature decoupling.** A mask m in [0, 1] over the classifier head's input features is learned
   with Adam (lr 0.01) so that the masked features ``m * z`` keep the clean prediction and the
   rest ``(1 - m) * z`` lose it:  ``CE(h(m z), y) - CE(h((1 - m) z), y) + lambda |m|_1 / sg(|m|_1)``
   (``sg``: the norm's value without gradient, as their code divides by ``mask_norm.item()``).
   The benign features end up in m; what is left in 1 - m is where a backdoor's features live.
2. **Adversarial neuron noise.** Every hidden neuron's weight is scaled by 1 + delta_k and its
   bias by 1 + xi_k (ANP's perturbation; on a BN-kept file the BN scale and shift, on a folded
   file the conv channel behind a normalisation re-estimated on the clean images, as our ANP's
   ``renorm=conv``), from a uniform start in [-eps, eps], by signed gradient steps of eps/steps
   that raise the clean loss, unprojected as in their code.

Then the clean images go through the noisy model with only the negative features ``(1 - m) z``.
A backdoored model sends them to its target: the noise activates the backdoor neurons and the
negative features carry them. The score is the largest share of the other classes' images that
land on one class (the attack success rate of the activated backdoor); that class is the
suspect. A clean model's errors spread over the classes.

Our reformulation for any ONNX file: the features are whatever the head (the last weight layer)
reads, the authors' layer-4 map of their ResNet-18 when the head is a 1x1 conv, the pooled
vector when it is a Gemm; the noise is found on the whole clean set at once (the authors restart it
on each of ten batches of 128 and keep the last batch's). It sees only the model and clean images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..graph.masks import batches, conv_statistics
from ..graph.model import predict
from ..graph.modulate import Modulation
from ..options import Option
from .detectors import Detection, ScanContext, register_detector
from .hazards import Finding
from .probe import noise_ascent

OPTIONS = [
    Option("eps", float, 0.3, "neuron noise budget (uniform start in [-eps, eps])", "BAN README (--eps 0.3)",
           minimum=0, open_min=True),
    Option("noise_steps", int, 30, "signed gradient steps of the noise, each eps/noise_steps",
           "BAN README (--steps 30)", minimum=1),
    Option("mask_lambda", float, 0.75, "weight of the feature mask's normalised L1 norm",
           "BAN README (--mask-lambda 0.75)", minimum=0),
    Option("mask_steps", int, 200, "Adam steps of the feature mask (batches of 128)",
           "BAN code (20 epochs of 10 batches)", minimum=1),
    Option("mask_lr", float, 0.01, "Adam learning rate of the feature mask", "BAN code (--mask-lr)", minimum=0,
           open_min=True),
    Option("share", float, 0.75, "flag when this share of the other classes' clean images go to one class",
           "BAN code's acc_threshold 0.25, read as 1 - 0.25", minimum=0, maximum=1),
    Option("top", int, 10, "features of the negative mask reported as suspects", minimum=1),
]


def _head_input(ctx: ScanContext) -> tuple[str, int, str]:
    """(head node, the input slot its features come in at, that tensor's name)."""
    ex, inv = ctx.model.executor, ctx.model.inventory
    heads = [l for l in inv.layers if l.head]
    if not heads:
        raise SpecError(f"detector ban: {ctx.path} has no classifier head (a last Conv/Gemm/MatMul with "
                        "initializer weights) whose input features could be masked")
    head = heads[0]
    node = next(n for n in ex.nodes if n.ctx.name == head.name)
    weight_feed = {head.weight, ex.node_output(head.weight_node) if head.weight_node else None}
    for slot, name in enumerate(node.inputs):
        if name and name not in weight_feed and name != head.bias and not ex.has_value(name):
            return head.name, slot, name
    raise SpecError(f"detector ban: the head {head.name} of {ctx.path} reads no computed features")


def _top_share(pred: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[float, int, list[float]]:
    """The largest share of the other classes' images predicted as one class, that class, and
    every class's share."""
    shares = []
    for c in range(num_classes):
        other = y != c
        shares.append(float((pred[other] == c).mean()) if other.any() else 0.0)
    top = int(np.argmax(shares))
    return shares[top], top, [round(s, 4) for s in shares]


@register_detector("ban", summary="adversarial neuron noise with the classifier's benign features masked out: a "
                   "backdoored model sends the clean images to its target", source="Xu et al., NeurIPS 2024 (BAN)",
                   needs="labeled", options=OPTIONS)
def detect_ban(ctx: ScanContext, *, eps: float, noise_steps: int, mask_lambda: float, mask_steps: int,
               mask_lr: float, share: float, top: int) -> Detection:
    ex, inv = ctx.model.executor, ctx.model.inventory
    x, y = ctx.x, ctx.y
    node, slot, feat_name = _head_input(ctx)
    with torch.no_grad():
        feat_shape = tuple(ex.run(x[:2], capture=[feat_name])[feat_name].shape[1:])
    gen = torch.Generator().manual_seed(ctx.seed)
    mask = torch.rand(feat_shape, generator=gen).to(ex.device).requires_grad_(True)
    opt = torch.optim.Adam([mask], lr=mask_lr)
    ex.requires_grad_weights(False)
    bar = ctx.bar(mask_steps + noise_steps, "BAN")
    gate = {"m": None}
    ex.set_modulator(node, slot, lambda z: z * gate["m"] if gate["m"] is not None else z)
    units = inv.units()
    folded = [l for l in units if l.op == "Conv"]  # no BN follows: a folded file's channels
    try:
        feed = batches(len(x), min(128, len(x)), gen)
        for _ in range(mask_steps):
            idx = next(feed).to(x.device)
            gate["m"] = mask
            loss_pos = F.cross_entropy(ex(x[idx]), y[idx])
            gate["m"] = 1 - mask
            loss_neg = F.cross_entropy(ex(x[idx]), y[idx])
            norm = mask.abs().sum()
            loss = loss_pos - loss_neg + mask_lambda * norm / norm.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
            if bar:
                bar.update(1)
        m = mask.detach()
        gate["m"] = None
        renorm = conv_statistics(ex, folded, x)
        mod = Modulation(ex, units, renorm=renorm, renorm_batch=False)
        with mod:
            mod.perturb = True
            with torch.no_grad():
                mod.delta.uniform_(-eps, eps, generator=torch.Generator(device=mod.delta.device).manual_seed(ctx.seed))
                mod.xi.uniform_(-eps, eps, generator=torch.Generator(device=mod.delta.device).manual_seed(ctx.seed + 1))
            noise_ascent(mod, ex, x, y, steps=noise_steps, step=eps / noise_steps, bound=None,
                         callback=(lambda: bar.update(1)) if bar else None)
            plain = predict(ex, x).argmax(1).cpu().numpy()
            gate["m"] = 1 - m
            negative = predict(ex, x).argmax(1).cpu().numpy()
    finally:
        ex.set_modulator(node, slot, None)
        if bar:
            bar.close()
    yy = y.cpu().numpy()
    score, target, shares = _top_share(negative, yy, ctx.num_classes)
    flagged = score >= share
    neg = (1 - m).cpu().numpy()
    per_feature = neg.reshape(neg.shape[0], -1).mean(1) if neg.ndim > 1 else neg
    order = np.argsort(-per_feature, kind="stable")[:top]
    suspects = [(feat_name, int(i), round(float(per_feature[i]), 4)) for i in order]
    findings = []
    if flagged:
        findings.append(Finding("ban.noise-activated", "high",
                                f"under neuron noise (eps {eps}), with the benign features masked out, {score:.0%} of "
                                f"the other classes' clean images go to class {target}",
                                {"target": target, "share": round(score, 4)}))
    return Detection("ban", score, share, flagged, target if flagged else None, findings, suspects, evidence={
        "top_class": target, "class_share": shares,
        "accuracy_noise_negative": round(float((negative == yy).mean()), 4),
        "accuracy_noise": round(float((plain == yy).mean()), 4),
        "noise_top_share": round(_top_share(plain, yy, ctx.num_classes)[0], 4),
        "features": feat_name, "feature_shape": list(feat_shape), "mask_mean": round(float(m.mean()), 4),
        "units": int(mod.size), "renormalised_layers": len(renorm)})
