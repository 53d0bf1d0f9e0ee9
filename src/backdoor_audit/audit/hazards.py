"""Graph hazards, found without data: hidden trigger branches and operators that need code.

**Trigger branches** (architectural backdoors such as ShadowLogic) test the raw input against a
constant and switch the logits on the answer, with no weight involved. They are judged by data
flow, not by which operators a file contains (every transformer export has Where and Equal):
a tensor is *raw* when it is computed from the input's values through no weight-bearing op
(Conv, Gemm, MatMul, ... with an initializer operand); Shape and Size end the raw chain (their
outputs depend on shapes, not values). A comparison or selection (Equal, Greater, Where, If, ...)
that reads a raw tensor and whose output reaches a graph output is a trigger branch: a critical
finding naming its nodes. A clean classifier's comparisons read weights' outputs (an attention
mask built from positions, a Where of a ReLU variant behind a conv) or constants, never the
image alone.

**Operator domains**: the standard ONNX domains run anywhere; onnxruntime's contrib domains run
under onnxruntime; any other domain needs native code the vendor ships (a high finding), and the
operators that run Python (PyOp, PythonOp) execute code on load (critical). Model-local functions
are expanded by name and are not foreign.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

import onnx

from ..graph.external import external_problems, graphs

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}
RUNTIME_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc", "com.microsoft.experimental"}
CODE_OPS = {"PyOp", "PythonOp", "PythonOpGrad"}  # onnxruntime-extensions / onnxruntime training
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "ConvInteger", "MatMulInteger", "QLinearConv",
              "QLinearMatMul", "LSTM", "GRU", "RNN", "Attention"}
SHAPE_OPS = {"Shape", "Size"}
DECISION_OPS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Where", "If", "ArgMax", "ArgMin",
                "TopK", "NonZero", "Not", "And", "Or", "Xor"}


@dataclass
class Finding:
    id: str
    severity: str  # critical | high | medium | low | info
    message: str
    evidence: dict = field(default_factory=dict)


def _node_name(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def trigger_branches(graph: onnx.GraphProto) -> list[Finding]:
    """Comparisons or selections on the raw input whose result reaches an output."""
    inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    raw = {i.name for i in graph.input if i.name not in inits}
    decisions = []
    for i, node in enumerate(graph.node):
        weighted = node.op_type in WEIGHT_OPS and any(n in inits for n in node.input)
        reads_raw = [n for n in node.input if n in raw]
        if not reads_raw or node.op_type in SHAPE_OPS:
            continue
        if node.op_type in DECISION_OPS:
            decisions.append((i, node))
        if not weighted:
            raw.update(o for o in node.output if o)
    if not decisions:
        return []
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for n in node.input:
            consumers.setdefault(n, []).append(i)
    outputs = {o.name for o in graph.output}
    found = []
    for i, node in decisions:
        path = _path_to_output(graph, consumers, outputs, i)
        if path is None:
            continue
        names = [_node_name(graph.node[j], j) for j in path]
        out_name = next(o for o in graph.node[path[-1]].output if o in outputs)
        selects = [n for j, n in zip(path, names) if graph.node[j].op_type in ("Where", "If")]
        found.append(Finding(
            "graph.trigger-branch", "critical",
            f"node '{names[0]}' ({node.op_type}) tests the raw input with no weight in between, and its result "
            f"reaches output '{out_name}'"
            + (f" through {', '.join(repr(s) for s in selects[:3])}" if selects else ""),
            {"node": names[0], "op": node.op_type, "path": names}))
    return _dedupe(found)


def _path_to_output(graph, consumers, outputs, start: int) -> list[int] | None:
    """Node indices from ``start`` to a node that writes a graph output (breadth first), or None."""
    prev = {start: None}
    queue = deque([start])
    while queue:
        j = queue.popleft()
        if any(o in outputs for o in graph.node[j].output):
            path = []
            while j is not None:
                path.append(j)
                j = prev[j]
            return path[::-1]
        for o in graph.node[j].output:
            for k in consumers.get(o, []):
                if k not in prev:
                    prev[k] = j
                    queue.append(k)
    return None


def _dedupe(found: list[Finding]) -> list[Finding]:
    """One finding per branch: a comparison that feeds a Where is reported, not the Where again."""
    on_paths = {n for f in found for n in f.evidence["path"][1:]}
    return [f for f in found if f.evidence["node"] not in on_paths]


def operator_domains(model: onnx.ModelProto) -> list[Finding]:
    local = {(f.domain, f.name) for f in model.functions}
    foreign: dict[str, list[str]] = {}
    code: list[str] = []
    for _, graph in graphs(model.graph):
        for i, node in enumerate(graph.node):
            if node.op_type in CODE_OPS:
                code.append(f"{_node_name(node, i)} ({node.domain or 'ai.onnx'}.{node.op_type})")
            elif (node.domain, node.op_type) in local:
                continue
            elif node.domain not in STANDARD_DOMAINS | RUNTIME_DOMAINS:
                foreign.setdefault(node.domain, []).append(node.op_type)
    out = []
    if code:
        out.append(Finding("graph.code-execution", "critical",
                           f"operators that run Python code when the model runs: {', '.join(code[:5])}",
                           {"nodes": code}))
    for domain, ops in sorted(foreign.items()):
        out.append(Finding("graph.foreign-domain", "high",
                           f"operator domain '{domain}' ({', '.join(sorted(set(ops)))}) is neither ONNX's nor "
                           "onnxruntime's: running it needs native code from the vendor",
                           {"domain": domain, "ops": sorted(set(ops))}))
    return out


def external_data(model: onnx.ModelProto, path: str | os.PathLike) -> list[Finding]:
    """Every tensor stored outside the file, checked without reading it (``graph.external``: the
    same rules ``load_model`` refuses a file by), as findings naming the tensor."""
    return [Finding("file.external-data", p.severity, f"tensor '{p.tensor}' ({p.where}): {p.problem}",
                    {"tensor": p.tensor, "where": p.where, **p.info})
            for p in external_problems(model, path)]


def checker_findings(model: onnx.ModelProto) -> list[Finding]:
    """The ONNX checker's full check (with strict shape inference) as a finding, when it fails.
    Files over protobuf's 2 GB limit cannot be checked in memory and are left to the loader."""
    if model.ByteSize() >= 2**31 - 1:
        return []
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        text = " ".join(str(exc).split())
        return [Finding("graph.invalid", "medium", f"the ONNX checker rejects the graph: {text[:300]}",
                        {"checker": text[:2000]})]
    return []


def graph_hazards(model: onnx.ModelProto) -> list[Finding]:
    """Every data-free graph finding of ``model``."""
    return checker_findings(model) + trigger_branches(model.graph) + operator_domains(model)
