"""Neural Cleanse unlearning (Wang et al., IEEE S&P 2019, Sec. VI-C).

Reverse-engineer a trigger for every class on the defender's clean images (``audit.trigger``);
classes whose mask norm has an anomaly index above 2 are flagged (Sec. IV-C). Then fine-tune on
the clean images with 20% of each batch stamped with a flagged class's reversed trigger and kept
at its true label, so the model unlearns the shortcut. When no class is flagged the model is
returned unchanged and the log says so: Neural Cleanse found nothing to unlearn.
"""

from __future__ import annotations

import numpy as np
import torch

from ..audit.trigger import anomaly_index, load_triggers, reverse_all, reverse_options
from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import WeightEdit, finetune, finetune_options

SOURCE = "NC Sec. VI-C"
OPTIONS = [
    *reverse_options("re_"),
    Option("triggers", str, None, "an .npz of every class's reversed trigger from `audit scan --save-triggers`: "
           "unlearn those instead of reverse-engineering them again", optional=True),
    Option("stamp_share", float, 0.2, "share of each batch stamped with a reversed trigger", SOURCE,
           minimum=0, maximum=1),
    *finetune_options(lr=0.01, iterations=200, source=SOURCE),
]


@register_method("nc", summary="Neural Cleanse: reverse-engineer each class's trigger, flag outliers by "
                 "anomaly index, unlearn the flagged triggers by fine-tuning", source="Wang et al., IEEE S&P 2019",
                 needs="labeled", options=OPTIONS)
def run_nc(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("nc")
    with torch.no_grad():
        num_classes = int(ctx.executor(ctx.x[:1]).shape[1])
    if opts["triggers"]:
        triggers = load_triggers(opts["triggers"], tuple(ctx.raw.shape[1:]))
        if len(triggers) != num_classes:
            raise SpecError(f"{opts['triggers']}: {len(triggers)} triggers for a model of {num_classes} classes")
    else:
        triggers = reverse_all(ctx.executor, ctx.raw, ctx.preprocess, num_classes, steps=opts["re_steps"],
                               batch_size=opts["re_batch_size"], init_cost=opts["init_cost"], seed=ctx.seed,
                               progress=ctx.progress)
    norms = np.array([t.l1 for t in triggers])
    index = anomaly_index(norms)
    flagged = [t for t, a in zip(triggers, index) if a > opts["anomaly"]]
    log = {"mask_l1": norms.round(3).tolist(), "anomaly_index": index.round(3).tolist(),
           "flagged": [t.target for t in flagged]}
    if not flagged:
        log["note"] = f"no class has an anomaly index above {opts['anomaly']}; nothing unlearned, model unchanged"
        return RepairResult("nc", dict(opts), new_weights={}, log=log)
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    share = opts["stamp_share"]

    def stamp(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(len(xb), generator=gen) < share
        which = torch.randint(0, len(flagged), (len(xb),), generator=gen)
        out = xb.clone()
        for j, trig in enumerate(flagged):
            sel = (chosen & (which == j)).to(xb.device)
            if sel.any():
                out[sel] = trig.stamp(xb[sel])
        return out

    ft = {k: opts[k] for k in ("lr", "iterations", "batch_size", "momentum", "weight_decay", "schedule", "augment",
                               "bn_mode", "unfold")}
    with WeightEdit(ctx) as edit:
        log.update(finetune(ctx, ctx.raw, y, stamp=stamp, progress_desc="unlearning", **ft))
    return RepairResult("nc", dict(opts), new_weights=edit.changed, log=log)
