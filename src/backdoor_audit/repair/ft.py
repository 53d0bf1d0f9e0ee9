"""Fine-tuning (FT): SGD on the defender's labeled clean images, every trainable weight.

The baseline of every paper here; ANP (Sec. 4.1, Table 1) runs it with lr 0.01 (and 0.02) for
2000 iterations on 500 images, which are our defaults.
"""

from __future__ import annotations

from .base import RepairContext, RepairResult, register_method
from .finetune import WeightEdit, finetune, finetune_options

OPTIONS = finetune_options(lr=0.01, iterations=2000, source="ANP Sec. 4.1 (FT baseline)")


@register_method("ft", summary="fine-tuning: SGD on the clean images", source="ANP Sec. 4.1 (FT baseline, lr 0.01)",
                 needs="labeled", options=OPTIONS)
def run_ft(ctx: RepairContext, **opts) -> RepairResult:
    ctx.labeled("ft")
    with WeightEdit(ctx) as edit:
        log = finetune(ctx, ctx.raw, ctx.y, **opts)
    return RepairResult("ft", dict(opts), new_weights=edit.changed, log=log)
