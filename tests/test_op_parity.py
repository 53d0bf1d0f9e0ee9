"""Every operator in the executor's table computes what onnxruntime computes.

Each case is a single-node (or tiny) model built with ``onnx.helper`` at a realistic opset, one
case per semantic where an op's meaning changed between opsets. onnxruntime and the executor run
it on the same seeded input; floats must agree to ~1e-5, integers and booleans exactly, and
gradients must reach the input through float ops. A guard test fails when an op (or an op version
range) is registered without a case here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from backdoor_audit.errors import UnsupportedOpError
from backdoor_audit.graph import support
from backdoor_audit.graph.executor import OnnxExecutor
from backdoor_audit.graph.ops import TABLE, schema_version, supported_ops


class _GraphInput:
    def __repr__(self) -> str:
        return "X"


X = _GraphInput()  # marks the graph input's slot among a node's inputs
F32, I64 = np.float32, np.int64
_rng = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0, dtype=F32):
    return _rng.uniform(lo, hi, size=shape).astype(dtype)


def randn(*shape):
    return _rng.standard_normal(shape).astype(F32)


def randint(*shape, lo=-5, hi=6, dtype=I64):
    return _rng.integers(lo, hi, size=shape).astype(dtype)


def arr(values, dtype=F32):
    return np.array(values, dtype=dtype)


@dataclass
class Case:
    id: str
    op: str
    x: np.ndarray
    inputs: list
    attrs: dict
    opset: int = 17
    outs: list = field(default_factory=lambda: ["y0"])
    pre: list = field(default_factory=list)  # extra nodes before the tested one (Constant, ...)
    rtol: float = 1e-5
    atol: float = 1e-5
    grad: bool = True  # gradients must reach x through a float output
    out_shape: list | None = None  # the output's shape where ONNX shape inference has none


def case(op, *inputs, x, opset=17, outs=1, id="", pre=(), tol=1e-5, atol=None, grad=True,
         out_shape=None, **attrs) -> Case:
    """``inputs`` in node order: arrays become initializers, None an omitted input, a str a tensor
    a ``pre`` node makes, X the graph input (prepended when absent)."""
    inputs = list(inputs)
    if not any(v is X for v in inputs):
        inputs.insert(0, X)
    if isinstance(outs, int):
        outs = [f"y{i}" for i in range(outs)]
    return Case(id or op, op, x, inputs, attrs, opset, list(outs), list(pre), tol, tol if atol is None else atol,
                grad, out_shape)


def build(c: Case) -> onnx.ModelProto:
    names, inits = [], []
    for i, v in enumerate(c.inputs):
        if v is X:
            names.append("x")
        elif v is None:
            names.append("")
        elif isinstance(v, str):
            names.append(v)
        else:
            names.append(f"in{i}")
            inits.append(numpy_helper.from_array(np.asarray(v), f"in{i}"))
    node = helper.make_node(c.op, names, c.outs, name="node", **c.attrs)
    x_info = helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(c.x.dtype), list(c.x.shape))
    outputs = [helper.make_empty_tensor_value_info(o) for o in c.outs if o]
    graph = helper.make_graph(c.pre + [node], c.id, [x_info], outputs, initializer=inits)
    opsets = [helper.make_opsetid("", c.opset)]
    ir = helper.find_min_ir_version_for(opsets) if c.opset >= 7 else 3
    if ir < 4:  # before IR 4 every initializer is also a graph input
        graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out in model.graph.output:  # declare each output's type and shape as ONNX infers them
        found = next(o for o in inferred.graph.output if o.name == out.name)
        if found.type.HasField("tensor_type"):
            out.CopyFrom(found)
        else:  # no inference for the op (a function op, a very old version): x's type, the given shape
            out.CopyFrom(helper.make_tensor_value_info(out.name, x_info.type.tensor_type.elem_type,
                                                       c.out_shape or list(c.x.shape)))
    if not onnx.defs.get_schema(c.op, c.opset).deprecated:  # GroupNormalization-18: deprecated, still run
        onnx.checker.check_model(model, full_check=True)
    return model


# -- the cases --------------------------------------------------------------------------------
X4 = randn(2, 3, 5, 5)  # an image batch
POS = rand(2, 3, 4, 4, lo=0.1, hi=3.0)
UNIT = rand(2, 3, 4, lo=-0.9, hi=0.9)
SPECIAL = arr([[1.0, np.nan, np.inf, -np.inf], [0.0, -2.0, np.nan, 3.0]])
BOOL = _rng.random((3, 4)) > 0.5
BOOL2 = _rng.random((3, 4)) > 0.5
HALVES = arr([[-2.5, -1.5, -0.5, 0.5], [1.5, 2.5, 0.49, -0.51]])
IDX = randint(2, 3, lo=-3, hi=3)

C: list[Case] = []

# element-wise binaries (broadcasting against an initializer) and comparisons
for op in ("Add", "Sub", "Mul", "Div"):
    C.append(case(op, X, randn(3, 1, 1), x=X4, opset=14))
C += [
    case("Div", X, randint(2, 3, lo=1, hi=4) * arr([[1, -1, 1], [-1, 1, -1]], I64), x=randint(2, 3, lo=-9, hi=10),
         id="Div-int-trunc", opset=14),
    case("Mod", X, arr([[3, -3, 4], [-4, 5, 2]], I64), x=arr([[7, 7, -7], [-7, 9, -9]], I64), id="Mod-int", opset=13),
    case("Mod", X, arr([3.0, -3.0, 2.5], F32), x=rand(2, 3, lo=-9, hi=9), id="Mod-fmod", fmod=1, opset=13),
    case("Pow", X, arr([2.0, 0.5, 3.0], F32), x=rand(2, 3, lo=0.2, hi=2.0), opset=15),
    case("Pow", X, arr(2, I64), x=rand(2, 3), id="Pow-int-exponent", opset=15),
    case("Equal", X, randint(3, 4, lo=0, hi=3), x=randint(3, 4, lo=0, hi=3), grad=False),
    case("Greater", X, randn(4), x=randn(3, 4)),
    case("Less", X, randn(4), x=randn(3, 4)),
    case("GreaterOrEqual", X, arr([0.0, 1.0, -1.0, 0.5]), x=arr([[0.0, 1.0, 0.0, 0.5]] * 2)),
    case("LessOrEqual", X, arr([0.0, 1.0, -1.0, 0.5]), x=arr([[0.0, 1.0, 0.0, 0.7]] * 2)),
    case("And", X, BOOL2, x=BOOL), case("Or", X, BOOL2, x=BOOL), case("Xor", X, BOOL2, x=BOOL),
    case("Not", x=BOOL),
]
# unary
for op, x in [("Relu", X4), ("Sigmoid", X4), ("Tanh", X4), ("Exp", X4), ("Log", POS), ("Sqrt", POS),
              ("Neg", X4), ("Abs", X4), ("Reciprocal", POS), ("Floor", X4 * 3), ("Ceil", X4 * 3),
              ("Round", HALVES), ("Erf", X4), ("Sign", arr([[-2.0, 0.0, 3.0]])), ("Softplus", X4 * 5),
              ("Softsign", X4), ("Sin", X4), ("Cos", X4), ("HardSwish", X4 * 4), ("Identity", X4),
              ("Tan", UNIT), ("Asin", UNIT), ("Acos", UNIT), ("Atan", X4), ("Sinh", X4), ("Cosh", X4),
              ("Asinh", X4), ("Acosh", POS + 1), ("Atanh", UNIT), ("IsNaN", SPECIAL)]:
    C.append(case(op, x=x))
C += [
    case("Mish", x=X4, opset=18),
    case("IsInf", x=SPECIAL), case("IsInf", x=SPECIAL, id="IsInf-positive-only", detect_negative=0),
    case("LeakyRelu", x=X4, alpha=0.2),
    case("PRelu", X, rand(3, 1, 1), x=X4, opset=16),
    case("Elu", x=X4, alpha=0.7),
    case("Selu", x=X4),
    case("Celu", x=X4, alpha=0.5),
    case("ThresholdedRelu", x=X4, alpha=0.3),
    case("Shrink", x=X4, lambd=0.4, bias=0.1),
    case("HardSigmoid", x=X4 * 4, alpha=0.3, beta=0.4),
    case("Gelu", x=X4, opset=20),
    case("Gelu", x=X4, opset=20, id="Gelu-tanh", approximate="tanh"),
    case("Clip", x=X4, opset=6, id="Clip-6-attrs", min=-0.5, max=0.4),
    case("Clip", X, arr(-0.5), arr(0.4), x=X4, opset=13, id="Clip-13-inputs"),
    case("Clip", X, None, arr(0.3), x=X4, opset=13, id="Clip-13-max-only"),
    case("Clip", X, arr(-2, I64), arr(3, I64), x=randint(3, 4), opset=13, id="Clip-13-int"),
    case("Max", X, randn(3, 1), randn(4), x=randn(3, 4), opset=13),
    case("Min", X, randn(3, 1), randn(4), x=randn(3, 4), opset=13),
    case("Sum", X, randn(3, 1), randn(4), x=randn(3, 4), opset=13),
    case("Mean", X, randn(3, 1), randn(4), x=randn(3, 4), opset=13),
    case("Where", BOOL, X, randn(4), x=randn(3, 4), opset=16),
    case("Cast", x=X4 * 4, to=TensorProto.INT64, id="Cast-to-int64", opset=19),
    case("Cast", x=randint(3, 4), to=TensorProto.FLOAT, id="Cast-to-float", opset=19),
    case("Cast", x=arr([[0.0, 1.5, -2.0]]), to=TensorProto.BOOL, id="Cast-to-bool", opset=19),
    case("Cast", x=rand(3, 4, lo=0, hi=200), to=TensorProto.UINT8, id="Cast-to-uint8", opset=19),
    case("CastLike", X, arr([1], I64), x=X4 * 4, opset=19),
    case("Softmax", x=X4, axis=1, opset=11, id="Softmax-11-coerced-2d"),
    case("Softmax", x=X4, axis=1, opset=13, id="Softmax-13-axis"),
    case("LogSoftmax", x=X4, axis=1, opset=11, id="LogSoftmax-11-coerced-2d"),
    case("LogSoftmax", x=X4, opset=13, id="LogSoftmax-13-last"),
]

# convolutions, matrix products, normalisations, pooling
W3 = randn(4, 3, 3, 3) * 0.3
C += [
    case("Conv", X, W3, randn(4), x=X4, pads=[1, 1, 1, 1], opset=11),
    case("Conv", X, W3, x=X4, strides=[2, 2], dilations=[2, 1], id="Conv-stride-dilation", opset=11),
    case("Conv", X, randn(3, 1, 3, 3), x=X4, group=3, pads=[0, 1, 2, 1], id="Conv-depthwise-asym-pads", opset=11),
    case("Conv", X, W3, x=X4, strides=[2, 2], auto_pad="SAME_UPPER", id="Conv-same-upper", opset=11),
    case("Conv", X, randn(4, 3, 2, 2), x=X4, auto_pad="SAME_LOWER", id="Conv-same-lower", opset=11),
    case("Conv", X, randn(2, 3, 3), x=randn(2, 3, 9), pads=[1, 1], id="Conv-1d", opset=11),
    case("Conv", X, randn(2, 3, 2, 2, 2), x=randn(1, 3, 4, 4, 4), id="Conv-3d", opset=11),
    case("ConvTranspose", X, randn(3, 2, 3, 3), randn(2), x=X4, strides=[2, 2], pads=[1, 1, 1, 1],
         output_padding=[1, 1], opset=11),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, group=3, dilations=[2, 1], pads=[0, 1, 2, 0],
         id="ConvTranspose-group-dilation-asym", opset=11),
    case("ConvTranspose", X, randn(3, 2, 3, 3), randn(2), x=X4, strides=[2, 2], output_shape=[10, 10],
         id="ConvTranspose-output-shape", opset=11),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, strides=[2, 2], auto_pad="SAME_UPPER",
         id="ConvTranspose-same-upper", opset=11),
    case("ConvTranspose", X, randn(3, 2, 3), x=randn(2, 3, 7), strides=[3], id="ConvTranspose-1d", opset=11),
    case("Gemm", X, randn(5, 4), randn(5), x=randn(3, 4), transB=1, alpha=0.5, beta=2.0, opset=13),
    case("Gemm", X, randn(3, 5), randn(1, 5), x=randn(3, 4), transA=1, id="Gemm-transA", opset=13),
    case("MatMul", X, randn(5, 2), x=randn(2, 3, 5), opset=13),
    case("BatchNormalization", X, rand(3, lo=0.5, hi=1.5), randn(3), randn(3), rand(3, lo=0.5, hi=2.0), x=X4,
         epsilon=1e-3, opset=15),
    case("InstanceNormalization", X, rand(3, lo=0.5, hi=1.5), randn(3), x=X4, opset=6),
    case("LayerNormalization", X, randn(5), randn(5), x=X4, opset=17),
    case("LayerNormalization", X, randn(3, 5, 5), x=X4, axis=1, outs=3, id="LayerNormalization-axis1-stats",
         opset=17),
    case("GroupNormalization", X, randn(3), randn(3), x=randn(2, 6, 4, 4)[:, :3], num_groups=3, opset=18,
         id="GroupNormalization-18-per-group"),
    case("GroupNormalization", X, randn(2), randn(2), x=randn(2, 6, 4, 4), num_groups=2, opset=18,
         id="GroupNormalization-18-two-groups"),
    case("GroupNormalization", X, randn(6), randn(6), x=randn(2, 6, 4, 4), num_groups=2, opset=21,
         id="GroupNormalization-21-per-channel"),
    case("RMSNormalization", X, randn(5), x=X4, opset=23, epsilon=1e-3),
    case("RMSNormalization", X, randn(3, 5, 5), x=X4, axis=1, opset=23, id="RMSNormalization-axis1"),
    case("LRN", x=X4, size=3, alpha=1e-2, beta=0.75, bias=1.0, opset=13),
    case("LRN", x=randn(2, 7, 3, 3), size=5, alpha=0.1, beta=0.6, bias=2.0, opset=13, id="LRN-size5"),
    case("LpNormalization", x=X4, axis=1, p=2, opset=22),
    case("LpNormalization", x=X4, axis=-1, p=1, opset=22, id="LpNormalization-p1"),
    case("MeanVarianceNormalization", x=X4, axes=[0, 2, 3], opset=13),
    case("MeanVarianceNormalization", x=X4, axes=[2, 3], opset=13, id="MeanVarianceNormalization-axes"),
    case("Dropout", X, x=X4, opset=13),
    case("Dropout", X, x=X4, opset=13, outs=2, id="Dropout-mask"),
    case("MaxPool", x=X4, kernel_shape=[2, 2], opset=12),
    case("MaxPool", x=X4, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
         id="MaxPool-pads-ceil", opset=12),
    case("MaxPool", x=X4, kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER", id="MaxPool-same-upper",
         opset=12),
    case("MaxPool", x=randn(2, 3, 9, 9), kernel_shape=[3, 3], dilations=[2, 2], pads=[0, 0, 2, 1],
         id="MaxPool-dilation-asym", opset=12),
    case("MaxPool", x=randn(2, 3, 9), kernel_shape=[3], strides=[2], id="MaxPool-1d", opset=12),
    case("AveragePool", x=X4, kernel_shape=[2, 2], strides=[2, 2], opset=19),
    case("AveragePool", x=X4, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1,
         id="AveragePool-pads-include", opset=19),
    case("AveragePool", x=X4, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
         id="AveragePool-pads-exclude", opset=19),
    case("AveragePool", x=X4, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, id="AveragePool-ceil", opset=19),
    case("AveragePool", x=X4, kernel_shape=[3, 2], auto_pad="SAME_UPPER", id="AveragePool-same-upper", opset=19),
    case("AveragePool", x=X4, kernel_shape=[3, 3], pads=[0, 0, 2, 1], count_include_pad=1,
         id="AveragePool-asym-include", opset=19),
    case("GlobalAveragePool", x=X4), case("GlobalMaxPool", x=X4),
]

# Resize / Upsample: one case per coordinate mode, nearest mode and legacy form
RX = randn(1, 2, 4, 5)
UP = arr([1, 1, 2.0, 1.5])
DOWN = arr([1, 1, 0.5, 0.6])
SIZES = arr([1, 2, 7, 3], I64)
C += [
    case("Resize", X, None, UP, x=RX, mode="nearest", coordinate_transformation_mode="asymmetric",
         nearest_mode="floor", opset=13, id="Resize-13-nearest-asymmetric-floor"),
    case("Resize", X, None, UP, x=RX, mode="nearest", opset=13, id="Resize-13-nearest-half-pixel"),
    case("Resize", X, None, None, SIZES, x=RX, mode="nearest", nearest_mode="round_prefer_ceil", opset=13,
         id="Resize-13-nearest-sizes-prefer-ceil"),
    case("Resize", X, None, DOWN, x=RX, mode="nearest", nearest_mode="ceil",
         coordinate_transformation_mode="align_corners", opset=13, id="Resize-13-nearest-align-ceil"),
    case("Resize", X, None, UP, x=RX, mode="linear", opset=13, id="Resize-13-linear-half-pixel"),
    case("Resize", X, None, DOWN, x=RX, mode="linear", opset=13, id="Resize-13-linear-down"),
    case("Resize", X, None, None, SIZES, x=RX, mode="linear", coordinate_transformation_mode="align_corners",
         opset=13, id="Resize-13-linear-align-corners"),
    case("Resize", X, None, arr([1, 1, 0.25, 2.0]), x=RX, mode="linear",
         coordinate_transformation_mode="pytorch_half_pixel", opset=13, id="Resize-13-linear-pytorch-half-pixel"),
    case("Resize", X, None, UP, x=RX, mode="linear", coordinate_transformation_mode="asymmetric", opset=13,
         id="Resize-13-linear-asymmetric"),
    case("Resize", X, None, UP, x=RX, mode="cubic", opset=13, id="Resize-13-cubic"),
    case("Resize", X, None, DOWN, x=RX, mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1, opset=13,
         id="Resize-13-cubic-exclude-outside"),
    case("Resize", X, arr([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2]), None, SIZES, x=RX, mode="linear",
         coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0, opset=13,
         id="Resize-13-tf-crop-and-resize"),
    case("Resize", X, None, arr([2.0, 1.5]), x=RX, mode="linear", axes=[2, 3], opset=18, id="Resize-18-axes"),
    case("Resize", X, None, None, arr([8, 8], I64), x=RX, mode="nearest", axes=[2, 3],
         keep_aspect_ratio_policy="not_larger", opset=18, id="Resize-18-not-larger"),
    case("Resize", X, None, UP, x=RX, mode="linear", coordinate_transformation_mode="half_pixel_symmetric",
         opset=19, id="Resize-19-half-pixel-symmetric"),
    case("Resize", X, UP, x=RX, mode="nearest", opset=10, id="Resize-10-nearest"),
    case("Resize", X, DOWN, x=RX, mode="nearest", opset=10, id="Resize-10-nearest-down"),
    case("Resize", X, UP, x=RX, mode="linear", opset=10, id="Resize-10-linear"),
    case("Upsample", X, arr([1, 1, 2, 3.0]), x=RX, mode="nearest", opset=9, id="Upsample-9-nearest"),
    case("Upsample", X, UP, x=RX, mode="linear", opset=9, id="Upsample-9-linear"),
    case("Upsample", x=RX, scales=[1.0, 1.0, 2.0, 2.0], mode="nearest", opset=7, id="Upsample-7-attr"),
]

# attention and einsum
Q4, K4, V4 = randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3)
Q3, K3, V3 = randn(2, 3, 8), randn(2, 3, 4), randn(2, 3, 6)  # 4 query heads, 2 kv heads (GQA)
MASK = _rng.random((3, 5)) > 0.3
MASK[1] = False  # a fully masked query row
C += [
    case("Attention", X, K4, V4, x=Q4, opset=23, id="Attention-4d"),
    case("Attention", X, K3, V3, x=Q3, q_num_heads=4, kv_num_heads=2, is_causal=1, opset=23,
         id="Attention-3d-gqa-causal"),
    case("Attention", X, K4, V4, MASK, x=Q4, opset=23, id="Attention-bool-mask"),
    case("Attention", X, K4, V4, randn(2, 1, 3, 5), x=Q4, scale=0.3, softcap=2.0, opset=23,
         id="Attention-float-mask-scale-softcap"),
    case("Attention", X, K4, V4, None, randn(2, 2, 2, 4), randn(2, 2, 2, 3), x=Q4, is_causal=1, outs=3,
         opset=23, id="Attention-past-present-causal"),
    case("Attention", X, K4, V4, randn(3, 5), x=Q4, qk_matmul_output_mode=0, outs=["y0", "", "", "y3"], opset=23,
         id="Attention-qk-output-0"),
    case("Attention", X, K4, V4, randn(3, 5), x=Q4, qk_matmul_output_mode=2, outs=["y0", "", "", "y3"], opset=23,
         id="Attention-qk-output-2"),
    case("Attention", X, K4, V4, randn(3, 5), x=Q4, qk_matmul_output_mode=3, outs=["y0", "", "", "y3"], opset=23,
         id="Attention-qk-output-3"),
    case("Einsum", X, randn(4, 3), x=X4, equation="bchw,oc->bohw", opset=12),
    case("Einsum", X, randn(5, 3), x=randn(2, 3, 5), equation="bij, jk", opset=12, id="Einsum-implicit"),
    case("Einsum", X, x=randn(2, 3, 4, 4), equation="...ii->...i", opset=12, id="Einsum-ellipsis-diagonal"),
]

# index family
TIES = arr([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.0, 0.0, -1.0, 5.0, 5.0, 0.0]])
C += [
    case("TopK", X, arr([3], I64), x=randn(3, 7), outs=2, opset=11),
    case("TopK", X, arr([2], I64), x=randn(3, 4, 5), axis=1, largest=0, outs=2, opset=11, id="TopK-smallest"),
    case("TopK", X, arr([4], I64), x=TIES, outs=2, opset=11, id="TopK-ties"),
    case("TopK", X, arr([3], I64), x=TIES, largest=0, outs=2, opset=11, id="TopK-ties-smallest"),
    case("TopK", x=randn(3, 7), k=2, outs=2, opset=9, id="TopK-1-attr"),
    case("GatherElements", X, randint(2, 4, lo=-3, hi=3), x=randn(3, 4), axis=0, opset=13),
    case("GatherElements", X, randint(3, 2, lo=-4, hi=4), x=randn(3, 4), axis=1, opset=13, id="GatherElements-1"),
    case("GatherND", X, arr([[0, 1], [2, -1]], I64), x=randn(3, 4, 2), opset=13),
    case("GatherND", X, arr([[1], [0]], I64), x=randn(2, 3, 4), batch_dims=1, opset=13, id="GatherND-batch-dims"),
    case("ScatterND", X, arr([[1], [-3]], I64), randn(2, 4, 2), x=randn(3, 4, 2), opset=18),
    case("ScatterND", X, arr([[0, 1], [2, 3], [0, 1]], I64), randn(3, 2), x=randn(3, 4, 2), reduction="add",
         opset=18, id="ScatterND-add"),
    case("ScatterND", X, arr([[0, 1], [2, 3], [0, 1]], I64), randn(3, 2), x=randn(3, 4, 2), reduction="mul",
         opset=18, id="ScatterND-mul"),
    case("ScatterND", X, arr([[1, 1], [0, 3], [1, 1]], I64), randn(3, 2), x=randn(3, 4, 2), reduction="max",
         opset=18, id="ScatterND-max"),
    case("ScatterND", X, arr([[1, 1], [0, 3]], I64), randn(2, 2), x=randn(3, 4, 2), reduction="min", opset=18,
         id="ScatterND-min"),
    case("ScatterElements", X, arr([[1, 0, 2, 0], [2, 1, 0, 1]], I64), randn(2, 4), x=randn(3, 4), opset=18),
    case("ScatterElements", X, arr([[1, -1], [0, 1], [3, 3]], I64), randn(3, 2), x=randn(3, 4), axis=1,
         reduction="add", opset=18, id="ScatterElements-add"),
    case("NonZero", x=arr([[0.0, 1.0, 0.0], [2.0, 0.0, -1.0]]), opset=13, grad=False),
    case("OneHot", X, arr([4], I64), arr([-1.0, 2.0]), x=arr([[0, 3, -1], [1, 9, -4]], I64), opset=11),
    case("OneHot", X, arr(3, I64), arr([0, 1], I64), x=arr([0, 2, 1], I64), axis=0, opset=11, id="OneHot-axis0"),
    case("EyeLike", x=randn(3, 5), k=1, opset=22, grad=False),
    case("EyeLike", x=randn(4, 3), k=-1, dtype=TensorProto.INT64, opset=22, id="EyeLike-int", grad=False),
    case("CumSum", X, arr(1, I64), x=randn(2, 5, 3), opset=14),
    case("CumSum", X, arr(-1, np.int32), x=randn(2, 5, 3), exclusive=1, reverse=1, opset=14,
         id="CumSum-exclusive-reverse"),
    case("CumSum", X, arr(0, I64), x=randint(4, 3), exclusive=1, opset=14, id="CumSum-int-exclusive"),
    case("Trilu", X, arr(1, I64), x=randn(2, 4, 5), opset=14),
    case("Trilu", X, arr(-1, I64), x=randn(4, 5), upper=0, opset=14, id="Trilu-lower-k"),
    case("Trilu", x=randint(5, 3), upper=0, opset=14, id="Trilu-lower-int"),
    case("Hardmax", x=arr([[[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], [[5.0, 5.0, 0.0], [0.0, 0.0, 0.0]]]), axis=1,
         opset=13, id="Hardmax-13-axis", grad=False),
    case("Hardmax", x=arr([[[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], [[5.0, 5.0, 0.0], [0.0, 9.0, 0.0]]]), axis=1,
         opset=11, id="Hardmax-11-coerced-2d", grad=False),
    case("DepthToSpace", x=randn(2, 8, 2, 3), blocksize=2, opset=13),
    case("DepthToSpace", x=randn(2, 8, 2, 3), blocksize=2, mode="CRD", opset=13, id="DepthToSpace-CRD"),
    case("SpaceToDepth", x=randn(2, 2, 4, 6), blocksize=2, opset=13),
]

# reductions: axes as an attribute (before 18, 13 for ReduceSum) and as an input
for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
           "ReduceSumSquare", "ReduceLogSumExp"):
    C.append(case(op, X, arr([1, -1], I64), x=X4, opset=18, id=f"{op}-18-axes-input"))
    C.append(case(op, x=X4, axes=[2], keepdims=0, opset=13 if op != "ReduceSum" else 11,
                  id=f"{op}-attr-axes"))
C += [
    case("ReduceSum", X, arr([0, 2], I64), x=X4, keepdims=0, opset=13, id="ReduceSum-13-input"),
    case("ReduceMean", x=X4, opset=18, id="ReduceMean-18-all"),
    case("ReduceMax", X, arr([], I64), x=X4, noop_with_empty_axes=1, opset=18, id="ReduceMax-18-noop"),
    case("ReduceMin", x=randint(3, 4), axes=[1], opset=13, id="ReduceMin-int", grad=False),
    case("ArgMax", x=randint(3, 4, lo=0, hi=3), axis=1, opset=13, grad=False),
    case("ArgMax", x=randint(3, 4, lo=0, hi=3), axis=0, keepdims=0, select_last_index=1, opset=13,
         id="ArgMax-last-index", grad=False),
    case("ArgMin", x=randint(3, 4, lo=0, hi=3), axis=-1, select_last_index=1, opset=13, grad=False),
]

# shape computation and data movement
C += [
    case("Shape", x=X4, opset=13, grad=False),
    case("Shape", x=X4, start=1, end=-1, opset=15, id="Shape-15-start-end", grad=False),
    case("Size", x=X4, opset=13, grad=False),
    case("Flatten", x=X4, axis=2, opset=13),
    case("Flatten", x=X4, axis=0, opset=13, id="Flatten-axis0"),
    case("Reshape", x=X4, shape=[2, 75], opset=1, id="Reshape-1-attr", out_shape=[2, 75]),
    case("Reshape", X, arr([0, -1, 5], I64), x=X4, opset=5, id="Reshape-5-zero-copies"),
    case("Reshape", X, arr([0, 2, 3], I64), x=np.zeros((2, 0, 3), F32), allowzero=1, opset=14,
         id="Reshape-14-allowzero", grad=False),
    case("Transpose", x=X4, perm=[0, 2, 3, 1], opset=13),
    case("Transpose", x=randn(2, 3, 4), opset=13, id="Transpose-reverse"),
    case("Squeeze", x=randn(2, 1, 3, 1), axes=[1, -1], opset=11, id="Squeeze-11-attr"),
    case("Squeeze", X, arr([-1], I64), x=randn(2, 1, 3, 1), opset=13, id="Squeeze-13-input"),
    case("Squeeze", x=randn(2, 1, 3, 1), opset=13, id="Squeeze-13-all"),
    case("Unsqueeze", x=randn(2, 3), axes=[0, -1], opset=11, id="Unsqueeze-11-attr"),
    case("Unsqueeze", X, arr([1, -1], I64), x=randn(2, 3), opset=13, id="Unsqueeze-13-input"),
    case("Concat", X, randn(2, 2, 5, 5), x=X4, axis=1, opset=13),
    case("Concat", arr([1, 2], I64), X, arr([], I64), x=arr([7], I64), axis=0, opset=13, id="Concat-shape-like"),
    case("Split", x=randn(2, 6, 3), axis=1, split=[1, 2, 3], outs=3, opset=11, id="Split-11-attr"),
    case("Split", X, arr([4, 2], I64), x=randn(2, 6, 3), axis=1, outs=2, opset=13, id="Split-13-input"),
    case("Split", x=randn(2, 6, 3), axis=1, outs=3, opset=13, id="Split-13-equal"),
    case("Split", x=randn(2, 7, 3), axis=1, num_outputs=3, outs=3, opset=18, id="Split-18-num-outputs"),
    case("Gather", X, IDX, x=randn(3, 4), axis=0, opset=13),
    case("Gather", X, arr(-1, I64), x=randn(3, 4), axis=1, opset=13, id="Gather-scalar-negative"),
    case("Slice", x=X4, starts=[1, -3], ends=[1000, -1], axes=[1, 3], opset=9, id="Slice-9-attrs"),
    case("Slice", X, arr([0, 1], I64), arr([5, 4], I64), arr([2, 3], I64), arr([2, 2], I64), x=X4, opset=13,
         id="Slice-13-steps"),
    case("Slice", X, arr([-1, 3], I64), arr([-10 ** 18, 0], I64), arr([-1, 2], I64), arr([-1, -2], I64), x=X4,
         opset=13, id="Slice-13-negative-steps"),
    case("Slice", X, arr([2], I64), arr([2 ** 62], I64), x=randn(5, 3), opset=13, id="Slice-13-default-axes"),
    case("Add", X, "c", x=randn(2, 3), opset=13, id="Constant-value",
         pre=[helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(randn(3)))]),
    case("Mul", X, "c", x=randn(2, 3), opset=13, id="Constant-value-float",
         pre=[helper.make_node("Constant", [], ["c"], value_float=1.5)]),
    case("Reshape", X, "c", x=randn(2, 3), opset=13, id="Constant-value-ints",
         pre=[helper.make_node("Constant", [], ["c"], value_ints=[3, 2])]),
    case("Unsqueeze", X, "c", x=randn(2, 3), opset=13, id="Constant-value-int",
         pre=[helper.make_node("Constant", [], ["c"], value_int=0)]),
    case("ConstantOfShape", x=arr([2, 3], I64), opset=9, grad=False),
    case("ConstantOfShape", x=arr([3], I64), value=numpy_helper.from_array(arr([7], I64)), opset=9,
         id="ConstantOfShape-int", grad=False),
    case("Expand", X, arr([2, 1, 4], I64), x=randn(3, 1), opset=13),
    case("Tile", X, arr([2, 1, 3], I64), x=randn(2, 3, 2), opset=13),
    case("Range", X, arr(5.0), arr(0.5), x=arr(1.0), opset=11, grad=False),
    case("Range", X, arr(-7, I64), arr(-2, I64), x=arr(3, I64), opset=11, id="Range-int-negative-step"),
    case("Pad", x=X4, pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5, opset=2, id="Pad-2-attrs"),
    case("Pad", X, arr([0, 0, 1, 2, 0, 0, 2, 1], I64), arr(-1.0), x=X4, opset=13, id="Pad-13-constant"),
    case("Pad", X, arr([0, 0, 2, 1, 0, 0, 1, 3], I64), x=X4, mode="reflect", opset=13, id="Pad-13-reflect"),
    case("Pad", X, arr([0, 1, 1, 0, 0, 0, 3, 1], I64), x=X4, mode="edge", opset=13, id="Pad-13-edge"),
    case("Pad", X, arr([0, 0, -1, 1, 0, 0, 2, -2], I64), x=X4, opset=13, id="Pad-13-negative"),
    case("Pad", X, arr([1, 2, 0, 3], I64), None, arr([1, 3], I64), x=X4, opset=18, id="Pad-18-axes"),
    case("Pad", X, arr([0, 0, 2, 1, 0, 0, 1, 3], I64), x=X4, mode="wrap", opset=19, id="Pad-19-wrap"),
    case("Pad", X, arr([1, 2, 0, 1], I64), x=randint(3, 4), mode="reflect", opset=13, id="Pad-13-reflect-int-2d",
         grad=False),
]

# quantized operators (uint8 and int8, per-tensor, per-axis and blocked)
XQ = randn(2, 3, 4, 4) * 2
XU8 = _rng.integers(0, 256, size=(2, 3, 4, 4)).astype(np.uint8)
# onnxruntime's u8 x s8 kernels on CPUs without VNNI add product pairs with int16 saturation; a
# 7-bit activation (what its quantizer's reduce_range gives) keeps them exact, as we compute
XU7 = _rng.integers(0, 128, size=(2, 3, 4, 4)).astype(np.uint8)
XS8 = _rng.integers(-128, 128, size=(2, 3, 4, 4)).astype(np.int8)
WS8 = _rng.integers(-128, 128, size=(4, 3, 3, 3)).astype(np.int8)
WU8 = _rng.integers(0, 256, size=(4, 3, 3, 3)).astype(np.uint8)
S = arr(0.02)
C += [
    case("QuantizeLinear", X, S, arr(128, np.uint8), x=XQ, opset=10, id="QuantizeLinear-10-uint8"),
    case("QuantizeLinear", X, arr(0.011), x=XQ, opset=10, id="QuantizeLinear-10-no-zero-point"),
    case("QuantizeLinear", X, arr([0.01, 0.02, 0.015]), arr([0, -3, 5], np.int8), x=XQ, axis=1, opset=13,
         id="QuantizeLinear-13-per-axis-int8"),
    case("QuantizeLinear", X, arr(0.05), arr(-1, np.int8), x=arr([[-0.075, -0.025, 0.025, 0.075, 6.4, -7.0]]),
         opset=19, id="QuantizeLinear-19-half-even-saturate"),
    case("QuantizeLinear", X, rand(2, 3, 2, 4, lo=0.005, hi=0.03), arr(np.zeros((2, 3, 2, 4)), np.uint8), x=XQ,
         axis=2, block_size=2, opset=21, id="QuantizeLinear-21-blocked"),
    case("QuantizeLinear", X, arr([0.01, 0.02, 0.015]), x=XQ, axis=1, output_dtype=TensorProto.INT8, opset=21,
         id="QuantizeLinear-21-output-dtype"),
    case("DequantizeLinear", X, S, arr(128, np.uint8), x=XU8, opset=10, id="DequantizeLinear-10-uint8"),
    case("DequantizeLinear", X, arr([0.01, 0.02, 0.015]), arr([0, -3, 5], np.int8), x=XS8, axis=1, opset=13,
         id="DequantizeLinear-13-per-axis"),
    case("DequantizeLinear", X, arr(0.5), x=randint(3, 4, lo=-1000, hi=1000, dtype=np.int32), opset=19,
         id="DequantizeLinear-19-int32"),
    case("DequantizeLinear", X, rand(2, 3, 2, 4, lo=0.005, hi=0.03), x=XS8, axis=2, block_size=2, opset=21,
         id="DequantizeLinear-21-blocked"),
    case("DynamicQuantizeLinear", x=XQ, outs=3, opset=11),
    case("DynamicQuantizeLinear", x=rand(3, 4, lo=0.5, hi=2.0), outs=3, opset=11, id="DynamicQuantizeLinear-pos"),
    case("QLinearConv", X, arr(0.02), arr(120, np.uint8), WS8, arr([0.004, 0.006, 0.005, 0.003]),
         arr([0, 0, 0, 0], np.int8), arr(0.05), arr(110, np.uint8), randint(4, lo=-500, hi=500, dtype=np.int32),
         x=XU7, pads=[1, 1, 1, 1], opset=10, id="QLinearConv-u8s8-per-channel"),
    case("QLinearConv", X, arr(0.03), arr(-5, np.int8), WS8[:, :1], arr(0.01), arr(0, np.int8), arr(0.09),
         arr(3, np.int8), x=XS8[:, :1], strides=[2, 2], opset=10, id="QLinearConv-s8s8"),
    case("QLinearConv", X, arr(0.02), arr(120, np.uint8), WU8, arr(0.004), arr(130, np.uint8), arr(0.4),
         arr(100, np.uint8), x=XU8, pads=[0, 1, 1, 0], opset=10, id="QLinearConv-u8u8-asym-pads"),
    case("QLinearMatMul", X, arr(0.02), arr(120, np.uint8), WU8.reshape(-1, 4)[:4, :3], arr(0.01), arr(128, np.uint8),
         arr(0.5), arr(100, np.uint8), x=XU8.reshape(-1, 4)[:6], opset=10, id="QLinearMatMul-10-u8"),
    case("QLinearMatMul", X, arr(0.02), arr(-2, np.int8), WS8.reshape(-1, 4)[:4, :3], arr(0.01), arr(0, np.int8),
         arr(0.3), arr(5, np.int8), x=XS8.reshape(-1, 4)[:6], opset=21, id="QLinearMatMul-21-s8"),
    case("MatMulInteger", X, WS8.reshape(-1, 4)[:4, :3], arr(3, np.uint8), arr(-1, np.int8),
         x=XU7.reshape(-1, 4)[:6], opset=10),
    case("ConvInteger", X, WU8, arr(120, np.uint8), arr(128, np.uint8), x=XU8, pads=[1, 1, 1, 1], opset=10),
]

# edge semantics (several of these were wrong before: Clip without bounds, empty negative-step
# slices, Pad modes on any rank, legacy Dropout masks, Resize modes, Reshape-1)
C += [
    case("Clip", x=X4, opset=6, id="Clip-6-no-bounds"),
    case("Clip", x=X4, opset=13, id="Clip-13-no-bounds"),
    case("Clip", x=X4, opset=6, max=0.2, id="Clip-6-max-only"),
    case("Slice", X, arr([-100], I64), arr([100], I64), arr([0], I64), arr([-1], I64), x=randn(5, 3), opset=13,
         id="Slice-13-negative-step-empty"),
    case("Slice", X, arr([3], I64), arr([1], I64), x=randn(5, 3), opset=13, id="Slice-13-empty"),
    case("Slice", X, arr([10], I64), arr([-100], I64), arr([0], I64), arr([-2], I64), x=randn(5, 3), opset=13,
         id="Slice-13-negative-step-clamped"),
    case("Dropout", X, x=X4, opset=7, outs=2, id="Dropout-7-mask"),
    case("Dropout", X, x=X4, opset=10, outs=2, id="Dropout-10-mask"),
    case("Dropout", X, arr(0.5), np.array(False), x=X4, opset=13, outs=2, id="Dropout-13-ratio-training-false"),
    case("Where", X, arr([1, 2, 3], I64), arr([4, 5, 6], I64), x=np.array([True, False, True]), opset=16,
         id="Where-int"),
    case("Split", x=randn(2, 6, 3), axis=1, split=[2, 4], outs=2, opset=2, id="Split-2-attr"),
    case("Split", x=randn(2, 8, 3), axis=1, num_outputs=3, outs=3, opset=18, id="Split-18-num-outputs-8-3"),
    case("Range", X, arr(-1.0), arr(-0.7), x=arr(5.0), opset=11, id="Range-float-negative-step", grad=False),
    case("Div", X, arr([3, 7, 4], np.uint8), x=arr([[7, 255, 8], [0, 5, 1]], np.uint8), opset=14, id="Div-uint8"),
    case("Pow", X, arr([2, 3, 0], I64), x=arr([[2, -3, 5]], I64), opset=15, id="Pow-int"),
    case("Mod", X, arr([3.0, -3.0, 2.5], F32), x=arr([[7, -7, -8], [0, 5, -1]], F32), fmod=1, opset=13,
         id="Mod-fmod-negative"),
    case("Cast", x=arr([[1.5, 0, 2]]), to=TensorProto.FLOAT16, opset=19, id="Cast-to-float16", grad=False),
    case("Cast", x=arr([[1.5, 0, 2]]), to=TensorProto.DOUBLE, opset=19, id="Cast-to-double"),
    case("Cast", x=arr([[1, 0, 2]], I64), to=TensorProto.BOOL, opset=19, id="Cast-int-to-bool"),
    case("Softmax", x=X4, opset=11, id="Softmax-11-default-axis"),
    case("Softmax", x=X4, axis=0, opset=13, id="Softmax-13-axis0"),
    case("Flatten", x=X4, axis=-1, opset=13, id="Flatten-negative-axis"),
    case("Concat", X, randn(2, 3, 5, 1), x=X4, axis=-1, opset=13, id="Concat-negative-axis"),
    case("Gather", X, randint(2, 2, lo=-5, hi=5), x=X4, axis=-1, opset=13, id="Gather-2d-indices-last-axis"),
    case("Expand", X, arr([3, 1, 4], I64), x=randn(1, 5, 1), opset=13, id="Expand-both-ways"),
    case("Reshape", X, arr([2, 0, 25], I64), x=X4, opset=14, id="Reshape-14-zero-copies"),
    case("Shape", x=X4, start=-2, opset=15, id="Shape-15-negative-start", grad=False),
    case("ConstantOfShape", x=arr([], I64), opset=9, id="ConstantOfShape-scalar", grad=False),
    case("ReduceMean", X, arr([], I64), x=X4, opset=18, id="ReduceMean-18-empty-axes"),
    case("ReduceSum", x=X4, keepdims=0, opset=11, id="ReduceSum-11-all"),
    case("ReduceProd", X, arr([0, 2], I64), x=randint(2, 3, 4, lo=-3, hi=3), keepdims=0, opset=18,
         id="ReduceProd-18-int"),
    case("ReduceLogSum", X, arr([1], I64), x=POS, opset=18, id="ReduceLogSum-18-axes-input"),
    case("ReduceLogSum", x=POS, axes=[1], keepdims=0, opset=13, id="ReduceLogSum-attr-axes"),
    case("BatchNormalization", X, arr([1.0, 2, 3]), arr([0.0, 1, 2]), randn(3), arr([1.0, 0.5, 2]), x=randn(2, 3, 7),
         opset=9, id="BatchNormalization-9-3d"),
    case("BatchNormalization", X, arr([1.0, 2, 3]), arr([0.0, 1, 2]), randn(3), arr([1.0, 0.5, 2]), x=randn(4, 3),
         opset=15, id="BatchNormalization-2d"),
    case("Gemm", X, randn(4, 5), arr(0.5), x=randn(3, 4), opset=13, id="Gemm-scalar-c"),
    case("Gemm", X, randn(4, 5), x=randn(3, 4), opset=13, id="Gemm-no-c"),
    case("MatMul", X, randn(2, 1, 5, 4), x=randn(3, 3, 5), opset=13, id="MatMul-broadcast"),
    case("MatMul", X, randn(5), x=randn(3, 5), opset=13, id="MatMul-vector"),
    case("LayerNormalization", X, randn(5), x=X4, outs=3, opset=17, id="LayerNormalization-stats-last"),
    case("MaxPool", x=X4, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, opset=12,
         id="MaxPool-ceil-window-in-padding"),
    case("MaxPool", x=X4, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER", opset=12,
         id="MaxPool-same-lower"),
    case("AveragePool", x=X4, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
         count_include_pad=1, opset=19, id="AveragePool-ceil-include-pad"),
    case("AveragePool", x=randn(1, 2, 6, 6), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1,
         pads=[0, 0, 1, 1], opset=19, id="AveragePool-ceil-include-asym"),
    case("AveragePool", x=X4, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1,
         opset=19, id="AveragePool-same-lower-include"),
    case("AveragePool", x=X4, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, opset=19,
         id="AveragePool-ceil-exclude-pad"),
    case("MaxPool", x=randint(1, 2, 7, 7).astype(np.int8), kernel_shape=[3, 3], opset=12, id="MaxPool-int8"),
    case("GlobalAveragePool", x=randn(2, 3, 7), opset=13, id="GlobalAveragePool-1d"),
    case("Conv", X, randn(4, 3, 3, 3), x=X4, strides=[2, 2], auto_pad="VALID", opset=11, id="Conv-valid"),
]
C += [
    case("Resize", X, None, arr([1, 1, 1.7, 0.7]), x=randn(1, 2, 5, 6), mode="cubic",
         coordinate_transformation_mode="asymmetric", opset=13, id="Resize-13-cubic-asymmetric"),
    case("Resize", X, None, arr([1, 1, 3.0, 3.0]), x=randn(1, 2, 3, 3), mode="cubic",
         coordinate_transformation_mode="align_corners", opset=13, id="Resize-13-cubic-align-corners"),
    case("Resize", X, arr([]), arr([1, 1, 1.7, 0.7]), x=randn(1, 2, 5, 6), mode="nearest",
         coordinate_transformation_mode="tf_half_pixel_for_nn", opset=11, id="Resize-11-tf-half-pixel-for-nn"),
    case("Resize", X, None, arr([1, 1, 1.7, 0.7]), x=randn(1, 2, 5, 6), mode="nearest",
         coordinate_transformation_mode="pytorch_half_pixel", opset=13, id="Resize-13-nearest-pytorch-half-pixel"),
    case("Resize", X, None, arr([2.0, 1.0, 1.7, 0.7]), x=randn(1, 2, 5, 6), mode="nearest", opset=13,
         id="Resize-13-nearest-batch-axis"),
    case("Resize", X, None, arr([1, 1, 1.7, 0.7]), x=randn(1, 2, 5, 6), mode="nearest",
         coordinate_transformation_mode="half_pixel_symmetric", opset=19, id="Resize-19-nearest-half-pixel-symmetric"),
    case("Resize", X, None, None, arr([9, 3], I64), x=randn(1, 2, 5, 6), mode="linear", axes=[3, 2],
         keep_aspect_ratio_policy="not_smaller", opset=18, id="Resize-18-not-smaller-axes-reordered"),
    case("Resize", X, arr([0.1, 0.3, 0.7, 1.1]), None, arr([3, 9], I64), x=randn(1, 2, 5, 6), mode="cubic", axes=[2, 3],
         coordinate_transformation_mode="tf_crop_and_resize", opset=18, id="Resize-18-crop-and-resize-cubic-axes"),
    case("Resize", X, arr([0, 0, 0.1, 0.3, 1, 1, 0.7, 1.1]), None, arr([1, 2, 3, 9], I64), x=randn(1, 2, 5, 6),
         mode="nearest", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=5.0, opset=13,
         id="Resize-13-crop-and-resize-nearest"),
    case("Resize", X, None, arr([1, 1, 2.0]), x=randn(1, 2, 5), mode="linear", opset=13, id="Resize-13-linear-1d"),
    case("Resize", X, None, arr([1, 1, 2.0, 0.5, 1.5]), x=randn(1, 2, 3, 4, 2), mode="linear", opset=13,
         id="Resize-13-trilinear"),
    case("Resize", X, arr([1, 1, 0.4, 0.7]), x=randn(1, 2, 6, 7), mode="linear", opset=10, id="Resize-10-linear-down"),
    case("Resize", X, arr([1, 1, 0.4, 1.7]), x=randn(1, 2, 6, 7), mode="nearest", opset=10,
         id="Resize-10-nearest-mixed"),
    case("Upsample", X, arr([1, 1, 2.0, 2.5]), x=randn(1, 2, 3, 4), mode="linear", opset=9, id="Upsample-9-linear-2.5"),
    case("Upsample", x=randn(1, 2, 3, 4), scales=[1.0, 1.0, 2.0, 2.0], mode="linear", opset=7, id="Upsample-7-linear"),
    case("Resize", X, arr([]), arr([]), arr([1, 2, 7, 9], I64), x=randn(1, 2, 4, 5), mode="linear", opset=11,
         id="Resize-11-sizes-empty-scales"),
]

# more of the new operators
G = rand(2, 4, 6, 2, lo=-1.2, hi=1.2)
G[0, 0, 0] = [0.5, 0.25]  # a nearest tie
C += [
    case("Attention", X, randn(2, 5, 8), randn(2, 5, 6), x=randn(2, 3, 8), q_num_heads=2, kv_num_heads=2, opset=23,
         id="Attention-3d-cross-mha"),
    case("Attention", X, K4, V4, _rng.random((2, 2, 3, 5)) > 0.5, x=Q4, is_causal=1, opset=23,
         id="Attention-causal-and-4d-bool-mask"),
    case("Attention", X, randn(2, 1, 5, 4), randn(2, 1, 5, 3), x=randn(2, 4, 3, 4), opset=23, id="Attention-4d-mqa"),
    case("Attention", X, K4, V4, x=Q4, softmax_precision=TensorProto.FLOAT, opset=23, id="Attention-softmax-precision"),
    case("Attention", X, K4, V4, randn(3, 5), x=Q4, softcap=1.5, qk_matmul_output_mode=1, outs=["y0", "", "", "y3"],
         opset=23, id="Attention-qk-output-1-softcap"),
    case("Attention", X, K4, V4, None, randn(2, 2, 2, 4), randn(2, 2, 2, 3), x=Q4, outs=4, qk_matmul_output_mode=3,
         opset=23, id="Attention-all-outputs"),
    case("TopK", X, arr([5], I64), x=randn(3, 5), axis=-1, outs=2, opset=11, id="TopK-all"),
    case("TopK", X, arr([2], I64), x=randint(3, 5, lo=0, hi=3), axis=0, outs=2, opset=11, id="TopK-int-ties"),
    case("CumSum", X, arr(1, I64), x=randint(3, 4), reverse=1, opset=14, id="CumSum-int-reverse"),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, strides=[2, 2], auto_pad="SAME_LOWER", opset=11,
         id="ConvTranspose-same-lower"),
    case("ConvTranspose", X, randn(3, 1, 3, 3), randn(3), x=X4, group=3, strides=[2, 2], output_shape=[11, 10],
         opset=11, id="ConvTranspose-output-shape-group"),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, strides=[2, 2], output_shape=[10, 9], auto_pad="SAME_UPPER",
         opset=11, id="ConvTranspose-output-shape-same-upper"),
    case("ConvTranspose", X, randn(3, 2, 2, 2, 2), x=randn(1, 3, 3, 3, 3), strides=[2, 1, 2], opset=11,
         id="ConvTranspose-3d"),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, strides=[3, 2], output_padding=[2, 1], dilations=[1, 2],
         opset=11, id="ConvTranspose-output-padding-dilation"),
    case("ConvTranspose", X, randn(3, 2, 3, 3), x=X4, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
         opset=22, id="ConvTranspose-22"),
    case("GatherND", X, arr([[[1, 0]], [[0, 2]]], I64), x=randn(2, 3, 4, 2), batch_dims=1, opset=13,
         id="GatherND-batch-dims-k2"),
    case("ScatterND", X, arr([[[0], [2]]], I64), randn(1, 2, 4, 2), x=randn(3, 4, 2), opset=13, id="ScatterND-13"),
    case("ScatterElements", X, arr([[1, 0, 2, 0], [2, 1, 0, 1]], I64), randn(2, 4), x=randn(3, 4), reduction="max",
         opset=18, id="ScatterElements-max"),
    case("ScatterElements", X, arr([[1, 0, 2, 0], [2, 1, 0, 1]], I64), randn(2, 4), x=randn(3, 4), reduction="mul",
         opset=18, id="ScatterElements-mul"),
    case("ScatterElements", X, arr([[1, 0, 2, 0], [2, 1, 0, 1]], I64), randn(2, 4), x=randn(3, 4), opset=11,
         id="ScatterElements-11"),
    case("Einsum", X, x=randn(3, 4), equation="ij->ji", opset=12, id="Einsum-transpose"),
    case("Hardmax", x=randn(2, 3, 4), opset=11, id="Hardmax-11-default-axis", grad=False),
    case("Hardmax", x=randn(2, 3, 4), opset=13, id="Hardmax-13-default-axis", grad=False),
    case("Trilu", X, arr(2, I64), x=randn(2, 2, 4, 5), opset=14, id="Trilu-batched"),
    case("EyeLike", x=randn(3, 3), opset=9, id="EyeLike-9", grad=False),
    case("OneHot", X, arr(4.0), arr([0.0, 1.0]), x=arr([[0, 3, 1]]), opset=11, id="OneHot-float-indices", grad=False),
    case("NonZero", x=np.array([[True, False], [False, True]]), opset=13, id="NonZero-bool"),
    case("DepthToSpace", x=randn(2, 9, 2, 3), blocksize=3, opset=11, id="DepthToSpace-11"),
    case("GroupNormalization", X, randn(6), randn(6), x=randn(2, 6, 5), num_groups=3, epsilon=1e-2, opset=21,
         id="GroupNormalization-21-3d"),
    case("RMSNormalization", X, arr(2.0), x=X4, axis=-2, opset=23, id="RMSNormalization-scalar-scale"),
    case("MeanVarianceNormalization", x=randn(2, 3, 4), axes=[0, 2], opset=13, id="MeanVarianceNormalization-3d"),
    case("LRN", x=X4, size=1, opset=13, id="LRN-size1"),
    case("GridSample", X, G, x=X4, opset=16),
    case("GridSample", X, G, x=X4, mode="nearest", padding_mode="border", align_corners=1, opset=16,
         id="GridSample-16-nearest-border"),
    case("GridSample", X, G, x=X4, mode="bicubic", padding_mode="reflection", opset=16,
         id="GridSample-16-bicubic-reflection"),
    case("GridSample", X, G, x=X4, mode="linear", padding_mode="reflection", align_corners=1, opset=20,
         id="GridSample-20-linear"),
    case("GridSample", X, G, x=X4, mode="cubic", padding_mode="border", opset=20, id="GridSample-20-cubic"),
    case("GridSample", X, rand(1, 2, 3, 4, 3, lo=-1.1, hi=1.1), x=randn(1, 2, 3, 4, 5), mode="linear", opset=20,
         id="GridSample-20-volumetric"),
    case("AffineGrid", X, arr([2, 3, 4, 5], I64), x=randn(2, 2, 3), opset=20),
    case("AffineGrid", X, arr([2, 3, 4, 5], I64), x=randn(2, 2, 3), align_corners=1, opset=20,
         id="AffineGrid-align-corners"),
]
XQ8 = _rng.integers(0, 256, size=(2, 3, 4, 4)).astype(np.uint8)
C += [
    case("QLinearConv", X, arr(0.02), arr(120, np.uint8), WU8[:3, :1], arr(0.004), arr(130, np.uint8), arr(0.4),
         arr(100, np.uint8), x=XQ8, group=3, pads=[1, 1, 1, 1], opset=10, id="QLinearConv-depthwise"),
    case("QLinearMatMul", X, arr(0.02), arr(120, np.uint8), XQ8.reshape(-1, 4)[:4, :3], arr([0.01, 0.02, 0.03]),
         arr([128, 100, 90], np.uint8), arr(0.5), arr(100, np.uint8), x=XQ8.reshape(-1, 4)[:6], opset=21,
         id="QLinearMatMul-21-per-column"),
    case("QLinearMatMul", X, arr(0.02), arr(120, np.uint8), XQ8.reshape(2, 16, 3)[:, :4], arr(0.01),
         arr(128, np.uint8), arr(0.5), arr(100, np.uint8), x=XQ8.reshape(2, -1, 4)[:, :6], opset=21,
         id="QLinearMatMul-21-batched"),
    case("DequantizeLinear", X, arr([0.01, 0.02, 0.015, 0.03]), arr([0, -3, 5, 1], np.int8),
         x=_rng.integers(-128, 128, size=(4, 3, 2, 2)).astype(np.int8), axis=0, opset=13,
         id="DequantizeLinear-13-weights-axis0"),
    case("QuantizeLinear", X, arr([0.01, 0.02, 0.015, 0.03]), arr([0, 3, 5, 1], np.uint8), x=randn(4, 3), axis=0,
         opset=13, id="QuantizeLinear-13-axis0"),
    case("QuantizeLinear", X, arr(0.01), arr(3, np.int16), x=randn(4, 3) * 500, opset=21, id="QuantizeLinear-21-int16"),
    case("QuantizeLinear", X, arr(0.01), arr(3, np.uint16), x=randn(4, 3) * 500, opset=21,
         id="QuantizeLinear-21-uint16"),
    case("DequantizeLinear", X, arr(0.01), arr(3, np.uint16), x=_rng.integers(0, 65535, size=(4, 3)).astype(np.uint16),
         opset=21, id="DequantizeLinear-21-uint16"),
    case("QuantizeLinear", X, arr(0.01), arr(3, np.uint8), x=randn(4, 3), precision=TensorProto.FLOAT, opset=23,
         id="QuantizeLinear-23-precision"),
    case("DequantizeLinear", X, arr(0.01), arr(3, np.uint8), x=XQ8, output_dtype=TensorProto.FLOAT, opset=23,
         id="DequantizeLinear-23-output-dtype"),
    case("DynamicQuantizeLinear", x=-np.abs(randn(3, 4)), outs=3, opset=11, id="DynamicQuantizeLinear-negative"),
    case("DynamicQuantizeLinear", x=np.zeros((3, 4), F32), outs=3, opset=11, id="DynamicQuantizeLinear-zeros"),
]

CASES = C
_ids = [c.id for c in CASES]
assert len(_ids) == len(set(_ids)), sorted(i for i in _ids if _ids.count(i) > 1)


# -- running ----------------------------------------------------------------------------------
def _run_both(c: Case):
    model = build(c)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    ref = dict(zip(names, sess.run(names, {"x": c.x})))
    ex = OnnxExecutor(model, source=c.id)
    with torch.no_grad():
        got = ex.run(torch.from_numpy(c.x.copy()))
    return model, ex, ref, got


@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_op_matches_onnxruntime(c: Case):
    model, ex, ref, got = _run_both(c)
    assert set(got) == set(ref), f"outputs {sorted(got)} != {sorted(ref)}"
    for name, want in ref.items():
        have = got[name].numpy()
        assert have.shape == want.shape, f"{name}: shape {have.shape} != {want.shape}"
        if want.dtype == np.float16:  # the executor computes half precision in float32
            assert have.dtype == np.float32, f"{name}: dtype {have.dtype} for a float16 output"
            np.testing.assert_allclose(have, want.astype(np.float32), rtol=1e-3, atol=1e-3, err_msg=name)
            continue
        assert have.dtype == want.dtype, f"{name}: dtype {have.dtype} != {want.dtype}"
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(have, want, rtol=c.rtol, atol=c.atol, err_msg=name)
        else:
            np.testing.assert_array_equal(have, want, err_msg=name)
    if c.grad and np.issubdtype(c.x.dtype, np.floating):  # gradients reach the input through float ops
        xt = torch.from_numpy(c.x.copy()).requires_grad_(True)
        res = ex.run(xt)
        outs = [res[o] for o in c.outs if o and res[o].is_floating_point()]
        if outs:  # (a float -> int/bool op has nothing to differentiate)
            assert outs[0].requires_grad, "the float output does not depend on x differentiably"
            sum(torch.where(torch.isfinite(t), t, 0.0).sum() for t in outs).backward()
            assert xt.grad is not None and torch.isfinite(xt.grad).all()


def _versions(c: Case):
    for op in [c.op] + [n.op_type for n in c.pre]:
        yield op, schema_version(op, c.opset)


def test_every_registered_op_version_has_a_parity_case():
    covered = {v for c in CASES for v in _versions(c)}
    missing = [f"{s.op_type} {s.since}-{s.last_version()}" for s in supported_ops()
               if not any(op == s.op_type and v is not None and s.covers(v) for op, v in covered)]
    assert not missing, f"registered without a parity case in tests/test_op_parity.py: {missing}"
    assert all(domain == "" for domain, _ in TABLE), "a custom-domain op needs its own parity cases"


def test_problems_are_listed_before_anything_runs(monkeypatch):
    calls = []
    for key in (("", "Conv"), ("", "Relu"), ("", "Resize")):
        monkeypatch.setitem(TABLE, key, [dataclasses.replace(
            s, fn=lambda ctx, x: calls.append(ctx.op_type)) for s in TABLE[key]])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv", kernel_shape=[3, 3], fancy_padding=2),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Resize", ["b", "", "s"], ["c"], name="resize", mode="linear", antialias=1),
        helper.make_node("Det", ["c"], ["d"], name="det"),
        helper.make_node("MyOp", ["d"], ["y"], name="custom", domain="my.domain"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(randn(2, 3, 3, 3), "w"),
                     numpy_helper.from_array(arr([1, 1, 2, 2]), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("my.domain", 1)])
    found = support.problems(model)
    text = [str(p) for p in found]
    assert any("conv" in t and "'fancy_padding'" in t for t in text), text
    assert any("resize" in t and "antialias" in t for t in text), text
    assert any("det" in t and "Det is not supported" in t for t in text), text
    assert any("custom" in t and "my.domain::MyOp" in t for t in text), text
    assert not any("relu" in t for t in text), text
    with pytest.raises(UnsupportedOpError, match="4 unsupported"):
        OnnxExecutor(model, source="m")
    assert calls == []  # nothing ran: the problems come from the table alone


def test_an_op_newer_than_the_verified_opset_is_refused():
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(arr([2], I64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])
    text = " ".join(str(p) for p in support.problems(model))
    assert "TopK version 24" in text and "not supported" in text
