"""Shape computation and data movement: the Shape -> Gather -> Concat -> Reshape family."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import ints, norm_axis, scalar
from ...errors import UnsupportedOpError


@register("Shape")
def _shape(ctx, x):
    dims = list(x[0].shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64, device=x[0].device)


@register("Size")
def _size(ctx, x):
    return torch.tensor(x[0].numel(), dtype=torch.int64, device=x[0].device)


@register("Flatten")
def _flatten(ctx, x):
    t = x[0]
    axis = norm_axis(ctx.attr("axis", 1), t.dim())
    lead = 1
    for d in t.shape[:axis]:
        lead *= d
    return t.reshape(lead, -1)


@register("Reshape")
def _reshape(ctx, x):
    t, shape = x[0], ints(x[1])
    if ctx.opset < 5:
        shape = list(ctx.attr("shape"))
    if not ctx.attr("allowzero", 0):
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


@register("Transpose")
def _transpose(ctx, x):
    perm = ctx.attr("perm") or list(reversed(range(x[0].dim())))
    return x[0].permute(*perm)


def _axes(ctx, x, idx: int, since: int):
    """Axes from attribute (before `since`) or from input `idx` (from `since` on)."""
    if ctx.opset < since:
        return ctx.attr("axes")
    return ints(x[idx]) if len(x) > idx and x[idx] is not None else None


@register("Squeeze")
def _squeeze(ctx, x):
    t = x[0]
    axes = _axes(ctx, x, 1, 13)
    if axes is None:
        return t.squeeze()
    for a in sorted((norm_axis(a, t.dim()) for a in axes), reverse=True):
        t = t.squeeze(a)
    return t


@register("Unsqueeze")
def _unsqueeze(ctx, x):
    t = x[0]
    axes = _axes(ctx, x, 1, 13)
    rank = t.dim() + len(axes)
    for a in sorted(norm_axis(a, rank) for a in axes):
        t = t.unsqueeze(a)
    return t


@register("Concat")
def _concat(ctx, x):
    parts = [t for t in x if t is not None and (t.dim() == 0 or t.numel() or t.dim() > 1)]
    return torch.cat(parts, dim=ctx.attr("axis"))


@register("Split")
def _split(ctx, x):
    t = x[0]
    axis = norm_axis(ctx.attr("axis", 0), t.dim())
    sizes = ctx.attr("split") if ctx.opset < 13 else (ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if not sizes:
        n = ctx.attr("num_outputs", ctx.n_outputs)
        step = -(-t.shape[axis] // n)
        sizes = [min(step, t.shape[axis] - i * step) for i in range(n)]
    return tuple(torch.split(t, list(sizes), dim=axis))


@register("Gather")
def _gather(ctx, x):
    data, idx = x[0], x[1].long()
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    size = data.shape[axis]
    idx = torch.where(idx < 0, idx + size, idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1:]))


@register("Slice")
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
            t = t.narrow(a, s, max(e - s, 0)) if st == 1 else t.index_select(
                a, torch.arange(s, e, st, device=t.device))
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            t = t.index_select(a, torch.arange(s, e, st, device=t.device))
    return t


@register("Constant")
def _constant(ctx, x):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in ctx.attrs:
            v = ctx.attrs[key]
            return v if isinstance(v, torch.Tensor) else torch.tensor(v)
    raise UnsupportedOpError(f"node '{ctx.name}' (Constant): only numeric values are supported")


@register("ConstantOfShape")
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


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@register("Pad")
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
    torch_pads = []
    for i in reversed(range(rank)):
        torch_pads += [pads[i], pads[i + rank]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode not in _PAD_MODES:
        raise UnsupportedOpError(f"node '{ctx.name}' (Pad): mode {mode} is not supported")
    if mode == "constant":
        return F.pad(t, torch_pads, value=value)
    return F.pad(t, torch_pads, mode=_PAD_MODES[mode])
