"""Backdoor Cleansing with Unlabeled data, BCU (Pang et al., CVPR 2023).

No labels needed: the suspect model is the teacher, and a student is distilled from it on the
defender's (unlabeled) images. The student starts as a copy of the teacher with a share of its
weights re-drawn at random, a share that grows with depth (*adaptive layer-wise initialisation*:
the authors' command uses 0.01 for the stem, 0.01 / 0.03 / 0.09 / 0.27 for the four ResNet
stages and 0.10 for the classifier), which breaks the trigger's path more than the benign
features, which distillation then restores: KL divergence between the softened outputs, with a
temperature rising from 1 to 4 over training. As in the authors' ``distillation_dropout_increase.py``:
SGD at lr 0.01, momentum 0.9, weight decay 5e-4, cosine over 100 epochs, batches of 256,
random crops and flips (flips only where the model is flip-invariant: ``augment=auto``), the
student in train mode; the teacher's running statistics fixed.

An ONNX file has no stage names; the stages are the groups of conv layers by output size, the
first conv is the stem and the last linear layer the classifier; with fewer than four stages the
deepest ones take the last ratios. A re-drawn weight is uniform with the spread of its output
channel's weights (the authors draw from the architecture's default init; a folded file's weights
carry BN scales, so the channel's own spread keeps the scale right on both kinds of file); only the
classifier's bias is re-drawn, as only it has one in their ResNet. The authors report the epoch of
best *test* accuracy; we return the last epoch.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, UNFOLD, WeightEdit, finetune, augment_option

SOURCE = "BCU authors' run_defense.sh and config/defense/ft/cifar10.yaml"
OPTIONS = [
    Option("ratios", str, "0.01,0.01,0.03,0.09,0.27,0.10", "share of weights re-drawn: stem, four stages "
           "(earliest first), classifier", SOURCE),
    Option("epochs", int, 100, "passes over the images", SOURCE, minimum=1),
    Option("lr", float, 0.01, "SGD learning rate (cosine)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 256, "images per step", SOURCE, minimum=1),
    Option("t_start", float, 1.0, "distillation temperature at the start (it rises linearly)", SOURCE, minimum=0,
           open_min=True),
    Option("t_end", float, 4.0, "distillation temperature at the end", SOURCE, minimum=0, open_min=True),
    augment_option(SOURCE),
    BN_MODE,
    UNFOLD,
]


def layer_ratios(ctx: RepairContext, ratios: list[float]) -> dict[str, float]:
    """Re-draw share per conv/linear layer: stem, stages by output size, classifier."""
    ex, inv = ctx.executor, ctx.inventory
    layers = [l for l in inv.layers if l.kind in ("conv", "linear")]
    convs = [l for l in layers if l.kind == "conv"]
    with torch.no_grad():
        got = ex.run(ctx.preprocess(ctx.pixels[:2]), capture=[ex.node_output(l.name) for l in convs])
    shapes = {l.name: got[ex.node_output(l.name)].shape for l in convs if ex.node_output(l.name) in got}
    sizes = {n: int(s[2] * s[3]) for n, s in shapes.items() if len(s) == 4}
    stem = convs[0].name if convs else None
    stage_sizes = sorted({s for n, s in sizes.items() if n != stem}, reverse=True)  # earliest (largest) first
    out = {}
    for l in layers:
        if l.kind == "linear":
            out[l.name] = ratios[5] if l.head else ratios[4]
        elif l.name == stem:
            out[l.name] = ratios[0]
        elif l.name in sizes:
            g = stage_sizes.index(sizes[l.name]) + 4 - len(stage_sizes)  # the deepest stage is stage 4
            out[l.name] = ratios[1 + max(0, min(3, g))]
    return out


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")


@register_method("bcu", summary="Backdoor Cleansing with Unlabeled data: distil the model into a partly re-drawn "
                 "copy of itself, no labels", source="Pang et al., CVPR 2023", needs="unlabeled", options=OPTIONS)
def run_bcu(ctx: RepairContext, **opts) -> RepairResult:
    pixels = ctx.pixels
    if pixels is None:
        raise SpecError("bcu distils on the defender's images (--data, labels not needed)")
    try:
        ratios = [float(r) for r in opts["ratios"].split(",")]
    except ValueError:
        raise SpecError(f"bcu ratios must be six comma-separated numbers, got {opts['ratios']!r}") from None
    if len(ratios) != 6 or not all(0 <= r <= 1 for r in ratios):
        raise SpecError("bcu ratios must be six numbers in [0, 1] (stem, 4 stages, classifier), "
                        f"got {opts['ratios']!r}")
    ex = ctx.executor
    teacher = copy.deepcopy(ex)
    teacher.batchnorm_mode("running")
    share = layer_ratios(ctx, ratios)
    gen = torch.Generator().manual_seed(ctx.seed)
    bs = min(opts["batch_size"], len(pixels))
    per_epoch = max(len(pixels) // bs, 1)
    total = opts["epochs"] * per_epoch
    captured: dict[str, torch.Tensor] = {}

    def forward(xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            captured["t"] = teacher(xb)
        return ex(xb)

    step = {"it": 0}

    def loss(logits, _y, _idx):
        t = opts["t_start"] + (opts["t_end"] - opts["t_start"]) * (step["it"] // per_epoch + 1) / opts["epochs"]
        return soft_kl(logits, captured["t"], t)

    def tick(it: int) -> None:
        step["it"] = it + 1

    redrawn = 0
    with WeightEdit(ctx) as edit:
        with torch.no_grad():
            for layer in ctx.inventory.layers:
                p = share.get(layer.name, 0.0)
                if p <= 0:
                    continue
                w = ex.value(layer.weight)
                moved = w.movedim(layer.weight_axis, 0)
                spread = moved.flatten(1).std(1).view(-1, *[1] * (moved.dim() - 1)) * math.sqrt(3)
                keep = (torch.rand(moved.shape, generator=gen) >= p).to(w.device)
                fresh = (torch.rand(moved.shape, generator=gen).to(w.device) * 2 - 1) * spread
                w.copy_(torch.where(keep, moved, fresh).movedim(0, layer.weight_axis))
                redrawn += int((~keep).sum())
                if layer.head and layer.bias:
                    b = ex.value(layer.bias)
                    keep_b = (torch.rand(b.shape, generator=gen) >= p).to(b.device)
                    bound = 1 / math.sqrt(moved[0].numel())
                    fresh_b = (torch.rand(b.shape, generator=gen).to(b.device) * 2 - 1) * bound
                    b.copy_(torch.where(keep_b, b, fresh_b))
        dummy = torch.zeros(len(pixels), dtype=torch.long, device=pixels.device)
        log = finetune(ctx, pixels, dummy, lr=opts["lr"], iterations=total, batch_size=bs, momentum=0.9,
                       weight_decay=5e-4, schedule="cosine", augment=opts["augment"], bn_mode=opts["bn_mode"],
                       unfold=opts["unfold"], loss=loss, forward=forward, step_hook=tick, progress_desc="BCU")
    log.update(redrawn=redrawn, ratios=share)
    return RepairResult("bcu", dict(opts), new_weights=edit.changed, log=log)
