"""The index family (TopK, GatherElements, GatherND, ScatterND, ScatterElements, NonZero, OneHot,
EyeLike) with CumSum, Trilu and Hardmax. Float paths stay differentiable (gathers and scatters,
never a round trip through numpy)."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from . import register
from ._util import ONNX_DTYPES, norm_axis, opt as _opt, prod as _prod, scalar


# -- index family ------------------------------------------------------------------------------

def _topk_check(ctx):
    if ctx.opset < 10 and ctx.attr("k") is None:
        return "TopK-1 without k"
    return None


@register("TopK", attrs=("axis", "k", "largest", "sorted"), check=_topk_check)
def _topk(ctx, x):
    t = x[0]
    k = int(ctx.attr("k")) if ctx.opset < 10 else int(scalar(x[1]))
    axis = norm_axis(ctx.attr("axis", -1), t.dim())
    largest = bool(ctx.attr("largest", 1))
    # a stable sort: among equal values the lower index comes first, as ONNX asks
    order = torch.sort(t, dim=axis, descending=largest, stable=True).indices
    idx = order.narrow(axis, 0, k)
    return torch.gather(t, axis, idx), idx.to(torch.int64)


def _norm_index(idx, size):
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


@register("GatherElements", attrs=("axis",))
def _gather_elements(ctx, x):
    data = x[0]
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    return torch.gather(data, axis, _norm_index(x[1], data.shape[axis]))


@register("GatherND", attrs=("batch_dims",))
def _gather_nd(ctx, x):
    data, idx = x[0], x[1].long()
    b = int(ctx.attr("batch_dims", 0))
    k = idx.shape[-1]
    batch = _prod(data.shape[:b])
    inner = list(data.shape[b:b + k])
    rest = list(data.shape[b + k:])
    flat = data.reshape([batch * _prod(inner)] + rest)
    ix = idx.reshape(batch, -1, k)
    lin = torch.zeros(ix.shape[:2], dtype=torch.long, device=idx.device)
    for j, size in enumerate(inner):
        lin = lin * size + _norm_index(ix[..., j], size)
    lin = lin + torch.arange(batch, device=idx.device).view(-1, 1) * _prod(inner)
    out = flat.index_select(0, lin.reshape(-1))
    return out.reshape(list(idx.shape[:-1]) + rest)


_REDUCTIONS = ("none", "add", "mul", "max", "min")
_TORCH_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _scatter_check(ctx):
    red = ctx.attr("reduction", "none")
    if red not in _REDUCTIONS:
        return f"{ctx.op_type} reduction '{red}' is not supported"
    return None


@register("ScatterND", attrs=("reduction",), check=_scatter_check)
def _scatter_nd(ctx, x):
    data, idx, upd = x[0], x[1].long(), x[2]
    k = idx.shape[-1]
    inner = list(data.shape[:k])
    rest = list(data.shape[k:])
    flat = data.reshape([_prod(inner)] + rest)
    ix = idx.reshape(-1, k)
    lin = torch.zeros(ix.shape[0], dtype=torch.long, device=idx.device)
    for j, size in enumerate(inner):
        lin = lin * size + _norm_index(ix[:, j], size)
    u = upd.reshape([ix.shape[0]] + rest).to(data.dtype)
    red = ctx.attr("reduction", "none")
    if red == "none":
        out = flat.index_copy(0, lin, u)
    elif red == "add":
        out = flat.index_add(0, lin, u)
    else:  # mul / max / min: a scatter_reduce with the row index repeated across each slice
        rows = lin.view([-1] + [1] * len(rest)).expand_as(u)
        out = flat.scatter_reduce(0, rows, u, _TORCH_REDUCE[red], include_self=True)
    return out.reshape(data.shape)


@register("ScatterElements", attrs=("axis", "reduction"), check=_scatter_check)
def _scatter_elements(ctx, x):
    data, upd = x[0], x[2]
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    idx = _norm_index(x[1], data.shape[axis])
    red = ctx.attr("reduction", "none")
    if red == "none":
        return data.scatter(axis, idx, upd)
    if red == "add":
        return data.scatter_add(axis, idx, upd)
    return data.scatter_reduce(axis, idx, upd, _TORCH_REDUCE[red], include_self=True)


@register("NonZero")
def _nonzero(ctx, x):
    return torch.nonzero(x[0]).transpose(0, 1).contiguous().to(torch.int64)


@register("OneHot", attrs=("axis",))
def _onehot(ctx, x):
    idx, depth, values = x[0], int(scalar(x[1])), x[2]
    idx = idx.long() if not idx.is_floating_point() else idx.trunc().long()
    idx = torch.where(idx < 0, idx + depth, idx)
    rank = idx.dim() + 1
    axis = norm_axis(ctx.attr("axis", -1), rank)
    classes = torch.arange(depth, device=idx.device)
    hot = idx.unsqueeze(-1) == classes  # out-of-range indices match no class: all off
    hot = hot.movedim(-1, axis)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot, on, off)


@register("EyeLike", attrs=("dtype", "k"))
def _eyelike(ctx, x):
    t = x[0]
    dtype = ONNX_DTYPES[ctx.attr("dtype")] if ctx.attr("dtype") is not None else t.dtype
    rows, cols = t.shape
    k = int(ctx.attr("k", 0))
    i = torch.arange(rows, device=t.device).view(-1, 1)
    j = torch.arange(cols, device=t.device).view(1, -1)
    return (j - i == k).to(dtype)


# -- scans, triangles, hardmax, depth <-> space ------------------------------------------------

@register("CumSum", attrs=("exclusive", "reverse"))
def _cumsum(ctx, x):
    t = x[0]
    axis = norm_axis(int(scalar(x[1])), t.dim())
    rev = bool(ctx.attr("reverse", 0))
    if rev:
        t = t.flip(axis)
    out = torch.cumsum(t, dim=axis)
    if ctx.attr("exclusive", 0):  # shift by one: the first element sums nothing
        out = F.pad(out.narrow(axis, 0, t.shape[axis] - 1).movedim(axis, -1), [1, 0]).movedim(-1, axis)
    if rev:
        out = out.flip(axis)
    return out.to(x[0].dtype)


@register("Trilu", attrs=("upper",))
def _trilu(ctx, x):
    k = int(scalar(_opt(x, 1), 0))
    return torch.triu(x[0], k) if ctx.attr("upper", 1) else torch.tril(x[0], k)


def _hardmax_1d(t, dim):
    idx = t.argmax(dim=dim, keepdim=True)  # the first maximum
    return torch.zeros_like(t).scatter(dim, idx, 1.0)


@register("Hardmax", attrs=("axis",))
def _hardmax(ctx, x):
    t = x[0]
    if ctx.opset < 13:  # coerce to 2-D at `axis` (default 1), one 1 per flattened row
        axis = norm_axis(ctx.attr("axis", 1), t.dim())
        flat = t.reshape(_prod(t.shape[:axis]), -1)
        return _hardmax_1d(flat, 1).reshape(t.shape)
    return _hardmax_1d(t, norm_axis(ctx.attr("axis", -1), t.dim()))
