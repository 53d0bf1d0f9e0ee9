"""Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018): prune the last convolutional layer's
channels that clean images leave dormant, then fine-tune.

Channels are pruned in increasing order of their mean activation (after ReLU) on the defender's
clean images; the paper stops when accuracy on validation data falls below a pre-set threshold.
Here that validation data is a held-out share of the defender's own clean set (never test data):
pruning stops before the held-out accuracy falls more than ``max_acc_drop`` points. The pruned
channels are then held at zero while the network is fine-tuned on the rest of the clean set.
Where BN is kept the pruned unit is the BN channel that follows the conv, where BN was folded it
is the conv channel itself; a pruned channel's output is 0 (scale and shift, or weight and bias).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.splits import holdout_split
from ..errors import SpecError
from ..graph.model import accuracy
from ..graph.modulate import Modulation
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import WeightEdit, finetune, finetune_options

SOURCE = "Liu et al., RAID 2018"
OPTIONS = [
    Option("max_acc_drop", float, 4.0, "stop pruning before the held-out clean accuracy falls more than this "
           "(points)", "Liu et al. stop at a set accuracy threshold; 4 points here", minimum=0, maximum=100),
    Option("holdout", float, 0.2, "share of the clean images held out to decide when to stop", minimum=0,
           maximum=1, open_min=True, open_max=True),
    *finetune_options(lr=0.01, iterations=2000, source="ANP Sec. 4.1 (FP baseline, 2000 iterations)"),
]


@register_method("fp", summary="fine-pruning: prune the last conv layer's dormant channels while held-out clean "
                 "accuracy holds, then fine-tune", source=SOURCE, needs="labeled", options=OPTIONS)
def run_fp(ctx: RepairContext, **opts) -> RepairResult:
    x, y = ctx.labeled("fp")
    ex, inv = ctx.executor, ctx.inventory
    convs = [l for l in inv.layers if l.kind == "conv" and not l.head]
    if not convs:
        raise SpecError("fine-pruning needs a convolutional layer with initializer weights; the model has none")
    conv = convs[-1]
    unit = inv[conv.bn] if conv.bn else conv
    keep_idx, hold_idx = holdout_split(len(x), opts["holdout"], ctx.seed)
    keep_idx, hold_idx = torch.as_tensor(keep_idx), torch.as_tensor(hold_idx)
    out_name = ex.node_output(unit.name)
    with torch.no_grad():
        act = torch.cat([ex.run(x[keep_idx[i:i + 256]], capture=[out_name])[out_name]
                         for i in range(0, len(keep_idx), 256)])
    mean_act = torch.relu(act).mean(dim=[0] + list(range(2, act.dim()))).cpu().numpy()
    order = np.argsort(mean_act, kind="stable")
    mod = Modulation(ex, [unit], bias_follows_mask=True)
    mask = np.ones(unit.size, np.float32)
    with mod:
        base = accuracy(ex, x[hold_idx], y[hold_idx])
        pruned = 0
        for k in order[:-1]:  # never the whole layer
            mask[k] = 0
            mod.set_masks({unit.name: mask})
            if base - accuracy(ex, x[hold_idx], y[hold_idx]) > opts["max_acc_drop"]:
                mask[k] = 1
                break
            pruned += 1
        mod.set_masks({unit.name: mask})
        ft = {k: opts[k] for k in ("lr", "iterations", "batch_size", "momentum", "weight_decay", "schedule",
                                   "augment", "bn_mode", "unfold")}
        with WeightEdit(ctx) as edit:
            log = finetune(ctx, ctx.raw[keep_idx], y[keep_idx], progress_desc="fine-pruning", **ft)
    log.update(layer=unit.name, pruned=pruned, held_out_accuracy=base)
    return RepairResult("fp", dict(opts), masks={unit.name: mask}, semantics="zero-bias",
                        scores={unit.name: mean_act.astype(np.float32)}, new_weights=edit.changed, log=log)
