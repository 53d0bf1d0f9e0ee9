"""Quantized operators (QDQ and QOperator formats): QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, QLinearConv, QLinearMatMul, MatMulInteger, ConvInteger.

Computed the way onnxruntime's CPU kernels do: integer products accumulated exactly (in float64,
exact for any int8 tensor a classifier holds), the accumulator converted to float32 and scaled
by ``(x_scale * w_scale) / y_scale`` in float32, rounded half to even and saturated to the
output type. These paths carry no gradient (rounding has none); they only have to read and run.
"""

from __future__ import annotations

import torch

from . import register
from ._util import ONNX_DTYPES, norm_axis, onnx_type_name, opt as _opt
from .nn import CONV_ATTRS, convolve
from ...errors import UnsupportedOpError

# ONNX integer types a quantized tensor may have -> (torch dtype, min, max)
_QTYPES = {
    2: (torch.uint8, 0, 255), 3: (torch.int8, -128, 127), 4: (torch.uint16, 0, 65535),
    5: (torch.int16, -32768, 32767), 6: (torch.int32, -2 ** 31, 2 ** 31 - 1),
}
_RANGE = {dt: (lo, hi) for dt, lo, hi in _QTYPES.values()}


def _range(ctx, dtype) -> tuple[int, int]:
    if dtype not in _RANGE:
        raise UnsupportedOpError(f"node '{ctx.name}' ({ctx.op_type}): quantized type {dtype} is not supported "
                                 "(uint8, int8, uint16, int16 are)")
    return _RANGE[dtype]


def _dtype_check(ctx):
    code = ctx.attr("output_dtype", 0)
    if ctx.op_type == "DequantizeLinear":  # a float type
        if code and (code not in ONNX_DTYPES or not ONNX_DTYPES[code].is_floating_point):
            return f"DequantizeLinear output_dtype {onnx_type_name(code)} is not supported"
    elif code and code not in _QTYPES:
        return f"{ctx.op_type} output_dtype {onnx_type_name(code)} is not supported (uint8, int8, uint16, int16 are)"
    prec = ctx.attr("precision", 0)
    if prec and prec not in ONNX_DTYPES:
        return f"{ctx.op_type} precision {onnx_type_name(prec)} is not supported"
    if ctx.attr("block_size", 0) and ctx.attr("block_size", 0) < 0:
        return f"{ctx.op_type} block_size must be positive"
    return None


def _broadcast_param(ctx, p, x, axis_default: int = 1):
    """A scale or zero point shaped to broadcast against ``x``: per-tensor (one value), per-axis
    (1-D along ``axis``) or blocked (``block_size`` copies of each value along ``axis``)."""
    if p is None or p.numel() == 1:
        return p.reshape([]) if p is not None else None
    axis = norm_axis(ctx.attr("axis", axis_default), x.dim())
    block = int(ctx.attr("block_size", 0) or 0)
    if block:
        if p.dim() != x.dim():
            raise UnsupportedOpError(f"node '{ctx.name}' ({ctx.op_type}): blocked scales must have the rank of x")
        return p.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _saturate(ctx, q: torch.Tensor, dtype) -> torch.Tensor:
    lo, hi = _range(ctx, dtype)
    return q.clamp(lo, hi).to(dtype)


@register("QuantizeLinear", attrs=("axis", "block_size", "output_dtype", "precision", "saturate"),
          check=_dtype_check)
def _quantize(ctx, x):
    t, scale, zp = x[0], x[1], _opt(x, 2)
    if zp is not None:
        dtype = zp.dtype
    elif ctx.attr("output_dtype", 0):
        dtype = _QTYPES[ctx.attr("output_dtype")][0]
    else:
        dtype = torch.uint8
    _range(ctx, dtype)
    prec = ctx.attr("precision", 0)
    work = ONNX_DTYPES[prec] if prec else scale.dtype
    s = _broadcast_param(ctx, scale, t).to(work)
    q = torch.round(t.to(work) / s)
    if zp is not None:
        q = q.to(torch.float64) + _broadcast_param(ctx, zp, t).to(torch.float64)
    return _saturate(ctx, q, dtype)


@register("DequantizeLinear", attrs=("axis", "block_size", "output_dtype"), check=_dtype_check)
def _dequantize(ctx, x):
    t, scale, zp = x[0], x[1], _opt(x, 2)
    if t.dtype not in _RANGE:
        raise UnsupportedOpError(f"node '{ctx.name}' (DequantizeLinear): input type {t.dtype} is not supported")
    v = t.to(torch.int64)
    if zp is not None:
        v = v - _broadcast_param(ctx, zp, t).to(torch.int64)
    out_dtype = ONNX_DTYPES[ctx.attr("output_dtype")] if ctx.attr("output_dtype", 0) else scale.dtype
    return (v.to(torch.float32) * _broadcast_param(ctx, scale, t).to(torch.float32)).to(out_dtype)


@register("DynamicQuantizeLinear")
def _dynamic_quantize(ctx, x):
    t = x[0].to(torch.float32)
    lo = torch.clamp(t.min(), max=0.0)
    hi = torch.clamp(t.max(), min=0.0)
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255.0)
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(t / scale) + zp, 0.0, 255.0)
    return y.to(torch.uint8), scale.reshape([]), zp.to(torch.uint8).reshape([])


def _centered(t: torch.Tensor, zp) -> torch.Tensor:
    """An integer tensor minus its zero point, as float64 (exact)."""
    v = t.to(torch.float64)
    return v if zp is None else v - zp.to(torch.float64)


def _requantize(ctx, acc: torch.Tensor, scale: torch.Tensor, zp, dtype) -> torch.Tensor:
    """onnxruntime's requantization: float32(acc) * scale, round half to even, + zero point, saturate."""
    y = torch.round(acc.to(torch.float32) * scale.to(torch.float32))
    if zp is not None:
        y = y + zp.to(torch.float32)
    return _saturate(ctx, y, dtype)


def _channel(p: torch.Tensor, nd: int) -> torch.Tensor:
    """A per-output-channel parameter (or a scalar) shaped for an (N, C, *spatial) tensor."""
    return p.reshape([]) if p.numel() == 1 else p.reshape([1, -1] + [1] * nd)


def _int_conv(ctx, xc: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
    """A convolution of centered (zero point removed) float64 operands: exact integer sums; the
    padding is zero in this domain, i.e. the zero point in the quantized one."""
    return convolve(ctx, xc, wc)


def _weight_zp(wzp, w):
    if wzp is None or wzp.numel() == 1:
        return wzp
    return wzp.reshape([-1] + [1] * (w.dim() - 1))


@register("QLinearConv", attrs=CONV_ATTRS)
def _qlinear_conv(ctx, x):
    xq, xs, xzp, w, ws, wzp, ys, yzp = x[:8]
    b = _opt(x, 8)
    acc = _int_conv(ctx, _centered(xq, xzp), _centered(w, _weight_zp(wzp, w)))
    nd = acc.dim() - 2
    if b is not None:
        acc = acc + b.to(torch.float64).reshape([1, -1] + [1] * nd)
    scale = (xs.to(torch.float32) * _channel(ws, nd).to(torch.float32)) / ys.to(torch.float32)
    return _requantize(ctx, acc, scale, yzp, yzp.dtype if yzp is not None else torch.uint8)


@register("ConvInteger", attrs=CONV_ATTRS)
def _conv_integer(ctx, x):
    xq, w = x[0], x[1]
    xzp, wzp = _opt(x, 2), _opt(x, 3)
    return _int_conv(ctx, _centered(xq, xzp), _centered(w, _weight_zp(wzp, w))).to(torch.int32)


def _row_zp(zp):
    """A's zero point: a scalar, or one per row (shape [M] -> [M, 1])."""
    return zp if zp is None or zp.numel() == 1 else zp.reshape(-1, 1)


@register("QLinearMatMul")
def _qlinear_matmul(ctx, x):
    a, a_s, azp, b, b_s, bzp, ys, yzp = x[:8]
    acc = torch.matmul(_centered(a, _row_zp(azp)), _centered(b, bzp))
    scale = (a_s.to(torch.float32) * b_s.to(torch.float32)) / ys.to(torch.float32)
    return _requantize(ctx, acc, scale, yzp, yzp.dtype if yzp is not None else torch.uint8)


@register("MatMulInteger")
def _matmul_integer(ctx, x):
    a, b = x[0], x[1]
    azp, bzp = _opt(x, 2), _opt(x, 3)
    return torch.matmul(_centered(a, _row_zp(azp)), _centered(b, bzp)).to(torch.int32)
