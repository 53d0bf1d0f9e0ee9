"""Mode Connectivity Repair, MCR (Zhao et al., ICLR 2020).

Two models with the same function on clean data are joined by a path of low clean loss; points
along a path trained on clean data alone keep the accuracy but lose what only the end points share
by chance, the backdoor among it. As ANP (Sec. 4.1, Table 1) and Backdoor Cleansing (supp.) run it
with a small clean set: one end is the suspect model, the other the suspect fine-tuned on the clean
images; a quadratic Bezier curve ``w(t) = (1-t)^2 w0 + 2t(1-t) b + t^2 w1`` is trained by moving its
bend ``b`` (initialised at the midpoint) under the clean loss at a uniformly drawn ``t`` per step,
and the repaired model is the point ``t = 0.3`` (ANP's MCR(0.3)), with its BatchNorm statistics
re-estimated there on the clean images (as the curve code's ``update_bn``).

Fine-tuning, curve and re-estimation run in PyTorch's train mode, with BN put back behind folded
convs (``unfold``), so BN-kept and folded files follow the same dynamics. Curve defaults: 200 epochs
(ANP: 800 iterations on 500 images), SGD lr 0.01, momentum 0.9, weight decay 5e-4 with the curve
code's schedule (constant for the first half, then linear down to 1% at 90%); the fine-tuned end:
100 epochs of SGD at lr 0.01 (cosine), BackdoorBench's MCR config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..graph.masks import batches
from ..options import Option
from ..training.train import augment_batch
from .base import RepairContext, RepairResult, register_method
from .finetune import UNFOLD, Training, WeightEdit, augment_option, finetune, resolve_augment

SOURCE = "ANP Sec. 4.1 (MCR(0.3), 200 epochs); BackdoorBench config/defense/mcr"
OPTIONS = [
    Option("t", float, 0.3, "the point of the trained curve that is the repaired model (0: suspect, 1: fine-tuned)",
           "ANP Table 1, MCR(0.3)", minimum=0, maximum=1),
    Option("epochs", int, 200, "epochs of curve training", "ANP Sec. 4.1", minimum=1),
    Option("lr", float, 0.01, "SGD learning rate of the curve's bend", "curve code (dnn-mode-connectivity)",
           minimum=0, open_min=True),
    Option("ft_epochs", int, 100, "epochs of fine-tuning that make the other end", SOURCE, minimum=1),
    Option("ft_lr", float, 0.01, "SGD learning rate of that fine-tuning (cosine)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 128, "images per step", SOURCE, minimum=1),
    Option("weight_decay", float, 5e-4, "SGD weight decay", SOURCE, minimum=0),
    augment_option("ANP Sec. 4.1"),
    UNFOLD,
]


def bezier(t: float) -> tuple[float, float, float]:
    """Weights of the end, the bend and the other end at ``t`` on a quadratic Bezier curve."""
    return (1 - t) ** 2, 2 * t * (1 - t), t * t


def curve_lr(step: int, total: int) -> float:
    """The curve code's schedule as a factor: 1 to half-way, linear down to 0.01 at 90%, then 0.01."""
    a = step / total
    if a <= 0.5:
        return 1.0
    if a <= 0.9:
        return 1.0 - (a - 0.5) / 0.4 * 0.99
    return 0.01


@register_method("mcr", summary="Mode Connectivity Repair: a point on a curve, trained on clean data, between the "
                 "suspect and its fine-tuned copy", source="Zhao et al., ICLR 2020", needs="labeled", options=OPTIONS)
def run_mcr(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("mcr")
    raw, ex = ctx.raw, ctx.executor
    bs = min(opts["batch_size"], len(raw))
    per_epoch = max(len(raw) // bs, 1)
    gen = torch.Generator().manual_seed(ctx.seed)
    aug = resolve_augment(opts["augment"], ctx, raw)
    with WeightEdit(ctx) as edit:
        params = ctx.trainable()
        if not params:
            raise SpecError("the model has no trainable float weights")
        session = Training(ctx, params, "update", opts["unfold"])
        plist = session.parameters
        with session:
            w0 = [p.detach().clone() for p in plist]
            ft_log = finetune(ctx, raw, y, lr=opts["ft_lr"], iterations=opts["ft_epochs"] * per_epoch, batch_size=bs,
                              momentum=0.9, weight_decay=opts["weight_decay"], schedule="cosine",
                              augment=aug or "none", bn_mode="update", session=session,
                              progress_desc="MCR fine-tuned end")
            w1 = [p.detach().clone() for p in plist]
            bend = [nn.Parameter((a + b) / 2) for a, b in zip(w0, w1)]
            opt = torch.optim.SGD(bend, lr=opts["lr"], momentum=0.9, weight_decay=opts["weight_decay"])
            total = opts["epochs"] * per_epoch
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: curve_lr(step, total))
            feed = batches(len(raw), bs, gen)
            bar = None
            if ctx.progress:
                from tqdm import tqdm

                bar = tqdm(total=total, desc="MCR curve", unit="it", leave=False)
            curve = []
            for it in range(total):
                t = float(torch.rand((), generator=gen))
                c0, c1, c2 = bezier(t)
                with torch.no_grad():
                    for p, a, b, e in zip(plist, w0, bend, w1):
                        p.copy_(c0 * a + c1 * b + c2 * e)
                idx = next(feed).to(raw.device)
                loss = F.cross_entropy(ex(ctx.preprocess(augment_batch(raw[idx], aug, gen))), y[idx])
                grads = torch.autograd.grad(loss, plist)
                for b, g in zip(bend, grads):  # d w(t) / d bend = 2t(1-t)
                    b.grad = c1 * g
                opt.step()
                sched.step()
                if it % 50 == 0 or it == total - 1:
                    curve.append({"iteration": it, "t": t, "loss": float(loss.detach())})
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            c0, c1, c2 = bezier(opts["t"])
            with torch.no_grad():
                for p, a, b, e in zip(plist, w0, bend, w1):
                    p.copy_(c0 * a + c1 * b + c2 * e)
                for _ in range(10):  # BatchNorm statistics of the point t (train-mode passes, no step)
                    for i in range(0, len(raw), bs):
                        ex(ctx.preprocess(raw[i:i + bs]))
    return RepairResult("mcr", dict(opts), new_weights=edit.changed,
                        log={"curve": curve, "fine_tune_curve": ft_log["curve"], "iterations": total,
                             "augment": aug or "none", "unfolded": session.unfolded})
