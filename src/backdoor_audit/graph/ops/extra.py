"""Less common operators real classifiers use: ConvTranspose, GridSample / AffineGrid (spatial
transformers), DepthToSpace / SpaceToDepth and a few element-wise odds and ends (IsInf, Celu,
ThresholdedRelu, Shrink, inverse trigonometry). Float paths stay differentiable."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from . import register
from ._util import opt as _opt
from ...errors import UnsupportedOpError


# -- element-wise odds and ends --------------------------------------------------------------

_UNARY = {
    "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan,
    "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh,
    "Atanh": torch.atanh, "IsNaN": torch.isnan,
}
for _name, _fn in _UNARY.items():
    register(_name)((lambda f: lambda ctx, x: f(x[0]))(_fn))


@register("IsInf", attrs=("detect_negative", "detect_positive"))
def _isinf(ctx, x):
    t = x[0]
    neg = torch.isneginf(t) if ctx.attr("detect_negative", 1) else torch.zeros_like(t, dtype=torch.bool)
    pos = torch.isposinf(t) if ctx.attr("detect_positive", 1) else torch.zeros_like(t, dtype=torch.bool)
    return neg | pos


@register("Celu", attrs=("alpha",))
def _celu(ctx, x):
    return F.celu(x[0], alpha=float(ctx.attr("alpha", 1.0)))


@register("ThresholdedRelu", attrs=("alpha",))
def _thresholded_relu(ctx, x):
    t = x[0]
    return torch.where(t > ctx.attr("alpha", 1.0), t, torch.zeros_like(t))


@register("Shrink", attrs=("bias", "lambd"))
def _shrink(ctx, x):
    t = x[0]
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    zero = torch.zeros_like(t)
    return torch.where(t < -lambd, t + bias, torch.where(t > lambd, t - bias, zero))


# -- ConvTranspose -----------------------------------------------------------------------------

_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _convt_check(ctx):
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", ""):
        return f"ConvTranspose auto_pad={auto} is not supported"
    return None


@register("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape", "output_padding",
                                  "output_shape", "pads", "strides"), check=_convt_check)
def _convtranspose(ctx, x):
    inp, w = x[0], x[1]
    b = _opt(x, 2)
    nd = w.dim() - 2
    if nd not in _CONVT:
        raise UnsupportedOpError(f"node '{ctx.name}' (ConvTranspose): {nd}-D convolution is not supported")
    in_sizes = list(inp.shape[2:])
    kernel = list(ctx.attr("kernel_shape", w.shape[2:]))
    strides = list(ctx.attr("strides", [1] * nd))
    dil = list(ctx.attr("dilations", [1] * nd))
    out_pad = list(ctx.attr("output_padding", [0] * nd))
    auto = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    out_shape = ctx.attr("output_shape")
    full = [s * (i - 1) + op + (k - 1) * d + 1 for i, s, k, d, op in zip(in_sizes, strides, kernel, dil, out_pad)]
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        if out_shape:
            target = list(out_shape)[-nd:]
        else:
            target = [i * s for i, s in zip(in_sizes, strides)]
        begins, ends = [], []
        for f, t in zip(full, target):
            total = f - t
            # onnxruntime's split (matches the ONNX reference): SAME_UPPER puts the odd pixel at the end
            small = total // 2
            if auto == "SAME_UPPER":
                begins.append(small)
            else:
                begins.append(total - small)
            ends.append(total - begins[-1])
        pads = begins + ends
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(ctx.attr("pads", [0] * (2 * nd)))
    y = _CONVT[nd](inp, w, None, strides, 0, 0, ctx.attr("group", 1), dil)
    # output_padding adds rows at the end (bias only); pads crop (negative total: zero rows)
    crop = []
    for i in reversed(range(nd)):
        crop += [-pads[i], out_pad[i] - pads[i + nd]]
    y = F.pad(y, crop)
    if b is not None:
        y = y + b.view([1, -1] + [1] * nd)
    return y


# -- sampling grids (spatial transformers) ------------------------------------------------------

_GRID_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
               "cubic": "bicubic"}


def _grid_check(ctx):
    mode = ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear")
    if mode not in _GRID_MODES:
        return f"GridSample mode '{mode}' is not supported"
    if ctx.attr("padding_mode", "zeros") not in ("zeros", "border", "reflection"):
        return f"GridSample padding_mode '{ctx.attr('padding_mode')}' is not supported"
    return None


@register("GridSample", attrs=("align_corners", "mode", "padding_mode"), check=_grid_check)
def _grid_sample(ctx, x):
    inp, grid = x[0], x[1]
    mode = _GRID_MODES[ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear")]
    if inp.dim() != 4 and not (inp.dim() == 5 and mode != "bicubic"):
        raise UnsupportedOpError(f"node '{ctx.name}' (GridSample): {inp.dim() - 2}-D {mode} sampling is not supported")
    return F.grid_sample(inp, grid.to(inp.dtype), mode=mode, padding_mode=ctx.attr("padding_mode", "zeros"),
                         align_corners=bool(ctx.attr("align_corners", 0)))


@register("AffineGrid", attrs=("align_corners",))
def _affine_grid(ctx, x):
    size = [int(v) for v in x[1].reshape(-1).tolist()]
    return F.affine_grid(x[0], size, align_corners=bool(ctx.attr("align_corners", 0)))




def _d2s_check(ctx):
    if ctx.attr("mode", "DCR") not in ("DCR", "CRD"):
        return f"DepthToSpace mode '{ctx.attr('mode')}' is not supported"
    return None


@register("DepthToSpace", attrs=("blocksize", "mode"), check=_d2s_check)
def _depth_to_space(ctx, x):
    t = x[0]
    bs = int(ctx.attr("blocksize"))
    n, c, h, w = t.shape
    if ctx.attr("mode", "DCR") == "DCR":
        t = t.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = t.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (bs * bs), h * bs, w * bs)


@register("SpaceToDepth", attrs=("blocksize",))
def _space_to_depth(ctx, x):
    t = x[0]
    bs = int(ctx.attr("blocksize"))
    n, c, h, w = t.shape
    t = t.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * bs * bs, h // bs, w // bs)
