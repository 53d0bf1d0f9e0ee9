"""The operator table: ONNX op type -> a PyTorch implementation (onnx2torch's idea, our code).

Each implementation takes the node context (name, decoded attributes, opset of the model) and
the list of input tensors (None for an omitted optional input) and returns one tensor or a
tuple of tensors. Where semantics changed between opsets (Reshape ``allowzero``, Reduce* axes
as attribute or input, Squeeze/Unsqueeze, Clip, Pad, Split, Slice, Softmax) the implementation
reads ``ctx.opset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

OpFn = Callable[["NodeCtx", list], Any]
OPS: dict[str, OpFn] = {}


@dataclass
class NodeCtx:
    name: str
    op_type: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    n_outputs: int = 1

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def register(*op_types: str) -> Callable[[OpFn], OpFn]:
    def deco(fn: OpFn) -> OpFn:
        for t in op_types:
            OPS[t] = fn
        return fn

    return deco


from . import elementwise, nn, reduce, shape  # noqa: E402,F401  (fill the table)

__all__ = ["OPS", "NodeCtx", "register"]
