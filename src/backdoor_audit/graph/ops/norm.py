"""Normalisations beyond BatchNormalization: LRN, GroupNormalization-18 (per-group scale) and
-21 (per-channel), RMSNormalization-23, LpNormalization, MeanVarianceNormalization."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from . import register
from ._util import ONNX_DTYPES, norm_axis


# -- normalisations --------------------------------------------------------------------------

@register("LRN", attrs=("alpha", "beta", "bias", "size"))
def _lrn(ctx, x):
    """y = x / (bias + alpha / size * sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)])^beta
    (ONNX's window: the larger half after the channel for an even size, unlike F.local_response_norm)."""
    t = x[0]
    size = int(ctx.attr("size"))
    alpha, beta, bias = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = t * t
    channels = t.shape[1]
    pad = [0, 0] * (t.dim() - 2) + [before, after]
    padded = F.pad(sq, pad)
    total = padded.narrow(1, 0, channels)
    for i in range(1, size):
        total = total + padded.narrow(1, i, channels)
    return t / (bias + alpha / size * total).pow(beta)


def _stash(ctx, t):
    """The computation dtype for stage one (``stash_type``; 1 = float32)."""
    code = ctx.attr("stash_type", 1)
    return ONNX_DTYPES.get(code, torch.float32) if t.is_floating_point() else torch.float32


def _groupnorm_check(ctx):
    if ctx.attr("num_groups") is None:
        return "GroupNormalization without num_groups"
    return None


def _groupnorm(per_group: bool):
    def run(ctx, x):
        inp, scale, bias = x[0], x[1], x[2]
        groups = int(ctx.attr("num_groups"))
        n, c = inp.shape[0], inp.shape[1]
        dtype = inp.dtype
        t = inp.to(_stash(ctx, inp)).reshape(n, groups, -1)
        mean = t.mean(dim=-1, keepdim=True)
        var = (t - mean).pow(2).mean(dim=-1, keepdim=True)
        t = (t - mean) / torch.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
        if per_group:  # GroupNormalization-18: scale and bias have one value per group
            t = t * scale.to(t.dtype).view(1, groups, 1) + bias.to(t.dtype).view(1, groups, 1)
            return t.reshape(inp.shape).to(dtype)
        t = t.reshape(inp.shape).to(dtype)
        shape = [1, c] + [1] * (inp.dim() - 2)
        return t * scale.view(shape) + bias.view(shape)

    return run


register("GroupNormalization", attrs=("epsilon", "num_groups"), since=18, until=18,
         check=_groupnorm_check)(_groupnorm(per_group=True))
register("GroupNormalization", attrs=("epsilon", "num_groups", "stash_type"), since=21,
         check=_groupnorm_check)(_groupnorm(per_group=False))


@register("RMSNormalization", attrs=("axis", "epsilon", "stash_type"), since=23)
def _rmsnorm(ctx, x):
    inp, scale = x[0], x[1]
    axis = norm_axis(ctx.attr("axis", -1), inp.dim())
    dims = tuple(range(axis, inp.dim()))
    t = inp.to(_stash(ctx, inp))
    rms = torch.sqrt(t.pow(2).mean(dim=dims, keepdim=True) + float(ctx.attr("epsilon", 1e-5)))
    return (t / rms).to(inp.dtype) * scale


def _lpnorm_check(ctx):
    if int(ctx.attr("p", 2)) not in (1, 2):
        return f"LpNormalization with p={ctx.attr('p')} (only 1 and 2 exist)"
    return None


@register("LpNormalization", attrs=("axis", "p"), check=_lpnorm_check)
def _lpnorm(ctx, x):
    t = x[0]
    axis = ctx.attr("axis", -1)
    if int(ctx.attr("p", 2)) == 1:
        return t / t.abs().sum(dim=axis, keepdim=True)
    return t / t.pow(2).sum(dim=axis, keepdim=True).sqrt()


@register("MeanVarianceNormalization", attrs=("axes",))
def _mvn(ctx, x):
    t = x[0]
    axes = tuple(norm_axis(a, t.dim()) for a in ctx.attr("axes", [0, 2, 3]))
    mean = t.mean(dim=axes, keepdim=True)
    var = (t * t).mean(dim=axes, keepdim=True) - mean * mean
    return (t - mean) / (torch.sqrt(var) + 1e-9)
