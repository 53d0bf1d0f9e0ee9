"""Neural Attention Distillation, NAD (Li et al., ICLR 2021).

A teacher is the suspect model fine-tuned on the clean images; the student (the suspect model again)
is then fine-tuned with cross-entropy plus the distance between its attention maps and the
teacher's at a few depths: ``A(a) = normalize(mean over channels of a^p)``, loss
``sum_i beta_i * mean((A(s_i) - A(t_i))^2)``. Defaults are the authors' code (p = 2, betas 500,
1000, 1000 from the earliest of the three depths to the last; teacher and student trained with SGD
at lr 0.1, momentum 0.9, weight decay 1e-4, the lr divided by 10 every 2 epochs; 10 epochs of the
teacher, 20 of the student, as the NAD rows of WIPER's appendix A.4 describe).

An ONNX file has no named "layer groups", so the depths are found from the graph: the last
activation (Relu or Add output) at each of the three smallest spatial sizes the network reaches,
which in a ResNet are the ends of its last three stages.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from ..util import class_scores
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, UNFOLD, WeightEdit, finetune, augment_option

SOURCE = "NAD authors' code; WIPER appendix A.4"
OPTIONS = [
    Option("teacher_epochs", int, 10, "epochs of the teacher's fine-tuning", SOURCE, minimum=1),
    Option("epochs", int, 20, "epochs of the student's distillation", SOURCE, minimum=1),
    Option("lr", float, 0.1, "SGD learning rate (divided by 10 every 2 epochs)", SOURCE, minimum=0, open_min=True),
    Option("betas", str, "500,1000,1000", "attention-loss weights, earliest depth first", SOURCE),
    Option("p", float, 2.0, "power of the attention map", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 64, "images per step", SOURCE, minimum=1),
    Option("weight_decay", float, 1e-4, "SGD weight decay", SOURCE, minimum=0),
    augment_option(),
    BN_MODE,
    UNFOLD,
]


def attention(a: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(a.pow(p).mean(1).reshape(a.shape[0], -1), dim=1)


def attention_depths(ctx: RepairContext, count: int) -> list[str]:
    """Names of the tensors NAD distils: the last Relu/Add output at each of the ``count`` smallest
    spatial sizes (with more than one pixel) the network reaches."""
    ex = ctx.executor
    names = [n.outputs[0] for n in ex.nodes if n.ctx.op_type in ("Relu", "Add") and n.outputs and n.outputs[0]]
    with torch.no_grad():
        got = ex.run(ctx.x[:2], capture=names)
    last: dict[tuple[int, int], str] = {}
    for name in names:
        t = got.get(name)
        if t is not None and t.dim() == 4 and t.shape[2] * t.shape[3] > 1:
            last[(t.shape[2], t.shape[3])] = name  # later nodes overwrite: the last one of each size
    sizes = sorted(last, key=lambda hw: hw[0] * hw[1])[:count]
    if len(sizes) < count:
        raise SpecError(f"nad needs {count} spatial stages of 4-D activations, the model has {len(sizes)}")
    return [last[hw] for hw in sorted(sizes, key=lambda hw: -hw[0] * hw[1])]  # earliest (largest) first


@register_method("nad", summary="Neural Attention Distillation: distil a fine-tuned teacher's attention maps back "
                 "into the model", source="Li et al., ICLR 2021", needs="labeled", options=OPTIONS)
def run_nad(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("nad")
    try:
        betas = [float(b) for b in opts["betas"].split(",")]
    except ValueError:
        raise SpecError(f"nad betas must be comma-separated numbers, got {opts['betas']!r}") from None
    if ctx.executor.static_batch is not None:
        raise SpecError("nad reads intermediate activations and needs a model with a dynamic batch dimension")
    depths = attention_depths(ctx, len(betas))
    per_epoch = len(ctx.raw) // min(opts["batch_size"], len(ctx.raw))
    common = dict(batch_size=opts["batch_size"], momentum=0.9, weight_decay=opts["weight_decay"],
                  schedule="constant", augment=opts["augment"], bn_mode=opts["bn_mode"],
                  unfold=opts["unfold"])

    with WeightEdit(ctx) as teacher_edit:
        log_t = finetune(ctx, ctx.raw, y, lr=opts["lr"], iterations=opts["teacher_epochs"] * per_epoch,
                         lr_steps=2 * per_epoch, progress_desc="NAD teacher", **common)
    teacher = copy.deepcopy(ctx.executor)
    with torch.no_grad():
        for name, value in teacher_edit.changed.items():
            teacher.value(name).copy_(torch.as_tensor(value))
    teacher.batchnorm_mode("running")
    ex = ctx.executor

    captured: dict[str, torch.Tensor] = {}

    def student_loss(logits, yb, idx):
        return F.cross_entropy(logits, yb) + sum(
            b * (attention(captured["s"][d], opts["p"]) - attention(captured["t"][d], opts["p"])).pow(2).mean()
            for b, d in zip(betas, depths))

    def forward(xb: torch.Tensor) -> torch.Tensor:
        out = ex.run(xb, capture=depths)
        with torch.no_grad():
            captured["t"] = teacher.run(xb, capture=depths)
        captured["s"] = out
        return class_scores(out[ex.output_names[0]])

    with WeightEdit(ctx) as edit:
        log = finetune(ctx, ctx.raw, y, lr=opts["lr"], iterations=opts["epochs"] * per_epoch, lr_steps=2 * per_epoch,
                       loss=student_loss, forward=forward, progress_desc="NAD student", **common)
    log.update(depths=depths, teacher_curve=log_t["curve"])
    return RepairResult("nad", dict(opts), new_weights=edit.changed, log=log)
