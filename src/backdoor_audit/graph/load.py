"""Safe loading of an ONNX file: every way it can be wrong becomes one ModelError line.

We never modify the input file. External data is only followed when it stays inside the
model's folder (a location such as ``../../etc/passwd`` is refused before anything is read).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import ModelError
from .external import external_problems
from ..util import first_line


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Locations named by initializers stored outside the file."""
    locs = []
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            locs.append(info.location)
    return locs


def _check_external_paths(model: onnx.ModelProto, path: Path) -> None:
    """Refuse, before reading a byte of it, external data the scan would call critical (a location
    that escapes the folder, is absolute or passes a symlink; a hard-linked file; an offset past
    the end) or that is missing: one line naming the tensor."""
    for p in external_problems(model, path):
        if p.severity == "critical" or not p.readable:
            raise ModelError(f"{path}: tensor '{p.tensor}' ({p.where}): {p.problem}")


def load_model(path: str | os.PathLike, check: bool = True, external: bool = True) -> onnx.ModelProto:
    """Read, check and return an ONNX model, or raise ModelError naming what is wrong.
    ``external=False`` returns the file's own protobuf without following (or checking) any
    external data, for an audit of the locations (``audit.hazards.external_data``)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})".rstrip()) from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes; truncated or another file type?)")
    if not external:
        return model
    _check_external_paths(model, path)
    if external_data_locations(model):
        external_data_helper.load_external_data_for_model(model, str(path.resolve().parent))
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"{path}: fails the ONNX checker: {first_line(exc)}") from None
    return model


def expand_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its local functions inlined (older dynamo exports wrap every module in
    one), so every op is a standard node the executor and the inventory see; the model itself
    when it has none. Main-graph nodes keep their names; inlined ones get a ``__<n>`` suffix."""
    if not model.functions:
        return model
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model)


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's single real input (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"model has {len(inputs)} inputs ({names}); an image classifier has exactly one")
    return inputs[0]


def input_dims(model: onnx.ModelProto) -> list[int | str | None]:
    """Dims of the image input: ints where static, the symbol (or None) where dynamic."""
    dims = []
    for d in image_input(model).type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("model imports no standard ONNX opset")


def node_names(graph: onnx.GraphProto) -> list[str]:
    """A unique name per node: its own where it has one, else ``<OpType>_<index>``.

    The executor, the neuron inventory and export all use this one naming, so a neuron id
    ``(node name, channel)`` means the same node everywhere.
    """
    names, seen = [], set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
    return names
