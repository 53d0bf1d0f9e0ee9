"""Write new initializer values back into the original graph with onnx-graphsurgeon.

Everything else stays: inputs, outputs, node names and order, opset, IR version, metadata.
A write targets a node's input slot. Where the initializer behind that slot is read by no
other slot it is replaced in place under the same name; where it is shared (exporters
deduplicate equal tensors, e.g. two zero biases behind an Identity) the slot alone is rewired
to a new initializer ``<name>::<node>`` so the other readers keep their value.

An :class:`Insert` adds one node: a pointwise (1x1) convolution with its own weight and bias on
one input slot of one node, the only reader of its output (a method that inserts a layer, as
NPD's polariser does); it is placed right before that node, so the node order stays topological.

Provenance (tool version, method, parameters, source sha256) is added to ``metadata_props``
under ``backdoor_audit.provenance``; the result passes ``onnx.checker`` (full) and strict shape
inference, and is written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .. import __version__
from ..errors import ModelError
from ..graph.load import node_names
from ..util import atomic_output, first_line

PROVENANCE_KEY = "backdoor_audit.provenance"


@dataclass(frozen=True)
class Write:
    node: str | None  # unique node name (graph.load.node_names); None: every reader of the initializer
    input_index: int
    initializer: str  # the initializer currently behind the slot
    values: np.ndarray


@dataclass(frozen=True)
class Insert:
    node: str  # unique node name whose input slot gets the new layer
    input_index: int
    weight: np.ndarray  # (C, C, 1, 1): a 1x1 Conv over the slot's 4-D tensor
    bias: np.ndarray  # (C,)
    name: str  # the new node's name (its initializers are <name>.weight and <name>.bias)


def _insert(graph: gs.Graph, by_name: dict, ins: Insert) -> None:
    node = by_name.get(ins.node)
    if node is None or ins.input_index >= len(node.inputs):
        raise ModelError(f"cannot insert '{ins.name}': node '{ins.node}' has no input slot {ins.input_index}")
    src = node.inputs[ins.input_index]
    if ins.weight.ndim != 4 or ins.weight.shape[2:] != (1, 1) or ins.bias.shape != (ins.weight.shape[0],):
        raise ModelError(f"cannot insert '{ins.name}': weight {ins.weight.shape} / bias {ins.bias.shape} "
                         "are not a 1x1 convolution")
    dtype = src.dtype if src.dtype is not None else np.float32
    out = gs.Variable(f"{ins.name}_output", dtype=dtype, shape=src.shape)
    conv = gs.Node("Conv", name=ins.name, attrs={"kernel_shape": [1, 1]},
                   inputs=[src, gs.Constant(f"{ins.name}.weight", np.ascontiguousarray(ins.weight.astype(dtype))),
                           gs.Constant(f"{ins.name}.bias", np.ascontiguousarray(ins.bias.astype(dtype)))],
                   outputs=[out])
    node.inputs[ins.input_index] = out
    graph.nodes.insert(graph.nodes.index(node), conv)


def _slot_readers(model: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """initializer name -> every (node, input slot) that reads it, directly or via Identity."""
    inits = {i.name for i in model.graph.initializer}
    names = node_names(model.graph)
    alias = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits | set(alias):
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    readers: dict[str, list[tuple[str, int]]] = {}
    for name, node in zip(names, model.graph.node):
        if node.op_type == "Identity" and node.output[0] in alias:
            continue
        for j, inp in enumerate(node.input):
            src = alias.get(inp, inp)
            if src in inits:
                readers.setdefault(src, []).append((name, j))
    return readers


def apply_writes(model: onnx.ModelProto, writes: list[Write],
                 inserts: tuple[Insert, ...] | list[Insert] = ()) -> tuple[onnx.ModelProto, list[str]]:
    """Return a new model with the writes (then the inserts) applied, and the names of any unshared copies.

    Writes alone are applied to a copy of the protobuf itself (only initializer values change and
    unshared copies are added); inserts go through onnx-graphsurgeon. Either way a file of IR
    version 3 keeps every initializer listed as a graph input, as that version requires."""
    if inserts:
        out, unshared = _apply_with_graphsurgeon(model, writes, inserts)
    else:
        out, unshared = _apply_in_place(model, writes)
    if model.ir_version < 4:
        _list_initializers_as_inputs(out)
    return out, unshared


def _checked_values(w: Write, old_shape, old_dtype) -> np.ndarray:
    if tuple(w.values.shape) != tuple(old_shape):
        raise ModelError(f"new value for '{w.initializer}' has shape {w.values.shape}, expected {tuple(old_shape)}")
    return np.ascontiguousarray(w.values.astype(old_dtype, copy=False))


def _apply_in_place(model: onnx.ModelProto, writes: list[Write]) -> tuple[onnx.ModelProto, list[str]]:
    readers = _slot_readers(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {init.name: init for init in out.graph.initializer}
    nodes = dict(zip(node_names(out.graph), out.graph.node))
    unshared = []
    for w in writes:
        init = inits.get(w.initializer)
        if init is None:
            raise ModelError(f"initializer '{w.initializer}' of node '{w.node}' not found in the graph")
        old = numpy_helper.to_array(init)
        values = _checked_values(w, old.shape, old.dtype)
        if w.node is None or len(readers.get(w.initializer, [])) <= 1:
            init.CopyFrom(numpy_helper.from_array(values, init.name))
        else:
            copy_name = f"{w.initializer}::{w.node}"
            out.graph.initializer.append(numpy_helper.from_array(values, copy_name))
            inits[copy_name] = out.graph.initializer[-1]
            nodes[w.node].input[w.input_index] = copy_name
            unshared.append(copy_name)
    return out, unshared


def _apply_with_graphsurgeon(model, writes, inserts) -> tuple[onnx.ModelProto, list[str]]:
    readers = _slot_readers(model)
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    by_name = dict(zip(node_names(model.graph), graph.nodes))
    unshared = []
    for w in writes:
        if w.initializer not in tensors or not isinstance(tensors[w.initializer], gs.Constant):
            raise ModelError(f"initializer '{w.initializer}' of node '{w.node}' not found in the graph")
        const = tensors[w.initializer]
        values = _checked_values(w, const.values.shape, const.values.dtype)
        if w.node is None or len(readers.get(w.initializer, [])) <= 1:
            const.values = values
        else:
            copy_name = f"{w.initializer}::{w.node}"
            by_name[w.node].inputs[w.input_index] = gs.Constant(copy_name, values)
            unshared.append(copy_name)
    for ins in inserts:
        _insert(graph, by_name, ins)
    out = gs.export_onnx(graph, do_type_check=True)
    # what graphsurgeon does not carry over
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out.domain, out.model_version, out.doc_string = model.domain, model.model_version, model.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    if model.functions and not out.functions:
        out.functions.extend(model.functions)
    return out, unshared


def _list_initializers_as_inputs(out: onnx.ModelProto) -> None:
    """IR 3: every initializer must also be a graph input (graphsurgeon drops them, copies are new)."""
    listed = {i.name for i in out.graph.input}
    for init in out.graph.initializer:
        if init.name not in listed:
            out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def provenance(method: str, params: dict, source_sha256: str, source_name: str, **extra) -> dict:
    return {
        "tool": "backdoor-audit", "version": __version__, "method": method, "params": params,
        "source": source_name, "source_sha256": source_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
    }


def check_model(model: onnx.ModelProto, what: str = "written model") -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"{what} fails the ONNX checker: {first_line(exc)}") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Check, then write atomically (nothing is left at ``path`` on failure)."""
    check_model(model, str(path))
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def write_with_provenance(model: onnx.ModelProto, writes: list[Write], out_path, prov: dict,
                          inserts: tuple[Insert, ...] | list[Insert] = ()) -> tuple[Path, list[str]]:
    new, unshared = apply_writes(model, writes, inserts)
    if unshared:
        prov = {**prov, "unshared_initializers": unshared}
    set_metadata(new, PROVENANCE_KEY, json.dumps(prov, sort_keys=True))
    return save_model(new, out_path), unshared
