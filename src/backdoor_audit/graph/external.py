"""Tensors a file stores outside itself, checked without reading them, and the walkers that find
every tensor a file can hold (initializers, sparse initializers, Constant and other tensor
attributes, in the graph, its subgraphs and the model's local functions).

``load_model`` refuses a file with any critical problem before reading a byte of its external
data; the scan reports every problem as a finding naming the tensor (``audit.hazards``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx


def _attr_where(where: str, node: onnx.NodeProto, attr: onnx.AttributeProto) -> str:
    return f"{where}/node '{node.name or node.op_type}' attribute {attr.name}"


def _subgraphs(nodes, where: str):
    """(where, graph) of every graph held in the attributes of ``nodes`` (If, Loop, Scan), recursively."""
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g, _attr_where(where, node, attr))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graphs(g, _attr_where(where, node, attr))


def graphs(graph: onnx.GraphProto, where: str = "graph"):
    """(where, graph) for ``graph`` and every subgraph below it."""
    yield where, graph
    yield from _subgraphs(graph.node, where)


EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}


def tensors(model: onnx.ModelProto):
    """(where, tensor) for every tensor a file can hold: initializers, sparse initializers, Constant
    and other tensor attributes, in the graph, its subgraphs and the model's functions."""
    holders = [(where, g.node, g) for where, g in graphs(model.graph)]
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


@dataclass(frozen=True)
class ExternalProblem:
    tensor: str
    where: str
    problem: str
    severity: str  # critical: never read; high: cannot or should not be trusted as it is
    info: dict
    readable: bool = True  # False: there is nothing to read (the file is missing)


def external_problems(model: onnx.ModelProto, path: str | os.PathLike) -> list[ExternalProblem]:
    """Every tensor stored outside the file, checked without reading it: a location that is
    absolute, leaves the model's folder after normalising, or passes through a symlink; a file
    with other hard links; an offset or length past the file's end; keys ONNX does not define."""
    base = Path(path).resolve().parent
    out = []
    for where, t in tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        name = t.name or "(unnamed)"

        def bad(problem: str, severity: str = "critical", readable: bool = True) -> None:
            out.append(ExternalProblem(name, where, problem, severity, info, readable))

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
            bad(f"external data file '{loc}' is missing", "high", readable=False)
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
