"""Element-wise arithmetic, activations, comparisons and casts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._util import ONNX_DTYPES, onnx_type_name, scalar


def _binary(fn):
    return lambda ctx, x: fn(x[0], x[1])


register("Add")(_binary(torch.add))
register("Sub")(_binary(torch.sub))
register("Mul")(_binary(torch.mul))
register("Pow")(lambda ctx, x: torch.pow(x[0], x[1]).to(x[0].dtype))
register("Equal")(_binary(torch.eq))
register("Greater")(_binary(torch.gt))
register("Less")(_binary(torch.lt))
register("GreaterOrEqual")(_binary(torch.ge))
register("LessOrEqual")(_binary(torch.le))
register("And")(_binary(torch.logical_and))
register("Or")(_binary(torch.logical_or))
register("Xor")(_binary(torch.logical_xor))


@register("Div")
def _div(ctx, x):
    a, b = x
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@register("Mod", attrs=("fmod",))
def _mod(ctx, x):
    a, b = x
    return torch.fmod(a, b) if ctx.attr("fmod", 0) else torch.remainder(a, b)


_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Erf": torch.erf, "Sign": torch.sign, "Not": torch.logical_not, "Softplus": F.softplus,
    "Softsign": F.softsign, "Sin": torch.sin, "Cos": torch.cos, "Mish": F.mish,
    "HardSwish": F.hardswish, "Identity": lambda t: t,
}
for _name, _fn in _UNARY.items():
    register(_name)((lambda f: lambda ctx, x: f(x[0]))(_fn))


@register("LeakyRelu", attrs=("alpha",))
def _leaky(ctx, x):
    return F.leaky_relu(x[0], ctx.attr("alpha", 0.01))


@register("PRelu")
def _prelu(ctx, x):
    return torch.where(x[0] >= 0, x[0], x[0] * x[1])


@register("Elu", attrs=("alpha",))
def _elu(ctx, x):
    return F.elu(x[0], ctx.attr("alpha", 1.0))


@register("Selu", attrs=("alpha", "gamma"))
def _selu(ctx, x):
    a, g = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
    return g * torch.where(x[0] > 0, x[0], a * (torch.exp(x[0]) - 1))


@register("HardSigmoid", attrs=("alpha", "beta"))
def _hsig(ctx, x):
    return torch.clamp(ctx.attr("alpha", 0.2) * x[0] + ctx.attr("beta", 0.5), 0.0, 1.0)


@register("Gelu", attrs=("approximate",))
def _gelu(ctx, x):
    return F.gelu(x[0], approximate=ctx.attr("approximate", "none"))


@register("Clip", attrs=("min", "max"))
def _clip(ctx, x):
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo = scalar(x[1] if len(x) > 1 else None)
        hi = scalar(x[2] if len(x) > 2 else None)
    if lo is None and hi is None:  # neither bound given: the identity
        return x[0]
    return torch.clamp(x[0], lo, hi)


def _variadic(fn):
    def run(ctx, x):
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return out

    return run


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(torch.add))


@register("Mean")
def _mean(ctx, x):
    return _variadic(torch.add)(ctx, x) / len(x)


@register("Where")
def _where(ctx, x):
    return torch.where(x[0].bool(), x[1], x[2])


def _cast_check(ctx):
    to = ctx.attr("to")
    if to not in ONNX_DTYPES:
        return f"Cast to data type {onnx_type_name(to)} is not supported"
    return None


@register("Cast", attrs=("to", "saturate", "round_mode"), check=_cast_check)
def _cast(ctx, x):
    return x[0].to(ONNX_DTYPES[ctx.attr("to")])


@register("CastLike", attrs=("saturate", "round_mode"))
def _castlike(ctx, x):
    return x[0].to(x[1].dtype)


def _softmax_like(fn):
    def run(ctx, x):
        t = x[0]
        if ctx.opset < 13:  # coerce to 2-D at `axis` (default 1), softmax over the flattened tail
            axis = ctx.attr("axis", 1) % t.dim()
            flat = t.reshape(int(torch.tensor(t.shape[:axis]).prod()), -1)
            return fn(flat, dim=1).reshape(t.shape)
        return fn(t, dim=ctx.attr("axis", -1))

    return run


register("Softmax", attrs=("axis",))(_softmax_like(torch.softmax))
register("LogSoftmax", attrs=("axis",))(_softmax_like(torch.log_softmax))
