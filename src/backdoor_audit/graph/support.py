"""Which parts of an ONNX file the executor can run, known before anything runs.

One pass over the graph checks every node against the operator table (op, op version, each
attribute and the attribute values an implementation does not cover), so a user learns every
obstacle of a file at once (``audit inspect``) and the executor refuses it with all of them in
one line instead of failing at the first node it reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .load import expand_functions, node_names
from .ops import NodeCtx, OpSpec, node_problems


@dataclass(frozen=True)
class Problem:
    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op_type}): {self.message}"


def decode_attr(attr: onnx.AttributeProto):
    import torch

    if attr.type == onnx.AttributeProto.TENSOR:
        return torch.from_numpy(np.array(numpy_helper.to_array(attr.t)))
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return None  # control flow: the op itself is reported as unsupported
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def domain_opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if imp.domain == "ai.onnx" else imp.domain): int(imp.version) for imp in model.opset_import}


def node_contexts(model: onnx.ModelProto):
    """(NodeProto, NodeCtx, implementation or None, problems) per node of the main graph, local
    functions inlined."""
    model = expand_functions(model)
    opsets = domain_opsets(model)
    default = opsets.get("", 0)
    for name, node in zip(node_names(model.graph), model.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        attrs = {a.name: decode_attr(a) for a in node.attribute}
        ctx = NodeCtx(name=name, op_type=node.op_type, attrs=attrs, opset=default,
                      n_outputs=len([o for o in node.output if o]))
        spec, problems = node_problems(ctx, domain, opsets.get(domain, default))
        yield node, ctx, spec, [Problem(name, node.op_type, p) for p in problems]


def problems(model: onnx.ModelProto) -> list[Problem]:
    """Everything in the file the executor cannot run (empty: it can run all of it)."""
    return [p for _, _, _, probs in node_contexts(model) for p in probs]


def summary(found: list[Problem], limit: int = 4) -> str:
    """One line for an error message: the count and the first few problems."""
    head = "; ".join(str(p) for p in found[:limit])
    more = f"; and {len(found) - limit} more (audit inspect lists them all)" if len(found) > limit else ""
    return f"{len(found)} unsupported: {head}{more}"


__all__ = ["OpSpec", "Problem", "decode_attr", "domain_opsets", "node_contexts", "problems", "summary"]
