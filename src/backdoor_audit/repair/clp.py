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
from ..graph.neurons import Layer
from ..options import Option
from .base import RepairContext, RepairResult, register_method

OPTIONS = [
    Option("u", float, 3.0, "prune channels whose UCLC exceeds mean + u * std of their layer",
           "the authors' code (CLP.py, u=3)", minimum=0),
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
                 "and the authors' CLP.py", needs="none", options=OPTIONS)
def run_clp(ctx: RepairContext, *, u: float) -> RepairResult:
    ex = ctx.executor
    masks, scores, thresholds = {}, {}, {}
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
        uclc = channel_lipschitz(weight, scale)
        limit = uclc.mean() + u * (uclc.std(ddof=1) if uclc.size > 1 else 0.0)
        masks[unit.name] = (uclc <= limit).astype(np.float32)
        scores[unit.name] = uclc.astype(np.float32)
        thresholds[unit.name] = float(limit)
    return RepairResult("clp", {"u": u}, masks=masks, semantics="zero-bias", scores=scores,
                        log={"thresholds": thresholds, "layers": len(masks)})
