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
from pathlib import Path

import onnx

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
    for _, graph in _graphs(model.graph):
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


def _attr_where(where: str, node: onnx.NodeProto, attr: onnx.AttributeProto) -> str:
    return f"{where}/node '{node.name or node.op_type}' attribute {attr.name}"


def _subgraphs(nodes, where: str):
    """(where, graph) of every graph held in the attributes of ``nodes`` (If, Loop, Scan), recursively."""
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g, _attr_where(where, node, attr))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g, _attr_where(where, node, attr))


def _graphs(graph: onnx.GraphProto, where: str = "graph"):
    """(where, graph) for ``graph`` and every subgraph below it."""
    yield where, graph
    yield from _subgraphs(graph.node, where)


EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}


def _tensors(model: onnx.ModelProto):
    """(where, tensor) for every tensor a file can hold: initializers, sparse initializers, Constant
    and other tensor attributes, in the graph, its subgraphs and the model's functions."""
    holders = [(where, g.node, g) for where, g in _graphs(model.graph)]
    for fn in model.functions:
        where = f"function {fn.domain}.{fn.name}"
        holders += [(where, fn.node, None)] + [(w, g.node, g) for w, g in _subgraphs(fn.node, where)]
    for where, nodes, graph in holders:
        if graph is not None:
            yield from ((f"{where}/initializer", t) for t in graph.initializer)
            for sp in graph.sparse_initializer:
                yield from ((f"{where}/sparse initializer", t) for t in (sp.values, sp.indices))
        for node in nodes:
            for attr in node.attribute:
                at = _attr_where(where, node, attr)
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield at, attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from ((at, t) for t in attr.tensors)
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    yield from ((at, t) for t in (attr.sparse_tensor.values, attr.sparse_tensor.indices))


def external_data(model: onnx.ModelProto, path: str | os.PathLike) -> list[Finding]:
    """Every tensor stored outside the file, checked without reading it: a location that is
    absolute, leaves the model's folder after normalising, or passes through a symlink; a file
    with other hard links; an offset or length past the file's end; keys ONNX does not define."""
    base = Path(path).resolve().parent
    out = []
    for where, t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        name = t.name or "(unnamed)"

        def bad(problem: str, severity: str = "critical") -> None:
            out.append(Finding("file.external-data", severity, f"tensor '{name}' ({where}): {problem}",
                               {"tensor": name, "where": where, **info}))

        unknown = sorted(set(info) - EXTERNAL_KEYS)
        if unknown:
            bad(f"external data keys ONNX does not define: {', '.join(unknown)}", "high")
        loc = info.get("location", "")
        if not loc:
            bad("external data without a location")
            continue
        if os.path.isabs(loc) or Path(loc).drive:
            bad(f"absolute external data location '{loc}'")
            continue
        if os.path.normpath(loc).split(os.sep)[0] == os.pardir:
            bad(f"external data location '{loc}' leaves the model's folder")
            continue
        target = base / os.path.normpath(loc)
        link = next((p for p in [target, *target.parents] if p != base and base in p.parents and p.is_symlink()),
                    None)
        if link is not None:
            bad(f"external data location '{loc}' passes through the symlink '{link.relative_to(base)}'")
            continue
        if not target.is_file():
            bad(f"external data file '{loc}' is missing", "high")
            continue
        st = target.stat()
        if st.st_nlink > 1:
            bad(f"external data file '{loc}' has {st.st_nlink} hard links (it may be a file from elsewhere)")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", 0) or 0)
        except ValueError:
            bad(f"external data offset/length are not numbers ({info.get('offset')!r}, {info.get('length')!r})")
            continue
        if offset < 0 or length < 0 or offset + length > st.st_size:
            bad(f"external data offset {offset} + length {length} runs past the end of '{loc}' ({st.st_size} bytes)")
    return out


def graph_hazards(model: onnx.ModelProto) -> list[Finding]:
    """Every data-free graph finding of ``model``."""
    return trigger_branches(model.graph) + operator_domains(model)
