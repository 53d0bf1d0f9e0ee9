"""Reconstructive Neuron Pruning, RNP (Li et al., ICML 2023).

Unlearn, then recover, then prune. First the model is pushed to *forget* the clean images by
gradient ascent on their loss (SGD lr 0.01, momentum 0.9, weight decay 5e-4, gradients clipped to
norm 20, BatchNorm in train mode, the lr divided by 10 after 10 epochs) until its accuracy on them is
at most 20%: the clean features go first, the backdoor's survive. Then per-neuron masks in [0, 1] on
the *unlearned* model are trained to recover the clean accuracy (SGD lr 0.2, momentum 0.9, loss
0.2 * CE, 20 epochs): the masks of backdoor neurons, which recovery does not need, fall. Neurons whose
mask is below the threshold are pruned in the *original* model; nothing else changes.

Defaults are the authors' main.py. Their code then sweeps the pruning threshold and reads the
result on test data; we prune at a fixed threshold of 0.2 (ANP's) instead, or at the largest
threshold whose held-out clean accuracy stays within ``max_acc_drop`` of the original when that is
given. Units are BN channels where BN is kept and conv/linear channels where it was folded (as ANP);
on a folded file the unlearning runs with BN put back behind the convs (``unfold=conv``, as the
fine-tuning methods), folded in again before the masks are recovered.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.splits import holdout_split
from ..graph.masks import batches, conv_statistics
from ..graph.model import accuracy
from ..graph.modulate import Modulation
from ..options import Option
from .base import RepairContext, RepairResult, mean_biases, register_method
from .finetune import UNFOLD, Training, WeightEdit

SOURCE = "RNP authors' main.py"
OPTIONS = [
    Option("unlearn_lr", float, 0.01, "learning rate of the unlearning", SOURCE, minimum=0, open_min=True),
    Option("unlearn_epochs", int, 20, "at most this many epochs of unlearning", SOURCE, minimum=1),
    Option("clean_threshold", float, 0.2, "stop unlearning once accuracy on the clean images is at most this",
           SOURCE, minimum=0, maximum=1),
    Option("recover_lr", float, 0.2, "learning rate of the masks", SOURCE, minimum=0, open_min=True),
    Option("recover_epochs", int, 20, "epochs of mask recovery", SOURCE, minimum=1),
    Option("alpha", float, 0.2, "weight of the recovery loss", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 128, "images per step", SOURCE, minimum=1),
    Option("threshold", float, 0.2, "prune neurons whose recovered mask is below this", "ANP Sec. 4.1 (ours)",
           minimum=0, maximum=1),
    Option("max_acc_drop", float, None, "instead: the largest threshold (in steps of 0.05, as the authors' sweep) "
           "whose accuracy on a held-out 20% of the clean images drops at most this many points", minimum=0,
           optional=True),
    Option("include_head", bool, False, "also mask the classifier head"),
    UNFOLD,
]


@register_method("rnp", summary="Reconstructive Neuron Pruning: unlearn the clean images, recover with neuron "
                 "masks, prune the neurons recovery does not need", source="Li et al., ICML 2023",
                 needs="labeled", options=OPTIONS)
def run_rnp(ctx: RepairContext, **opts) -> RepairResult:
    x, y = ctx.labeled("rnp")
    ex = ctx.executor
    held = None
    if opts["max_acc_drop"] is not None:
        keep, held = holdout_split(len(x), 0.2, ctx.seed)
        keep, held = torch.as_tensor(keep), torch.as_tensor(held)
        x_fit, y_fit = x[keep], y[keep]
    else:
        x_fit, y_fit = x, y
    gen = torch.Generator().manual_seed(ctx.seed)
    bs = min(opts["batch_size"], len(x_fit))
    per_epoch = len(x_fit) // bs
    units = ctx.inventory.units(include_head=opts["include_head"])
    folded = [u for u in units if u.op == "Conv"] if opts["unfold"] == "conv" else []
    original = conv_statistics(ex, folded, x_fit)  # where a pruned folded channel is held: its clean mean
    log: dict = {}
    with WeightEdit(ctx):  # the unlearned weights are thrown away: only the masks are kept
        session = Training(ctx, ctx.trainable(), "update", opts["unfold"])
        trained = session.parameters
        opt = torch.optim.SGD(trained, lr=opts["unlearn_lr"], momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)
        feed = batches(len(x_fit), bs, gen)
        epochs_run, acc = 0, 1.0
        with session:  # on a folded file with unfold=conv, the put-back BN is folded in on leaving
            for epoch in range(opts["unlearn_epochs"]):
                correct = 0
                for _ in range(per_epoch):
                    idx = next(feed).to(x.device)
                    logits = ex(x_fit[idx])
                    loss = F.cross_entropy(logits, y_fit[idx])
                    correct += int((logits.detach().argmax(1) == y_fit[idx]).sum())
                    opt.zero_grad(set_to_none=True)
                    (-loss).backward()
                    torch.nn.utils.clip_grad_norm_(trained, max_norm=20)
                    opt.step()
                sched.step()
                epochs_run, acc = epoch + 1, correct / (per_epoch * bs)
                if acc <= opts["clean_threshold"]:
                    break
        log.update(unlearn_epochs=epochs_run, unlearned_accuracy=acc)
        # recovery: masks on the unlearned model
        # on folded convs the masks act after a re-estimated normalisation, as a kept BN's scale (ANP renorm)
        mod = Modulation(ex, units, renorm=conv_statistics(ex, folded, x_fit), renorm_batch=True)
        mod.mask.requires_grad_(True)
        mopt = torch.optim.SGD([mod.mask], lr=opts["recover_lr"], momentum=0.9)
        previous = ex.batchnorm_mode("batch")
        try:
            with mod:
                for _ in range(opts["recover_epochs"] * per_epoch):
                    idx = next(feed).to(x.device)
                    loss = opts["alpha"] * F.cross_entropy(ex(x_fit[idx]), y_fit[idx])
                    mopt.zero_grad(set_to_none=True)
                    loss.backward()
                    mopt.step()
                    with torch.no_grad():
                        mod.mask.clamp_(0.0, 1.0)
        finally:
            ex.batchnorm_mode(previous)
        mod.mask.requires_grad_(False)
    scores = mod.per_layer(mod.mask)
    threshold = opts["threshold"]
    if held is not None:
        threshold = _held_out_threshold(ctx, units, scores, x[held], y[held], opts["max_acc_drop"], original)
    masks = {name: (s >= threshold).astype(np.float32) for name, s in scores.items()}
    log.update(threshold=threshold)
    new = mean_biases(ctx, original, masks)
    return RepairResult("rnp", dict(opts), masks=masks, semantics="keep-bias", scores=scores,
                        new_weights=new or None, log=log)


def _held_out_threshold(ctx, units, scores, x, y, max_drop: float, renorm) -> float:
    """The largest threshold in 0, 0.05, ..., 0.9 whose pruned model keeps the held-out accuracy
    within ``max_drop`` points of the unpruned model's (a pruned folded channel held at its mean)."""
    mod = Modulation(ctx.executor, units, renorm=renorm, renorm_batch=False)
    with mod:
        base = accuracy(ctx.executor, x, y)
        best = 0.0
        for t in np.arange(0.0, 0.9 + 1e-9, 0.05):
            mod.set_masks({n: (s >= t).astype(np.float32) for n, s in scores.items()})
            if base - accuracy(ctx.executor, x, y) <= max_drop:
                best = float(t)
    return best
