"""Weight-bearing and spatial operators: Conv, Gemm, MatMul, normalisations, pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from ...errors import UnsupportedOpError

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial_pads(ctx, in_sizes, kernel, strides, dilations) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] resolved from ``pads`` or ``auto_pad``."""
    n = len(in_sizes)
    auto = ctx.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "", None):
        return list(ctx.attr("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, e1, e2] -> F.pad's (b_last, e_last, ..., b_first, e_first)."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


@register("Conv")
def _conv(ctx, x):
    inp, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    if nd not in _CONV:
        raise UnsupportedOpError(f"node '{ctx.name}' (Conv): {nd}-D convolution is not supported")
    kernel = list(ctx.attr("kernel_shape", w.shape[2:]))
    strides = list(ctx.attr("strides", [1] * nd))
    dil = list(ctx.attr("dilations", [1] * nd))
    pads = _spatial_pads(ctx, inp.shape[2:], kernel, strides, dil)
    if _symmetric(pads):
        padding = pads[:nd]
    else:
        inp = F.pad(inp, _torch_pad(pads))
        padding = [0] * nd
    return _CONV[nd](inp, w, b, strides, padding, dil, ctx.attr("group", 1))


@register("Gemm")
def _gemm(ctx, x):
    a, b = x[0], x[1]
    c = x[2] if len(x) > 2 else None
    if ctx.attr("transA", 0):
        a = a.transpose(0, 1)
    if ctx.attr("transB", 0):
        b = b.transpose(0, 1)
    out = ctx.attr("alpha", 1.0) * (a @ b)
    if c is not None:
        out = out + ctx.attr("beta", 1.0) * c
    return out


@register("MatMul")
def _matmul(ctx, x):
    return torch.matmul(x[0], x[1])


@register("BatchNormalization")
def _bn(ctx, x):
    if ctx.attr("training_mode", 0) or ctx.n_outputs > 1:
        raise UnsupportedOpError(f"node '{ctx.name}' (BatchNormalization): training mode is not supported")
    inp, scale, bias, mean, var = x[:5]
    shape = [1, -1] + [1] * (inp.dim() - 2)
    mode = ctx.attrs.get("_bn_mode", "running")  # set by OnnxExecutor.batchnorm_mode
    if mode != "running":
        dims = [0] + list(range(2, inp.dim()))
        batch_mean, batch_var = inp.mean(dim=dims), inp.var(dim=dims, unbiased=False)
        if mode == "update":
            n = inp.numel() // max(inp.shape[1], 1)
            momentum = float(ctx.attr("momentum", 0.9))
            with torch.no_grad():  # the stored statistics, in place: they are the executor's tensors
                mean.mul_(momentum).add_(batch_mean.detach(), alpha=1 - momentum)
                var.mul_(momentum).add_(batch_var.detach() * (n / max(n - 1, 1)), alpha=1 - momentum)
        mean, var = batch_mean, batch_var
    inv = torch.rsqrt(var + ctx.attr("epsilon", 1e-5))
    return (inp - mean.view(shape)) * (inv * scale).view(shape) + bias.view(shape)


@register("InstanceNormalization")
def _instnorm(ctx, x):
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=ctx.attr("epsilon", 1e-5))


@register("LayerNormalization")
def _layernorm(ctx, x):
    inp = x[0]
    axis = ctx.attr("axis", -1) % inp.dim()
    dims = tuple(range(axis, inp.dim()))
    mean = inp.mean(dim=dims, keepdim=True)
    var = inp.var(dim=dims, keepdim=True, unbiased=False)
    out = (inp - mean) * torch.rsqrt(var + ctx.attr("epsilon", 1e-5)) * x[1]
    return out + x[2] if len(x) > 2 and x[2] is not None else out


@register("Dropout")
def _dropout(ctx, x):
    if ctx.n_outputs > 1:
        return x[0], torch.ones_like(x[0], dtype=torch.bool)
    return x[0]


def _pool_args(ctx, inp):
    nd = inp.dim() - 2
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * nd))
    dil = list(ctx.attr("dilations", [1] * nd))
    pads = _spatial_pads(ctx, inp.shape[2:], kernel, strides, dil)
    return nd, kernel, strides, dil, pads


@register("MaxPool")
def _maxpool(ctx, x):
    inp = x[0]
    if ctx.n_outputs > 1:
        raise UnsupportedOpError(f"node '{ctx.name}' (MaxPool): the Indices output is not supported")
    nd, kernel, strides, dil, pads = _pool_args(ctx, inp)
    ceil = bool(ctx.attr("ceil_mode", 0))
    if _symmetric(pads) and all(p <= k // 2 for p, k in zip(pads[:nd], kernel)):
        return _MAXPOOL[nd](inp, kernel, strides, pads[:nd], dil, ceil_mode=ceil)
    inp = F.pad(inp, _torch_pad(pads), value=float("-inf"))
    return _MAXPOOL[nd](inp, kernel, strides, 0, dil, ceil_mode=ceil)


@register("AveragePool")
def _avgpool(ctx, x):
    inp = x[0]
    nd, kernel, strides, dil, pads = _pool_args(ctx, inp)
    if any(d != 1 for d in dil):
        raise UnsupportedOpError(f"node '{ctx.name}' (AveragePool): dilations are not supported")
    ceil = bool(ctx.attr("ceil_mode", 0))
    include = bool(ctx.attr("count_include_pad", 0))
    if not any(pads):
        return _AVGPOOL[nd](inp, kernel, strides, 0, ceil_mode=ceil)
    if _symmetric(pads) and all(p <= k // 2 for p, k in zip(pads[:nd], kernel)):
        return _AVGPOOL[nd](inp, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)
    padded = F.pad(inp, _torch_pad(pads))
    summed = _AVGPOOL[nd](padded, kernel, strides, 0, ceil_mode=ceil)
    if include:
        return summed
    ones = F.pad(torch.ones_like(inp[:1, :1]), _torch_pad(pads))
    return summed / _AVGPOOL[nd](ones, kernel, strides, 0, ceil_mode=ceil)


@register("GlobalAveragePool")
def _gap(ctx, x):
    return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)


@register("GlobalMaxPool")
def _gmp(ctx, x):
    return x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)


@register("Resize", "Upsample")
def _resize(ctx, x):
    inp = x[0]
    mode = ctx.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.op_type == "Upsample" or ctx.opset < 11:
        scales = x[1] if len(x) > 1 else ctx.attr("scales")
        sizes = None
    else:
        scales = x[2] if len(x) > 2 else None
        sizes = x[3] if len(x) > 3 else None
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    kwargs = {}
    if sizes is not None and sizes.numel():
        kwargs["size"] = [int(v) for v in sizes.tolist()[2:]]
    else:
        s = [float(v) for v in (scales.tolist() if isinstance(scales, torch.Tensor) else scales)]
        kwargs["scale_factor"] = s[2:]
    if mode == "nearest":
        nm = ctx.attr("nearest_mode", "round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        if ctm != "asymmetric" or nm != "floor":
            if not (ctx.op_type == "Upsample" or ctx.opset < 11):
                raise UnsupportedOpError(
                    f"node '{ctx.name}' (Resize): nearest with {ctm}/{nm} is not supported")
        return F.interpolate(inp, mode="nearest", **kwargs)
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[inp.dim()]
        return F.interpolate(inp, mode=torch_mode, align_corners=ctm == "align_corners", **kwargs)
    raise UnsupportedOpError(f"node '{ctx.name}' (Resize): mode {mode} with {ctm} is not supported")
