"""WIPER (identifying and purifying bad neurons): benign salience plus adaptive regularisation.

Neurons are the classifier head's input features; neuron j's downstream weights are the head's
weights from j. Its benign salience is the first-order loss change of removing them,
BS_j = -sum_i g_ij w_ij (Eq. 2, g the clean-loss gradient), kept as a momentum average
MBS = eta * MBS + (1 - eta) * BS (Eq. 3). The share beta of neurons with the lowest MBS is marked
bad, beta decaying from beta_0 to 0 over the epochs (Eq. 4), and the whole model is fine-tuned on

    CE + alpha * sum over bad j of AR(w_j),   AR(w) = |w| for |w| <= 1, exp(|w| - 1) beyond (Eq. 6-7).

Eq. 6 as printed gives -exp(-w - 1) for w < -1, which is negative and jumps at w = -1; the text and
Fig. 2 describe a penalty symmetric in w and continuous at |w| = 1, which is what we use. Defaults
are the paper's (Sec. 5.1): alpha 0.01, beta_0 0.5, eta 0.9, 10 epochs, SGD at a constant lr 0.01,
batch 128, the output layer purified. Salience is updated every step (Protocol 1 line 10) from the
cross-entropy gradient alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, UNFOLD, WeightEdit, finetune, augment_option

SOURCE = "WIPER Sec. 5.1"
OPTIONS = [
    Option("alpha", float, 0.01, "weight of the adaptive regularisation of bad neurons", SOURCE, minimum=0),
    Option("beta0", float, 0.5, "initial share of head inputs marked bad", SOURCE, minimum=0, maximum=1),
    Option("eta", float, 0.9, "momentum of the benign salience", SOURCE, minimum=0, maximum=1),
    Option("epochs", int, 10, "passes over the clean images", SOURCE, minimum=1),
    Option("lr", float, 0.01, "SGD learning rate (constant)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 128, "images per step", SOURCE, minimum=1),
    Option("momentum", float, 0.9, "SGD momentum", minimum=0, maximum=1, open_max=True),
    Option("weight_decay", float, 5e-4, "SGD weight decay", minimum=0),
    augment_option(),
    BN_MODE,
    UNFOLD,
]


def adaptive_reg(w: torch.Tensor) -> torch.Tensor:
    """AR elementwise: |w| up to 1, exp(|w| - 1) beyond (continuous at 1, steeper than L2 there)."""
    a = w.abs()
    return torch.where(a <= 1, a, torch.exp(a - 1))


@register_method("wiper", summary="WIPER: mark head inputs of lowest benign salience, fine-tune with an adaptive "
                 "penalty on their downstream weights", source="WIPER (ICLR 2023 submission), Protocol 1, Eq. 2-7",
                 needs="labeled", options=OPTIONS)
def run_wiper(ctx: RepairContext, **opts) -> RepairResult:
    x, y = ctx.labeled("wiper")
    heads = [l for l in ctx.inventory.layers if l.head]
    if not heads:
        raise SpecError("wiper purifies the classifier head, and the inventory finds none (no Gemm/MatMul with "
                        "initializer weights feeding the output)")
    head = heads[-1]
    trainable = ctx.trainable()
    if head.weight not in trainable:
        raise SpecError(f"the head's weight {head.weight} is not a trainable initializer")
    w = trainable[head.weight]
    in_axis = 1 - head.weight_axis  # the axis of the head's input features
    n_in = w.shape[in_axis]
    ex = ctx.executor

    def salience(grad: torch.Tensor) -> torch.Tensor:
        return -(grad * w.detach()).sum(dim=head.weight_axis)  # per input feature (Eq. 2)

    # initial salience on the whole clean set (Protocol 1 lines 2-3)
    w.requires_grad_(True)
    grad = torch.zeros_like(w)
    for i in range(0, len(x), 256):
        ce = F.cross_entropy(ex(x[i:i + 256]), y[i:i + 256], reduction="sum") / len(x)
        grad += torch.autograd.grad(ce, [w])[0]
    w.requires_grad_(False)
    state = {"mbs": salience(grad), "bad": None, "step": 0}
    steps_per_epoch = len(x) // min(opts["batch_size"], len(x))  # full batches per pass (graph.masks.batches)
    iterations = opts["epochs"] * steps_per_epoch

    def mark() -> None:
        epoch = state["step"] // steps_per_epoch
        beta = opts["beta0"] * (opts["epochs"] - epoch) / opts["epochs"]
        k = int(round(beta * n_in))
        bad = torch.zeros(n_in, dtype=torch.bool, device=w.device)
        if k:
            bad[torch.argsort(state["mbs"])[:k]] = True
        state["bad"] = bad

    mark()

    def loss(logits: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, yb)
        g = torch.autograd.grad(ce, [w], retain_graph=True)[0]
        state["mbs"] = opts["eta"] * state["mbs"] + (1 - opts["eta"]) * salience(g.detach())
        shape = [1, 1]
        shape[in_axis] = -1
        penalty = (adaptive_reg(w) * state["bad"].view(shape).to(w.dtype)).sum()
        return ce + opts["alpha"] * penalty

    def after_step(it: int) -> None:
        state["step"] = it + 1
        mark()

    ft = dict(lr=opts["lr"], iterations=iterations, batch_size=opts["batch_size"], momentum=opts["momentum"],
              weight_decay=opts["weight_decay"], schedule="constant", augment=opts["augment"],
              bn_mode=opts["bn_mode"], unfold=opts["unfold"])
    with WeightEdit(ctx) as edit:
        log = finetune(ctx, ctx.raw, y, loss=loss, step_hook=after_step, progress_desc="WIPER", **ft)
    log.update(head=head.name, features=int(n_in), bad_at_start=int(round(opts["beta0"] * n_in)),
               lowest_salience=np.argsort(state["mbs"].cpu().numpy())[:10].tolist())
    return RepairResult("wiper", dict(opts), new_weights=edit.changed, log=log)
