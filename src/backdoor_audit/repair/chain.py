"""Methods run one after another: ``--method clp+i-bau`` prunes with CLP, then unlearns with I-BAU
on the pruned model.

Each step sees the model as the steps before it left it (their new weights loaded, their pruned
neurons zeroed as their semantics say); the chain's result is every initializer that changed,
with all steps' masks applied on top at write time, so a pruned neuron stays pruned even if a
later step trained its weights. Options are named per step: ``--param i-bau.lr=0.001``. A step
that inserts a layer (NPD) may only come last.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..errors import SpecError
from ..graph.neurons import weight_view_shape
from ..options import Entry
from .base import RepairContext, RepairResult
from .finetune import WeightEdit


def chain_needs(steps: list[Entry]) -> tuple[str, ...]:
    """What a chain needs: every step's data; data-free only if every step can run without data."""
    needs = {n for e in steps for n in e.needs} - {"none"}
    if all("none" in e.needs for e in steps):
        needs = {"none"} | needs
    return tuple(sorted(needs, key=("none", "labeled", "unlabeled", "train").index))


def chain_entry(name: str, steps: list[Entry]) -> Entry:
    if len({e.name for e in steps}) != len(steps):
        raise SpecError(f"repair chain '{name}' names a method twice")
    options = tuple(replace(o, name=f"{e.name}.{o.name}") for e in steps for o in e.options)
    return Entry("repair method", name, "the methods " + ", then ".join(e.name for e in steps),
                 "; ".join(f"{e.name}: {e.source}" for e in steps), chain_needs(steps), options,
                 _runner(name, steps))


def _bake(ctx: RepairContext, result: RepairResult) -> None:
    """Load a step's new weights into the executor and zero what its masks prune."""
    ex = ctx.executor
    with torch.no_grad():
        for tensor, values in (result.new_weights or {}).items():
            ex.value(tensor).copy_(torch.as_tensor(np.asarray(values)))
        for layer_name, mask in (result.masks or {}).items():
            layer = ctx.inventory[layer_name]
            w = ex.value(layer.weight)
            m = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=w.device)
            w.mul_(m.view(weight_view_shape(layer, w.dim())))
            if result.semantics == "zero-bias" and layer.bias:
                ex.value(layer.bias).mul_(m)


def _runner(name: str, steps: list[Entry]):
    def run(ctx: RepairContext, **opts) -> RepairResult:
        masks: dict[str, np.ndarray] = {}
        semantics, inserts, log = None, [], {}
        with WeightEdit(ctx) as edit:
            for i, entry in enumerate(steps):
                prefix = entry.name + "."
                step_opts = {k[len(prefix):]: v for k, v in opts.items() if k.startswith(prefix)}
                result = entry.run(ctx, **step_opts)
                if result.inserts and i < len(steps) - 1:
                    raise SpecError(f"{entry.name} inserts a layer, so it can only be the last step of '{name}'")
                if result.masks:
                    if semantics not in (None, result.semantics):
                        raise SpecError(f"the steps of '{name}' prune with different semantics")
                    semantics = result.semantics
                    for layer, m in result.masks.items():
                        masks[layer] = masks[layer] * m if layer in masks else np.asarray(m, dtype=np.float32)
                inserts += result.inserts or []
                _bake(ctx, result)
                log[entry.name] = {k: v for k, v in result.log.items() if k != "curve"}
        return RepairResult(name, dict(opts), masks=masks or None, semantics=semantics or "keep-bias",
                            new_weights=edit.changed or None, inserts=inserts or None, log=log)

    return run
