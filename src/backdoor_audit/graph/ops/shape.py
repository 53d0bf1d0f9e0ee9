"""Shape computation and data movement: the Shape -> Gather -> Concat -> Reshape family."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import ints, norm_axis, scalar


@register("Shape", attrs=("start", "end"))
def _shape(ctx, x):
    dims = list(x[0].shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64, device=x[0].device)


@register("Size")
def _size(ctx, x):
    return torch.tensor(x[0].numel(), dtype=torch.int64, device=x[0].device)


@register("Flatten", attrs=("axis",))
def _flatten(ctx, x):
    t = x[0]
    axis = norm_axis(ctx.attr("axis", 1), t.dim())
    lead = 1
    for d in t.shape[:axis]:
        lead *= d
    return t.reshape(lead, -1)


@register("Reshape", attrs=("allowzero", "shape"))
def _reshape(ctx, x):
    t = x[0]
    shape = list(ctx.attr("shape")) if ctx.opset < 5 else ints(x[1])  # Reshape-1: an attribute
    if not ctx.attr("allowzero", 0):
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


@register("Transpose", attrs=("perm",))
def _transpose(ctx, x):
    perm = ctx.attr("perm") or list(reversed(range(x[0].dim())))
    return x[0].permute(*perm)


def _axes(ctx, x, idx: int, since: int):
    """Axes from attribute (before `since`) or from input `idx` (from `since` on)."""
    if ctx.opset < since:
        return ctx.attr("axes")
    return ints(x[idx]) if len(x) > idx and x[idx] is not None else None


@register("Squeeze", attrs=("axes",))
def _squeeze(ctx, x):
    t = x[0]
    axes = _axes(ctx, x, 1, 13)
    if axes is None:
        return t.squeeze()
    for a in sorted((norm_axis(a, t.dim()) for a in axes), reverse=True):
        t = t.squeeze(a)
    return t


@register("Unsqueeze", attrs=("axes",))
def _unsqueeze(ctx, x):
    t = x[0]
    axes = _axes(ctx, x, 1, 13)
    rank = t.dim() + len(axes)
    for a in sorted(norm_axis(a, rank) for a in axes):
        t = t.unsqueeze(a)
    return t


@register("Concat", attrs=("axis",))
def _concat(ctx, x):
    parts = [t for t in x if t is not None and (t.dim() == 0 or t.numel() or t.dim() > 1)]
    return torch.cat(parts, dim=ctx.attr("axis"))


@register("Split", attrs=("axis", "split", "num_outputs"))
def _split(ctx, x):
    t = x[0]
    axis = norm_axis(ctx.attr("axis", 0), t.dim())
    sizes = ctx.attr("split") if ctx.opset < 13 else (ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if not sizes:
        n = ctx.attr("num_outputs", ctx.n_outputs)
        step = -(-t.shape[axis] // n)
        sizes = [min(step, t.shape[axis] - i * step) for i in range(n)]
    return tuple(torch.split(t, list(sizes), dim=axis))


@register("Gather", attrs=("axis",))
def _gather(ctx, x):
    data, idx = x[0], x[1].long()
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    size = data.shape[axis]
    idx = torch.where(idx < 0, idx + size, idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1:]))


@register("Slice", attrs=("starts", "ends", "axes"))
def _slice(ctx, x):
    t = x[0]
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes, steps = ctx.attr("axes"), None
    else:
        starts, ends = ints(x[1]), ints(x[2])
        axes = ints(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = ints(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = axes if axes else list(range(len(starts)))
    steps = steps if steps else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(a, t.dim())
        dim = t.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        if st == 1:
            t = t.narrow(a, s, max(e - s, 0))
        elif (e - s) * st > 0:
            t = t.index_select(a, torch.arange(s, e, st, device=t.device))
        else:  # start at or past end for the step's sign: nothing
            t = t.narrow(a, 0, 0)
    return t


_CONSTANT_KEYS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _constant_check(ctx):
    if not any(k in ctx.attrs for k in _CONSTANT_KEYS):
        return "Constant: only numeric values are supported (not strings or sparse tensors)"
    return None


@register("Constant", attrs=_CONSTANT_KEYS, check=_constant_check)
def _constant(ctx, x):
    v = ctx.attrs[next(k for k in _CONSTANT_KEYS if k in ctx.attrs)]  # _constant_check: one is there
    return v if isinstance(v, torch.Tensor) else torch.tensor(v)


@register("ConstantOfShape", attrs=("value",))
def _const_of_shape(ctx, x):
    value = ctx.attr("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return torch.full(ints(x[0]), value.reshape(-1)[0].item(), dtype=value.dtype, device=x[0].device)


@register("Expand")
def _expand(ctx, x):
    shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(ints(x[1])))
    return x[0].expand(shape)


@register("Tile")
def _tile(ctx, x):
    return x[0].repeat(ints(x[1]))


@register("Range")
def _range(ctx, x):
    start, limit, delta = (scalar(t) for t in x[:3])
    return torch.arange(start, limit, delta, dtype=x[0].dtype, device=x[0].device)


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_check(ctx):
    mode = ctx.attr("mode", "constant")
    if mode not in _PAD_MODES:
        return f"Pad mode '{mode}' is not supported"
    return None


@register("Pad", attrs=("mode", "pads", "value"), check=_pad_check)
def _pad(ctx, x):
    t = x[0]
    mode = ctx.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.opset < 11:
        pads, value, axes = list(ctx.attr("pads")), ctx.attr("value", 0.0), None
    else:
        pads = ints(x[1])
        value = scalar(x[2] if len(x) > 2 else None, 0.0)
        axes = ints(x[3]) if len(x) > 3 and x[3] is not None else None
    rank = t.dim()
    if axes is not None:  # opset 18: pads only for the listed axes
        full = [0] * (2 * rank)
        n = len(axes)
        for i, a in enumerate(axes):
            a = norm_axis(a, rank)
            full[a], full[a + rank] = pads[i], pads[i + n]
        pads = full
    if mode == "constant":
        torch_pads = []
        for i in reversed(range(rank)):
            torch_pads += [pads[i], pads[i + rank]]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        return F.pad(t, torch_pads, value=value)
    for axis in range(rank):  # reflect / edge / wrap: a gather per padded axis, any rank and dtype
        before, after = pads[axis], pads[axis + rank]
        if before or after:
            t = t.index_select(axis, _pad_index(mode, t.shape[axis], before, after, t.device))
    return t


def _pad_index(mode: str, size: int, before: int, after: int, device) -> torch.Tensor:
    """Source index of each output position along one axis (negative pads crop)."""
    pos = torch.arange(-before, size + after, device=device)
    if mode == "edge":
        return pos.clamp(0, size - 1)
    if mode == "wrap":
        return pos.remainder(size)
    if size == 1:
        return torch.zeros_like(pos)
    period = 2 * (size - 1)  # reflect without repeating the edge: 2 1 | 0 1 2 3 | 2 1
    p = pos.remainder(period)
    return torch.where(p < size, p, period - p)
