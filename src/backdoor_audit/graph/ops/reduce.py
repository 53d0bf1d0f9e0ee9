"""Reductions: axes as an attribute before opset 18 (13 for ReduceSum), as an input after."""

from __future__ import annotations

import torch

from . import register
from ._util import ints, norm_axis

_REDUCE = {
    "ReduceMean": lambda t, d, k: t.mean(dim=d, keepdim=k),
    "ReduceSum": lambda t, d, k: t.sum(dim=d, keepdim=k),
    "ReduceMax": lambda t, d, k: t.amax(dim=d, keepdim=k),
    "ReduceMin": lambda t, d, k: t.amin(dim=d, keepdim=k),
    "ReduceProd": lambda t, d, k: _prod(t, d, k),
    "ReduceL2": lambda t, d, k: t.pow(2).sum(dim=d, keepdim=k).sqrt(),
    "ReduceL1": lambda t, d, k: t.abs().sum(dim=d, keepdim=k),
    "ReduceSumSquare": lambda t, d, k: t.pow(2).sum(dim=d, keepdim=k),
    "ReduceLogSumExp": lambda t, d, k: torch.logsumexp(t, dim=d, keepdim=k),
    "ReduceLogSum": lambda t, d, k: t.sum(dim=d, keepdim=k).log(),
}


def _prod(t, dims, keep):
    for d in sorted(dims, reverse=True):
        t = t.prod(dim=d, keepdim=keep)
    return t


def _reduce(op_type):
    since = 13 if op_type == "ReduceSum" else 18

    def run(ctx, x):
        t = x[0]
        if ctx.opset < since:
            axes = ctx.attr("axes")
        else:
            axes = ints(x[1]) if len(x) > 1 and x[1] is not None else None
        keep = bool(ctx.attr("keepdims", 1))
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return t
            axes = list(range(t.dim()))
        dims = tuple(norm_axis(a, t.dim()) for a in axes)
        return _REDUCE[op_type](t, dims, keep)

    return run


for _op in _REDUCE:
    register(_op, attrs=("axes", "keepdims", "noop_with_empty_axes"))(_reduce(_op))


def _arg(fn):
    def run(ctx, x):
        t = x[0]
        axis = norm_axis(ctx.attr("axis", 0), t.dim())
        keep = bool(ctx.attr("keepdims", 1))
        if ctx.attr("select_last_index", 0):
            flipped = t.flip(axis)
            idx = t.shape[axis] - 1 - fn(flipped, dim=axis, keepdim=keep)
        else:
            idx = fn(t, dim=axis, keepdim=keep)
        return idx.to(torch.int64)

    return run


register("ArgMax", attrs=("axis", "keepdims", "select_last_index"))(_arg(torch.argmax))
register("ArgMin", attrs=("axis", "keepdims", "select_last_index"))(_arg(torch.argmin))
