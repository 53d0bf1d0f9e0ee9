"""The neuron inventory: every output channel of a weight-bearing node, with a stable id.

A neuron is ``(node name, k)``: Conv output channel k (weight[k], bias[k]), Gemm/MatMul output
unit k (weight row or column by ``transB``; a MatMul's bias is the 1-D initializer of the Add
that follows it), BatchNormalization channel k (scale[k], B[k]), LayerNormalization channel k
over the last axis and InstanceNormalization channel k (scale[k], B[k]: affine channels). The
inventory also records
which conv/linear layers are normalised by a BatchNorm that survived export (``bn``), channels
tied together by residual Adds and Concats, and the classifier head.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from .load import expand_functions, node_names

# ops through which a channel index keeps its meaning (for tracing sources and couplings)
_CHANNELWISE = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Clip", "HardSigmoid",
    "HardSwish", "Softplus", "Gelu", "Mish", "Identity", "Dropout", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Cast", "Resize", "Upsample", "Pad", "Celu", "ThresholdedRelu",
    "Shrink", "Softsign", "Erf",
}


@dataclass(frozen=True)
class Layer:
    """One weight-bearing node and the initializers its neurons own."""

    name: str  # unique node name (see load.node_names)
    op: str  # Conv | Gemm | MatMul | BatchNormalization | LayerNormalization | InstanceNormalization
    kind: str  # conv | linear | bn | norm (Layer/InstanceNorm's affine channels: scale[k], B[k])
    size: int  # number of neurons
    weight: str  # initializer: conv/linear weight, or BN scale
    weight_input: int  # its slot in the node's inputs
    weight_axis: int  # axis of the weight that indexes neurons
    bias: str | None = None  # initializer: conv/linear bias, or BN shift
    bias_node: str | None = None  # node that reads the bias (the layer itself, or MatMul's Add)
    bias_input: int | None = None
    bn: str | None = None  # conv/linear: the BatchNormalization that normalises its output
    normalises: str | None = None  # bn: the conv/linear it follows
    head: bool = False
    weight_node: str | None = None  # node whose input slot reads the weight, when not this one
    mean: str | None = None  # bn: initializer of the running mean
    var: str | None = None  # bn: initializer of the running variance

    @property
    def weight_reader(self) -> str:
        """The node that reads the weight initializer at ``weight_input`` (this layer, or the
        Transpose in front of a MatMul in unfolded legacy exports)."""
        return self.weight_node or self.name

    @property
    def tensors(self) -> dict[str, str]:
        """The initializers this layer's neurons own, by role: weight, bias, and for BN the running
        mean and variance (roles without an initializer left out)."""
        roles = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "var": self.var}
        return {role: name for role, name in roles.items() if name is not None}

    def neuron_ids(self) -> list[tuple[str, int]]:
        return [(self.name, k) for k in range(self.size)]


@dataclass(frozen=True)
class Coupling:
    """Channels tied together: channel k of every listed layer meets in one Add (or Concat)."""

    kind: str  # add | concat
    node: str
    layers: tuple[str, ...]
    offsets: tuple[int, ...] = ()  # concat: channel offset of each layer in the output


@dataclass
class NeuronInventory:
    layers: list[Layer]
    couplings: list[Coupling] = field(default_factory=list)
    # Conv/Gemm/MatMul nodes whose weights the graph computes from constants (ConstantOfShape,
    # Mul of a Constant, ...) instead of reading an initializer: not neurons a repair can write
    computed: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._by_name = {l.name: l for l in self.layers}

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def total(self) -> int:
        return sum(l.size for l in self.layers)

    @property
    def has_batchnorm(self) -> bool:
        return any(l.kind == "bn" for l in self.layers)

    @property
    def batchnorm_state(self) -> str:
        """'kept' when BN nodes survive export; 'absent' when none do (folded into the convs by
        the exporter, or never there): then a conv's own weights and bias are the neuron."""
        return "kept" if self.has_batchnorm else "absent"

    def units(self, include_head: bool = False) -> list[Layer]:
        """The layers a neuron-level defence masks and perturbs (ANP's choice): a BN layer in
        place of the conv/linear it normalises (perturbing the conv would be undone by the
        normalisation), the conv/linear itself where no BN follows; the head left out unless asked."""
        out = []
        for l in self.layers:
            if l.kind != "bn" and l.bn is not None:
                continue
            if l.head and not include_head:
                continue
            out.append(l)
        return out

    def select_units(self, layers: str = "all", include_head: bool = False) -> list[Layer]:
        """Units restricted to a component: "all", "conv" (conv units and the BN that normalises
        a conv), "linear", or a comma-separated list of layer names (ANP Table 6's components)."""
        from ..errors import SpecError

        units = self.units(include_head=include_head or layers not in ("all", "conv", "linear"))
        if layers == "all":
            return units
        if layers in ("conv", "linear"):
            def kind(l: Layer) -> str:
                return self[l.normalises].kind if l.kind == "bn" and l.normalises in self else l.kind
            return [l for l in units if kind(l) == layers]
        names = [n.strip() for n in layers.split(",") if n.strip()]
        by_name = {l.name: l for l in units}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SpecError(f"no maskable layer named {', '.join(missing)} (layers: {', '.join(by_name)})")
        return [by_name[n] for n in names]

    def no_units_reason(self, what: str) -> str:
        """Why a defence finds nothing to mask: the sentence a refusal shows."""
        msg = (f"the model has no neurons {what} can mask (no Conv, Gemm, MatMul, BatchNormalization or "
               "Layer/InstanceNormalization with initializer weights outside the classifier head)")
        if self.computed:
            more = len(self.computed) - 3
            shown = ", ".join(self.computed[:3]) + (f" and {more} more" if more > 0 else "")
            msg += (f"; {len(self.computed)} weight layers ({shown}) take weights the graph computes at run time "
                    "(e.g. ConstantOfShape), which cannot be written back as neurons")
        return msg

    def summary(self) -> dict:
        return {
            "layers": len(self.layers),
            "neurons": self.total,
            "batchnorm": self.batchnorm_state,
            "by_kind": {k: sum(l.size for l in self.layers if l.kind == k) for k in ("conv", "linear", "bn", "norm")},
            "head": [l.name for l in self.layers if l.head],
            "couplings": len(self.couplings),
        }


class _GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.graph = g
        self.names = node_names(g)
        self.inits = {i.name: i for i in g.initializer}
        self.consts = {}
        for node in g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(g.node):
            for o in node.output:
                self.producer[o] = i
            for j, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((i, j))
        self.outputs = {o.name for o in g.output}

    def initializer(self, name: str) -> str | None:
        """Resolve a tensor name through Identity nodes to the initializer behind it."""
        seen = 0
        while name not in self.inits and name in self.producer and seen < 16:
            node = self.graph.node[self.producer[name]]
            if node.op_type != "Identity":
                return None
            name, seen = node.input[0], seen + 1
        return name if name in self.inits else None

    def dims(self, name: str) -> list[int]:
        return list(self.inits[name].dims)

    def only_consumer(self, tensor: str) -> int | None:
        cons = self.consumers.get(tensor, [])
        return cons[0][0] if len(cons) == 1 and tensor not in self.outputs else None

    def is_constant(self, name: str) -> bool:
        return self.initializer(name) is not None or name in self.consts


def _weight_layer(ix: _GraphIndex, i: int) -> Layer | None:
    node = ix.graph.node[i]
    name = ix.names[i]
    op = node.op_type
    if op == "Conv" and len(node.input) > 1:
        w = ix.initializer(node.input[1])
        if w is None:
            return None
        b = ix.initializer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return Layer(name, op, "conv", ix.dims(w)[0], w, 1, 0, b, name if b else None, 2 if b else None)
    if op == "Gemm":
        w = ix.initializer(node.input[1])
        if w is None or len(ix.dims(w)) != 2:
            return None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
        n = ix.dims(w)[axis]
        b = ix.initializer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if b is not None and ix.dims(b) != [n]:
            b = None  # a scalar or broadcast C is not a per-neuron bias
        return Layer(name, op, "linear", n, w, 1, axis, b, name if b else None, 2 if b else None)
    if op == "MatMul":
        w = ix.initializer(node.input[1])
        reader, slot, axis = None, 1, 1
        if w is None and node.input[1] in ix.producer:  # B = Transpose(W): legacy export, no folding
            tr = ix.graph.node[ix.producer[node.input[1]]]
            perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), [1, 0])
            if tr.op_type == "Transpose" and perm == [1, 0]:
                w = ix.initializer(tr.input[0])
                reader, slot, axis = ix.names[ix.producer[node.input[1]]], 0, 0
        if w is None or len(ix.dims(w)) != 2:
            return None
        n = ix.dims(w)[axis]
        b = bias_node = bias_input = None
        nxt = ix.only_consumer(node.output[0])
        if nxt is not None and ix.graph.node[nxt].op_type == "Add":
            add = ix.graph.node[nxt]
            for j, inp in enumerate(add.input):
                cand = ix.initializer(inp)
                if inp != node.output[0] and cand is not None and ix.dims(cand) == [n]:
                    b, bias_node, bias_input = cand, ix.names[nxt], j
        return Layer(name, op, "linear", n, w, slot, axis, b, bias_node, bias_input, weight_node=reader)
    if op in ("LayerNormalization", "InstanceNormalization") and len(node.input) > 1:  # affine channels
        s = ix.initializer(node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if s is None or len(ix.dims(s)) != 1 or (op == "LayerNormalization" and axis != -1):
            return None
        b = ix.initializer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return Layer(name, op, "norm", ix.dims(s)[0], s, 1, 0, b, name if b else None, 2 if b else None)
    if op == "BatchNormalization":
        s = ix.initializer(node.input[1])
        if s is None:
            return None
        b = ix.initializer(node.input[2])
        mean, var = (ix.initializer(node.input[k]) if len(node.input) > k else None for k in (3, 4))
        return Layer(name, op, "bn", ix.dims(s)[0], s, 1, 0, b, name if b else None, 2 if b else None,
                     mean=mean, var=var)
    return None


def _source_layers(ix: _GraphIndex, tensor: str, by_node: dict[int, Layer], depth: int = 0) -> list[str]:
    """The weight layers whose channels make up ``tensor`` (through channel-wise ops and Adds)."""
    if depth > 64 or tensor not in ix.producer:
        return []
    i = ix.producer[tensor]
    node = ix.graph.node[i]
    if i in by_node:
        return [by_node[i].name]
    if node.op_type in _CHANNELWISE:
        return _source_layers(ix, node.input[0], by_node, depth + 1)
    if node.op_type in ("Add", "Mul", "Sub", "Div"):
        srcs = []
        for inp in node.input:
            if not ix.is_constant(inp):
                srcs += _source_layers(ix, inp, by_node, depth + 1)
        return srcs
    return []


def build_inventory(model: onnx.ModelProto) -> NeuronInventory:
    """Find every neuron of the graph (local functions inlined), BN pairings, couplings and the
    classifier head."""
    ix = _GraphIndex(expand_functions(model))
    by_node: dict[int, Layer] = {}
    for i in range(len(ix.graph.node)):
        layer = _weight_layer(ix, i)
        if layer is not None:
            by_node[i] = layer
    # pair conv/linear with the BatchNormalization that reads its output (possibly via Identity)
    for i, layer in list(by_node.items()):
        if layer.kind == "bn":
            continue
        out = ix.graph.node[i].output[0]
        if layer.op == "MatMul" and layer.bias_node is not None:
            out = ix.graph.node[ix.names.index(layer.bias_node)].output[0]
        nxt = ix.only_consumer(out)
        if nxt is not None and nxt in by_node and by_node[nxt].kind == "bn":
            by_node[i] = replace(layer, bn=by_node[nxt].name)
            by_node[nxt] = replace(by_node[nxt], normalises=layer.name)
    # the head: linear layers whose output reaches a graph output through no other weight layer
    for i, layer in list(by_node.items()):
        if layer.kind == "linear" and _reaches_output(ix, i, by_node):
            by_node[i] = replace(layer, head=True)
    couplings = []
    for i, node in enumerate(ix.graph.node):
        if node.op_type in ("Add", "Sum") and sum(not ix.is_constant(t) for t in node.input) >= 2:
            srcs = []
            for inp in node.input:
                srcs += _source_layers(ix, inp, by_node)
            if len(set(srcs)) >= 2:
                couplings.append(Coupling("add", ix.names[i], tuple(dict.fromkeys(srcs))))
        elif node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis != 1:
                continue
            layers, offsets, off = [], [], 0
            for inp in node.input:
                srcs = _source_layers(ix, inp, by_node)
                size = {l.name: l.size for l in by_node.values()}.get(srcs[0]) if srcs else None
                if size is None:
                    layers = []
                    break
                layers.append(srcs[0])
                offsets.append(off)
                off += size
            if layers:
                couplings.append(Coupling("concat", ix.names[i], tuple(layers), tuple(offsets)))
    return NeuronInventory([by_node[i] for i in sorted(by_node)], couplings, _computed_weights(ix, by_node))


def _computed_weights(ix: _GraphIndex, by_node: dict[int, Layer]) -> list[str]:
    """Weight-bearing nodes outside the inventory whose weight input is computed from constants only."""
    static = set(ix.inits) | set(ix.consts)
    for node in ix.graph.node:
        if node.input and all(not n or n in static for n in node.input) or node.op_type == "Constant":
            static.update(node.output)
    return [ix.names[i] for i, node in enumerate(ix.graph.node)
            if i not in by_node and node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1
            and node.input[1] in static and ix.initializer(node.input[1]) is None]


def _reaches_output(ix: _GraphIndex, start: int, by_node: dict[int, Layer]) -> bool:
    stack, seen = list(ix.graph.node[start].output), set()
    while stack:
        t = stack.pop()
        if t in ix.outputs:
            return True
        for i, _ in ix.consumers.get(t, []):
            if i in seen:
                continue
            seen.add(i)
            layer = by_node.get(i)
            if layer is not None and layer.kind != "bn":
                continue  # another weight layer stands between this one and the output
            stack.extend(ix.graph.node[i].output)
    return False


def weight_view_shape(layer: Layer, ndim: int) -> list[int]:
    """Shape that broadcasts a per-neuron vector along the layer's neuron axis of its weight."""
    shape = [1] * ndim
    shape[layer.weight_axis] = -1
    return shape


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)
