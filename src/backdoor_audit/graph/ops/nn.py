"""Weight-bearing and spatial operators: Conv, Gemm, MatMul, normalisations, pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from ._util import ints, norm_axis
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


CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_POOL_ATTRS = ("auto_pad", "ceil_mode", "kernel_shape", "pads", "strides")


@register("Conv", attrs=CONV_ATTRS)
def _conv(ctx, x):
    return convolve(ctx, x[0], x[1], x[2] if len(x) > 2 else None)


def convolve(ctx, inp, w, b=None):
    """Conv's arithmetic from the node's attributes (pads or auto_pad, strides, dilations, group);
    QLinearConv runs it on centred integer operands."""
    nd = w.dim() - 2
    if nd not in _CONV:
        raise UnsupportedOpError(f"node '{ctx.name}' ({ctx.op_type}): {nd}-D convolution is not supported")
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


@register("Gemm", attrs=("alpha", "beta", "transA", "transB"))
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


def _bn_check(ctx):
    if ctx.attr("training_mode", 0) or ctx.n_outputs > 1:
        return "BatchNormalization in training mode (more than one output) is not supported"
    if not ctx.attr("spatial", 1):
        return "BatchNormalization with spatial=0 is not supported"
    return None


@register("BatchNormalization", attrs=("epsilon", "momentum", "training_mode", "spatial"),
          check=_bn_check)
def _bn(ctx, x):
    """One fused kernel (F.batch_norm) in every mode: written out as elementwise ops it cost a BN
    ResNet 1.7x the native module's forward. The stored statistics go in detached (no gradient
    ever reaches them; in ``update`` mode the kernel moves them in place, as PyTorch's training
    mode does: running = running * momentum + batch * (1 - momentum), the variance unbiased)."""
    inp, scale, bias, mean, var = x[:5]
    mode = ctx.attrs.get("_bn_mode", "running")  # set by OnnxExecutor.batchnorm_mode
    eps = ctx.attr("epsilon", 1e-5)
    if mode == "running":
        return F.batch_norm(inp, mean.detach(), var.detach(), scale, bias, training=False, eps=eps)
    if mode == "batch":
        return F.batch_norm(inp, None, None, scale, bias, training=True, eps=eps)
    momentum = 1.0 - float(ctx.attr("momentum", 0.9))  # ONNX's momentum weighs the old value
    return F.batch_norm(inp, mean.detach(), var.detach(), scale, bias, training=True, momentum=momentum, eps=eps)


@register("InstanceNormalization", attrs=("epsilon",))
def _instnorm(ctx, x):
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=ctx.attr("epsilon", 1e-5))


@register("LayerNormalization", attrs=("axis", "epsilon", "stash_type"))
def _layernorm(ctx, x):
    inp = x[0]
    axis = ctx.attr("axis", -1) % inp.dim()
    dims = tuple(range(axis, inp.dim()))
    t = inp.float() if inp.dtype in (torch.float16, torch.bfloat16) else inp
    mean = t.mean(dim=dims, keepdim=True)
    var = t.var(dim=dims, keepdim=True, unbiased=False)
    inv = torch.rsqrt(var + ctx.attr("epsilon", 1e-5))
    out = ((t - mean) * inv).to(inp.dtype) * x[1]
    out = out + x[2] if len(x) > 2 and x[2] is not None else out
    return (out, mean, inv) if ctx.n_outputs > 1 else out


@register("Dropout", attrs=("seed", "ratio", "is_test"))
def _dropout(ctx, x):
    if ctx.n_outputs > 1:  # the mask in inference, as onnxruntime gives it
        if ctx.opset < 10:  # Dropout-7: a mask of x's type, zeros
            return x[0], torch.zeros_like(x[0])
        return x[0], torch.full_like(x[0], ctx.opset >= 12, dtype=torch.bool)  # Dropout-10: False; 12: True
    return x[0]


def _pool_args(ctx, inp):
    nd = inp.dim() - 2
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * nd))
    dil = list(ctx.attr("dilations", [1] * nd))
    pads = _spatial_pads(ctx, inp.shape[2:], kernel, strides, dil)
    return nd, kernel, strides, dil, pads


def _maxpool_check(ctx):
    if ctx.n_outputs > 1:
        return "MaxPool's Indices output is not supported"
    return None


@register("MaxPool", attrs=_POOL_ATTRS + ("dilations", "storage_order"), check=_maxpool_check)
def _maxpool(ctx, x):
    inp = x[0]
    nd, kernel, strides, dil, pads = _pool_args(ctx, inp)
    ceil = bool(ctx.attr("ceil_mode", 0))
    if _symmetric(pads) and all(p <= k // 2 for p, k in zip(pads[:nd], kernel)):
        return _MAXPOOL[nd](inp, kernel, strides, pads[:nd], dil, ceil_mode=ceil)
    inp = F.pad(inp, _torch_pad(pads), value=float("-inf"))
    return _MAXPOOL[nd](inp, kernel, strides, 0, dil, ceil_mode=ceil)


def _avgpool_check(ctx):
    if any(d != 1 for d in ctx.attr("dilations", [])):
        return "AveragePool with dilations is not supported"
    return None


@register("AveragePool", attrs=_POOL_ATTRS + ("count_include_pad", "dilations"),
          check=_avgpool_check)
def _avgpool(ctx, x):
    inp = x[0]
    nd, kernel, strides, dil, pads = _pool_args(ctx, inp)
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


_RESIZE_ATTRS = ("mode", "scales", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                 "exclude_outside", "extrapolation_value", "antialias", "keep_aspect_ratio_policy", "axes")
_RESIZE_CTMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_half_pixel_for_nn", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _legacy_resize(ctx) -> bool:
    """Upsample, and Resize before opset 11: asymmetric coordinates, no nearest_mode."""
    return ctx.op_type == "Upsample" or ctx.opset < 11


def _resize_check(ctx):
    """What our Resize cannot compute, from the attributes alone."""
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic") or (_legacy_resize(ctx) and mode == "cubic"):
        return f"{ctx.op_type} mode '{mode}' is not supported"
    if ctx.attr("antialias", 0) and mode != "nearest":
        return "Resize with antialias=1 is not supported"
    if _legacy_resize(ctx):
        return None
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if ctm not in _RESIZE_CTMS:
        return f"Resize coordinate_transformation_mode '{ctm}' is not supported"
    if mode == "nearest" and ctx.attr("nearest_mode", "round_prefer_floor") not in _NEAREST_MODES:
        return f"Resize nearest_mode '{ctx.attr('nearest_mode')}' is not supported"
    if ctx.attr("keep_aspect_ratio_policy", "stretch") not in ("stretch", "not_larger", "not_smaller"):
        return f"Resize keep_aspect_ratio_policy '{ctx.attr('keep_aspect_ratio_policy')}' is not supported"
    return None


def _source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None):
    """Where each output position samples the input (onnxruntime's float32 arithmetic)."""
    f32 = torch.float32
    xo = torch.arange(out_len, dtype=f32)
    s = torch.tensor(scale, dtype=f32)
    if ctm == "asymmetric":
        return xo / s
    if ctm == "pytorch_half_pixel":
        return (xo + 0.5) / s - 0.5 if out_len > 1 else torch.zeros(out_len, dtype=f32)
    if ctm == "tf_half_pixel_for_nn":
        return (xo + 0.5) / s
    if ctm == "align_corners":
        if out_len == 1:
            return torch.zeros(1, dtype=f32)
        return xo * float(in_len - 1) / float(out_len - 1)
    if ctm == "tf_crop_and_resize":
        start, end = roi
        if out_len > 1:
            return start * (in_len - 1) + xo * ((end - start) * (in_len - 1)) / float(out_len - 1)
        return torch.full((out_len,), 0.5 * (start + end) * (in_len - 1), dtype=f32)
    if ctm == "half_pixel_symmetric":
        adjustment = torch.tensor(out_len, dtype=f32) / (s * in_len)
        offset = torch.tensor(in_len / 2, dtype=f32) * (1 - adjustment)
        return offset + (xo + 0.5) / s - 0.5
    return (xo + 0.5) / s - 0.5  # half_pixel


def _along(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(dim, idx.to(t.device))


def _weights(w: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * t.dim()
    shape[dim] = -1
    return w.to(device=t.device, dtype=t.dtype).view(shape)


def _nearest_index(xs: torch.Tensor, mode: str, downsample: bool) -> torch.Tensor:
    away = torch.sign(xs) * torch.floor(xs.abs() + 0.5)  # std::round: halves away from zero
    if mode == "simple":  # Upsample / Resize-10
        return torch.ceil(xs) if downsample else torch.trunc(xs)
    if mode == "round_prefer_ceil":
        return away
    if mode == "floor":
        return torch.floor(xs)
    if mode == "ceil":
        return torch.ceil(xs)
    return torch.where(xs == torch.floor(xs) + 0.5, torch.floor(xs), away)  # round_prefer_floor


def _cubic_coeffs(s: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys' cubic convolution weights of the neighbours at -1, 0, +1, +2 for a fraction s."""
    s1, s2, s3 = s + 1, 1 - s, 2 - s
    return [((a * s1 - 5 * a) * s1 + 8 * a) * s1 - 4 * a,
            ((a + 2) * s - (a + 3)) * s * s + 1,
            ((a + 2) * s2 - (a + 3)) * s2 * s2 + 1,
            ((a * s3 - 5 * a) * s3 + 8 * a) * s3 - 4 * a]


def _resize_axis(ctx, t, dim, mode, xs, in_len, downsample, nearest_mode):
    if mode == "nearest":
        idx = _nearest_index(xs, nearest_mode, downsample).to(torch.int64).clamp(0, in_len - 1)
        return _along(t, dim, idx)
    if mode == "linear":
        xc = xs.clamp(0, in_len - 1)
        lo = torch.trunc(xc).to(torch.int64).clamp(max=in_len - 1)
        hi = (lo + 1).clamp(max=in_len - 1)
        w_hi = (xc - lo.to(xc.dtype)).abs()
        w_lo = (xc - hi.to(xc.dtype)).abs()
        same = lo == hi
        w_hi = torch.where(same, torch.full_like(w_hi, 0.5), w_hi)
        w_lo = torch.where(same, torch.full_like(w_lo, 0.5), w_lo)
        return _along(t, dim, lo) * _weights(w_lo, t, dim) + _along(t, dim, hi) * _weights(w_hi, t, dim)
    base = torch.floor(xs)
    coeffs = _cubic_coeffs(xs - base, float(ctx.attr("cubic_coeff_a", -0.75)))
    base = base.to(torch.int64)
    taps = [base + k for k in (-1, 0, 1, 2)]
    if ctx.attr("exclude_outside", 0):
        coeffs = [torch.where((i >= 0) & (i < in_len), c, torch.zeros_like(c)) for i, c in zip(taps, coeffs)]
        total = coeffs[0] + coeffs[1] + coeffs[2] + coeffs[3]
        coeffs = [c / total for c in coeffs]
    out = None
    for i, c in zip(taps, coeffs):
        term = _along(t, dim, i.clamp(0, in_len - 1)) * _weights(c, t, dim)
        out = term if out is None else out + term
    return out


@register("Resize", "Upsample", attrs=_RESIZE_ATTRS, check=_resize_check)
def _resize(ctx, x):
    """Separable resampling by gathers (gradients reach the input): for each resized axis the
    source coordinate of every output position, then nearest, linear or cubic weights."""
    inp = x[0]
    rank = inp.dim()
    mode = ctx.attr("mode", "nearest")
    if mode != "nearest" and not inp.is_floating_point():
        raise UnsupportedOpError(f"node '{ctx.name}' ({ctx.op_type}): {mode} resampling of {inp.dtype} "
                                 "is not supported")
    roi = None
    if _legacy_resize(ctx):
        scales = x[1] if len(x) > 1 and x[1] is not None else ctx.attr("scales")
        sizes, ctm, nearest_mode = None, "asymmetric", "simple"
    else:
        roi = x[1] if len(x) > 1 else None
        scales = x[2] if len(x) > 2 else None
        sizes = x[3] if len(x) > 3 else None
        ctm = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
    axes = [norm_axis(a, rank) for a in ctx.attr("axes", range(rank))]
    in_lens = [inp.shape[a] for a in axes]
    if sizes is not None and sizes.numel():
        outs = ints(sizes)
        f32 = [float(torch.tensor(o, dtype=torch.float32) / torch.tensor(i, dtype=torch.float32))
               for o, i in zip(outs, in_lens)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = min(f32) if policy == "not_larger" else max(f32)
            f32 = [s] * len(axes)
            outs = [int(math.floor(s * i + 0.5)) for i in in_lens]
    else:
        vals = scales.tolist() if isinstance(scales, torch.Tensor) else list(scales)
        f32 = [float(v) for v in vals]
        outs = [int(torch.tensor(s, dtype=torch.float32) * torch.tensor(i, dtype=torch.float32))
                for s, i in zip(f32, in_lens)]
    if ctm == "tf_crop_and_resize":
        r = [float(v) for v in roi.reshape(-1).tolist()] if roi is not None and roi.numel() else None
        n = len(axes)
        if r is not None and len(r) == 2 * rank and n != rank:
            r = [r[a] for a in axes] + [r[a + rank] for a in axes]
        rois = [(r[i], r[i + n]) if r else (0.0, 1.0) for i in range(n)]
    else:
        rois = [None] * len(axes)
    out = inp
    outside = None
    for dim, in_len, out_len, scale, roi_i in zip(axes, in_lens, outs, f32, rois):
        if out_len == in_len and scale == 1.0 and ctm != "tf_crop_and_resize":
            continue
        xs = _source_coords(ctm, out_len, in_len, scale, roi_i)
        out = _resize_axis(ctx, out, dim, mode, xs, in_len, scale < 1.0, nearest_mode)
        if ctm == "tf_crop_and_resize":
            bad = _weights(((xs < 0) | (xs > in_len - 1)).float(), out, dim) > 0
            outside = bad if outside is None else outside | bad
    if outside is not None:
        fill = torch.tensor(float(ctx.attr("extrapolation_value", 0.0)), dtype=out.dtype, device=out.device)
        out = torch.where(outside, fill, out)
    return out
