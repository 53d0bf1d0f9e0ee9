"""Small helpers shared by the operator implementations."""

from __future__ import annotations

import torch


def ints(t) -> list[int]:
    """A shape-like input (tensor or list) as a list of Python ints."""
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def scalar(t, default=None):
    if t is None:
        return default
    if isinstance(t, torch.Tensor):
        return t.reshape(-1)[0].item() if t.numel() else default
    return t


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ONNX TensorProto data type -> torch dtype
ONNX_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


def onnx_type_name(code) -> str:
    try:
        import onnx

        return onnx.TensorProto.DataType.Name(int(code))
    except Exception:
        return str(code)


def opt(x: list, i: int):
    """Input ``i`` or None when it is omitted (absent or empty name)."""
    return x[i] if len(x) > i else None


def prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out
