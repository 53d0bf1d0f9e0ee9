"""FT-SAM (Zhu et al., ICCV 2023): fine-tuning with sharpness-aware minimisation.

Backdoor neurons sit where the loss is sharp in weight space; minimising the worst loss in a
neighbourhood of the weights moves them most. Each step first ascends to
``w + e(w)``, ``e(w) = rho * T(w)^2 g / ||T(w) g||`` with ``T(w) = |w|`` (adaptive SAM), takes the
gradient of the label-smoothed loss there, returns to ``w`` and steps with that gradient. Defaults
are BackdoorBench's ft-sam CIFAR-10 config, which the authors' code follows: rho 2.0, adaptive,
label smoothing 0.1, 100 epochs, SGD lr 0.01 (cosine), momentum 0.9, weight decay 5e-4, batch 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..graph.masks import batches
from ..options import Option
from ..training.train import augment_batch, make_scheduler
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, UNFOLD, Training, WeightEdit, augment_option, resolve_augment

SOURCE = "BackdoorBench config/defense/ft-sam/cifar10.yaml"
OPTIONS = [
    Option("rho", float, 2.0, "radius of the weight neighbourhood", SOURCE, minimum=0),
    Option("adaptive", bool, True, "scale the neighbourhood by |w| (adaptive SAM)", SOURCE),
    Option("label_smoothing", float, 0.1, "label smoothing of the loss", SOURCE, minimum=0, maximum=1,
           open_max=True),
    Option("epochs", int, 100, "passes over the clean images", SOURCE, minimum=1),
    Option("lr", float, 0.01, "SGD learning rate (cosine)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 256, "images per step", SOURCE, minimum=1),
    Option("momentum", float, 0.9, "SGD momentum", SOURCE, minimum=0, maximum=1, open_max=True),
    Option("weight_decay", float, 5e-4, "SGD weight decay", SOURCE, minimum=0),
    augment_option(),
    BN_MODE,
    UNFOLD,
]


def smooth_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against 1 - s on the label and s / (C - 1) on every other class."""
    c = logits.shape[1]
    target = torch.full_like(logits, smoothing / max(c - 1, 1))
    target.scatter_(1, y[:, None], 1.0 - smoothing)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@register_method("ft-sam", summary="fine-tuning with (adaptive) sharpness-aware minimisation",
                 source="Zhu et al., ICCV 2023", needs="labeled", options=OPTIONS)
def run_ftsam(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("ft-sam")
    raw, ex = ctx.raw, ctx.executor
    bs = min(opts["batch_size"], len(raw))
    iterations = opts["epochs"] * (len(raw) // bs)
    gen = torch.Generator().manual_seed(ctx.seed)
    aug = resolve_augment(opts["augment"], ctx, raw)
    feed = batches(len(raw), bs, gen)
    curve = []
    with WeightEdit(ctx) as edit:
        params = ctx.trainable()
        if not params:
            raise SpecError("the model has no trainable float weights")
        session = Training(ctx, params, opts["bn_mode"], opts["unfold"])
        plist = session.parameters
        opt = torch.optim.SGD(plist, lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"])
        sched = make_scheduler(opt, "cosine", opts["lr"], iterations)
        with session:
            for it in range(iterations):
                idx = next(feed).to(raw.device)
                xb = ctx.preprocess(augment_batch(raw[idx], aug, gen))
                loss = smooth_cross_entropy(ex(xb), y[idx], opts["label_smoothing"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():  # ascend to the sharpest point of the neighbourhood
                    scale = [p.abs() if opts["adaptive"] else torch.ones_like(p) for p in plist]
                    norm = torch.norm(torch.stack([(s * p.grad).norm() for s, p in zip(scale, plist)
                                                   if p.grad is not None]))
                    steps = []
                    for s, p in zip(scale, plist):
                        e = torch.zeros_like(p) if p.grad is None else s * s * p.grad * (opts["rho"] / (norm + 1e-12))
                        p.add_(e)
                        steps.append(e)
                opt.zero_grad(set_to_none=True)
                sharp = smooth_cross_entropy(ex(xb), y[idx], opts["label_smoothing"])
                sharp.backward()
                with torch.no_grad():
                    for e, p in zip(steps, plist):
                        p.sub_(e)
                opt.step()
                sched.step()
                if it % 20 == 0 or it == iterations - 1:
                    curve.append({"iteration": it, "loss": float(loss.detach()), "sharp_loss": float(sharp.detach())})
    return RepairResult("ft-sam", dict(opts), new_weights=edit.changed,
                        log={"curve": curve, "iterations": iterations, "augment": aug or "none",
                             "unfolded": session.unfolded})
