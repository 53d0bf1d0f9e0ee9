"""Feature Shift Tuning, FST (Min et al., NeurIPS 2023).

Fine-tuning alone keeps the backdoor when the poisoned features are entangled with the clean ones;
FST re-initialises the classifier head and fine-tunes the whole model while pushing the new head
away from the original one:

    CE + alpha * <W, W_orig>     (the sum of the elementwise product)

with the head's weight rescaled after every step to the original's Frobenius norm. As in the
authors' fine_tune/ft.py: the head (weight and bias) re-drawn from U(-1/sqrt(in), 1/sqrt(in)), SGD
with momentum 0.9 and no weight decay, cosine learning rate, and their README's CIFAR-10 command
(lr 0.01, 10 epochs, alpha 0.1). They anneal per epoch and keep the ragged last batch; our loop
anneals per step and draws full batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, UNFOLD, WeightEdit, finetune, augment_option

SOURCE = "FST authors' README (CIFAR-10)"
OPTIONS = [
    Option("alpha", float, 0.1, "weight of the inner product with the original head", SOURCE, minimum=0),
    Option("epochs", int, 10, "passes over the clean images", SOURCE, minimum=1),
    Option("lr", float, 0.01, "SGD learning rate (cosine-annealed)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 128, "images per step", SOURCE, minimum=1),
    Option("momentum", float, 0.9, "SGD momentum", "FST ft.py", minimum=0, maximum=1, open_max=True),
    Option("weight_decay", float, 0.0, "SGD weight decay", "FST ft.py (none)", minimum=0),
    augment_option(),
    BN_MODE,
    UNFOLD,
]


@register_method("fst", summary="Feature Shift Tuning: re-initialise the head, fine-tune while pushing it away "
                 "from the original head", source="Min et al., NeurIPS 2023", needs="labeled", options=OPTIONS)
def run_fst(ctx: RepairContext, **opts) -> RepairResult:
    x, y = ctx.labeled("fst")
    heads = [l for l in ctx.inventory.layers if l.head]
    if not heads:
        raise SpecError("fst re-initialises the classifier head, and the inventory finds none")
    head = heads[-1]
    trainable = ctx.trainable()
    w = trainable.get(head.weight)
    if w is None:
        raise SpecError(f"the head's weight {head.weight} is not a trainable initializer")
    b = trainable.get(head.bias) if head.bias else None
    fan_in = w.shape[1 - head.weight_axis]
    bound = 1 / math.sqrt(fan_in)
    gen = torch.Generator().manual_seed(ctx.seed)
    w_orig = w.detach().clone()
    norm = torch.linalg.norm(w_orig)
    steps_per_epoch = len(x) // min(opts["batch_size"], len(x))

    def loss(logits: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, yb) + opts["alpha"] * (w * w_orig).sum()

    def renorm(it: int) -> None:
        with torch.no_grad():
            w.mul_(norm / torch.linalg.norm(w))

    ft = dict(lr=opts["lr"], iterations=opts["epochs"] * steps_per_epoch, batch_size=opts["batch_size"],
              momentum=opts["momentum"], weight_decay=opts["weight_decay"], schedule="cosine",
              augment=opts["augment"], bn_mode=opts["bn_mode"], unfold=opts["unfold"])
    with WeightEdit(ctx) as edit:
        with torch.no_grad():
            w.copy_(torch.empty_like(w, device="cpu").uniform_(-bound, bound, generator=gen).to(w.device))
            if b is not None:
                b.copy_(torch.empty_like(b, device="cpu").uniform_(-bound, bound, generator=gen).to(b.device))
        log = finetune(ctx, ctx.raw, y, loss=loss, step_hook=renorm, progress_desc="FST", **ft)
    log.update(head=head.name)
    return RepairResult("fst", dict(opts), new_weights=edit.changed, log=log)
