"""Channel Lipschitzness-based Pruning (Zheng et al., ECCV 2022): data-free.

A backdoor's channels amplify a small trigger into a large activation, so their upper bound of the
channel Lipschitz constant (UCLC) stands out within their layer. For output channel k of a conv
followed by BatchNorm the channel computes ``gamma_k / sigma_k * (W_k * x) + ...``; its UCLC is
the largest singular value of ``W_k`` reshaped to (input channels, kernel area) times
``|gamma_k / sigma_k|`` (sigma_k = sqrt(running var), as in the authors' code). Channels whose UCLC
exceeds ``mean + u * std`` of their layer (std with Bessel's correction, as ``torch.std``) are
pruned: the BN scale and shift set to 0 (the authors' code zeroes both), i.e. the channel's output
is 0.

Where BN survives export the unit is the BN channel and only convs followed by a BN are examined,
as in the authors' code. Where BN was folded into the convs (the files users receive), the folded
weight already is ``gamma_k / sigma_k * W_k``, so the UCLC is the plain spectral norm of the conv
channel, every conv is examined, and a pruned channel has its weight and bias zeroed: the same
function as zeroing the BN scale and shift of the unfolded model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.model import accuracy
from ..graph.modulate import Modulation
from ..graph.neurons import Layer
from ..options import Option
from .base import RepairContext, RepairResult, layer_limit, register_method

OPTIONS = [
    Option("u", float, 3.0, "prune channels whose UCLC exceeds mean + u * std of their layer",
           "the authors' code (CLP.py, u=3)", minimum=0),
    Option("max_acc_drop", float, None, "with clean images: raise u from its value in steps of 0.25 (up to "
           "u_max) until the accuracy on them drops at most this many points (CLP itself is data-free and "
           "fits nothing to them, so all of them judge)", minimum=0, optional=True),
    Option("u_max", float, 8.0, "the largest u the max_acc_drop search tries", minimum=0),
]


def channel_lipschitz(weight: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """UCLC per output channel: spectral norm of each ``weight[k]`` reshaped to (in, kernel area),
    times ``|scale[k]|`` where a BatchNorm follows (scale = gamma / sigma)."""
    w = np.asarray(weight, dtype=np.float64)
    per_channel = w.reshape(w.shape[0], w.shape[1], -1)
    norms = np.linalg.svd(per_channel, compute_uv=False).max(axis=1)
    return norms if scale is None else norms * np.abs(np.asarray(scale, dtype=np.float64))


def _units(ctx: RepairContext) -> list[tuple[Layer, Layer]]:
    """(conv, unit) pairs: the BN that normalises a conv where BN is kept, the conv itself where
    the file has no BatchNorm at all; the head and non-conv layers are left alone."""
    inv = ctx.inventory
    out = []
    for layer in inv.layers:
        if layer.kind != "conv" or layer.head:
            continue
        if layer.bn is not None:
            out.append((layer, inv[layer.bn]))
        elif not inv.has_batchnorm:
            out.append((layer, layer))
    return out


@register_method("clp", summary="Channel Lipschitzness-based Pruning: prune conv channels whose Lipschitz "
                 "upper bound is an outlier in their layer; data-free", source="Zheng et al., ECCV 2022, "
                 "and the authors' CLP.py", needs=("none", "labeled"), options=OPTIONS)
def run_clp(ctx: RepairContext, *, u: float, max_acc_drop: float | None, u_max: float) -> RepairResult:
    uclc = _uclc(ctx)
    params = {"u": u, "max_acc_drop": max_acc_drop, "u_max": u_max}
    log: dict = {}
    if max_acc_drop is not None:
        u, log = _search_u(ctx, uclc, u, u_max, max_acc_drop)
    masks, thresholds = {}, {}
    for name, values in uclc.items():
        limit = layer_limit(values, u)
        masks[name] = (values <= limit).astype(np.float32)
        thresholds[name] = float(limit)
    log.update(u=u, thresholds=thresholds, layers=len(masks))
    return RepairResult("clp", params, masks=masks, semantics="zero-bias",
                        scores={n: v.astype(np.float32) for n, v in uclc.items()}, log=log)


def _search_u(ctx: RepairContext, uclc: dict[str, np.ndarray], u: float, u_max: float,
              max_drop: float) -> tuple[float, dict]:
    """The smallest u from ``u`` up (steps of 0.25) whose pruning costs at most ``max_drop`` points
    of accuracy on the defender's clean images."""
    x, y = ctx.labeled("clp with max_acc_drop")
    units = {name: ctx.inventory[name] for name in uclc}
    mod = Modulation(ctx.executor, list(units.values()), bias_follows_mask=True)
    tried = []
    with mod:
        base = accuracy(ctx.executor, x, y)
        while True:
            mod.set_masks({n: (v <= layer_limit(v, u)).astype(np.float32) for n, v in uclc.items()})
            drop = base - accuracy(ctx.executor, x, y)
            tried.append({"u": u, "acc_drop": round(drop, 2)})
            if drop <= max_drop or u >= u_max:
                return u, {"u_search": tried}
            u = min(u + 0.25, u_max)


def _uclc(ctx: RepairContext) -> dict[str, np.ndarray]:
    """UCLC per unit layer (BN or conv, as ``_units`` says)."""
    ex = ctx.executor
    out = {}
    for conv, unit in _units(ctx):
        weight = ex.value(conv.weight).detach().cpu().numpy()
        scale = None
        if unit is not conv:
            gamma = ex.value(unit.weight).detach().cpu().numpy()
            if unit.var is None:
                raise ModelError(f"BatchNormalization '{unit.name}' reads its running variance from a computed "
                                 "tensor, not an initializer; CLP needs it")
            var = ex.value(unit.var).detach().cpu().numpy()
            scale = gamma / np.sqrt(var)
        out[unit.name] = channel_lipschitz(weight, scale)
    return out
