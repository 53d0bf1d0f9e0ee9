"""Run an ONNX graph in PyTorch, node by node, from the operator table.

Every float initializer becomes an ``nn.Parameter`` under its ONNX name (nothing renamed), so
anything a method changes maps straight back to the file. Gradients flow to the input and,
after ``requires_grad_weights(True)``, to every float initializer. Masks and perturbations are
applied at run time by *modulators* registered on a node's input slot: the weight tensor is
shared, never copied or edited in place.

Half-precision files (float16/bfloat16 weights, inputs or Casts) run in float32 here, which CPU
gradients and masks need; export casts every written value back to its initializer's type, and
onnxruntime runs the written file in its own precision. Nodes that read only constants are run
once when the executor is built (see ``_fold_static``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import ModelError, UnsupportedOpError
from ..util import class_scores, first_line
from .load import expand_functions, image_input, opset_version
from .ops import NodeCtx
from .support import node_contexts, summary

Modulator = Callable[[torch.Tensor], torch.Tensor]
HALF = (torch.float16, torch.bfloat16)  # computed in float32: gradients and masks need it on CPU
BN_MODES = ("running", "batch", "update")
OUTPUT = -1  # the modulator slot of a node's first output


@dataclass
class _Node:
    ctx: NodeCtx
    inputs: list[str]
    outputs: list[str]
    fn: Callable


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA when really usable, else CPU (never an error)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OnnxExecutor(nn.Module):
    """An ONNX classifier as a differentiable PyTorch module."""

    def __init__(self, model: onnx.ModelProto, source: str = "model"):
        super().__init__()
        self.source = source
        model = expand_functions(model)
        self.opset = opset_version(model)
        graph = model.graph
        inp = image_input(model)
        self.input_name = inp.name
        first = inp.type.tensor_type.shape.dim[0] if inp.type.tensor_type.shape.dim else None
        # a graph exported with a fixed batch may bake that batch into Reshape targets
        self.static_batch = int(first.dim_value) if first is not None and first.HasField("dim_value") else None
        self.output_names = [o.name for o in graph.output]
        self.weights = nn.ParameterList()
        self._slots: dict[str, tuple[str, object]] = {}
        self.initializer_names = [init.name for init in graph.initializer]
        self._bn_mode = "running"
        self.half_precision = False  # the file holds float16/bfloat16 tensors (run here in float32)
        self._static: set[str] = set()  # values no method changes: Constant outputs, integer initializers
        for init in graph.initializer:
            tensor = torch.from_numpy(np.array(numpy_helper.to_array(init)))
            self._store(init.name, tensor)
            if not tensor.is_floating_point():
                self._static.add(init.name)
        self.names = []
        self.nodes: list[_Node] = []
        self._by_name: dict[str, _Node] = {}
        found = []
        for node, ctx, spec, probs in node_contexts(model):
            self.names.append(ctx.name)
            found += probs
            if not probs:
                self._add_node(node, ctx, spec.fn)
        if found:
            raise UnsupportedOpError(f"{source}: {summary(found)}")
        self.folded = self._fold_static()
        self._last_use = self._compute_last_use()
        self._modulators: dict[tuple[str, int], Modulator] = {}

    # -- construction ---------------------------------------------------------------------
    def _store(self, name: str, tensor: torch.Tensor, weight: bool = True) -> None:
        if tensor.dtype in HALF:  # export casts written values back to the initializer's own type
            tensor = tensor.float()
            self.half_precision = True
        if tensor.is_floating_point() and weight:
            self._slots[name] = ("w", len(self.weights))
            self.weights.append(nn.Parameter(tensor, requires_grad=False))
        else:
            key = f"_c{len(self._slots)}"
            self.register_buffer(key, tensor, persistent=False)
            self._slots[name] = ("c", key)

    def _add_node(self, node: onnx.NodeProto, ctx, fn: Callable) -> None:
        if node.op_type == "Constant":  # fold now, so .to(device) moves it like any buffer
            self._store(node.output[0], fn(ctx, []))
            self._static.add(node.output[0])
            return
        self.nodes.append(_Node(ctx, list(node.input), list(node.output), fn))
        self._by_name[ctx.name] = self.nodes[-1]

    def _fold_static(self) -> list[str]:
        """Run once, now, every node that reads only static values (Constant outputs, integer
        initializers, results of such nodes) and keep its outputs as buffers: weights a file
        computes with ConstantOfShape (the model-zoo "light" files) or shape constants would
        otherwise be recomputed on every forward pass. Float initializers are never static (a
        method may train them), so nothing a gradient must reach is folded. Returns the names of
        the folded nodes."""
        keep, folded = [], []
        outputs = set(self.output_names)
        for node in self.nodes:
            reads = [n for n in node.inputs if n]
            if reads and all(n in self._static for n in reads) and not outputs & set(node.outputs):
                with torch.no_grad():
                    out = node.fn(node.ctx, [self.value(n) if n else None for n in node.inputs])
                for name, t in zip(node.outputs, out if isinstance(out, tuple) else (out,)):
                    if name:
                        self._store(name, t, weight=False)
                        self._static.add(name)
                folded.append(node.ctx.name)
                self._by_name.pop(node.ctx.name, None)
            else:
                keep.append(node)
        self.nodes = keep
        return folded

    def _compute_last_use(self) -> dict[str, int]:
        last = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                if name:
                    last[name] = i
        return last

    # -- weights --------------------------------------------------------------------------
    def has_value(self, name: str) -> bool:
        return name in self._slots

    def value(self, name: str) -> torch.Tensor:
        """The stored tensor of an initializer (or folded Constant) by its ONNX name."""
        kind, ref = self._slots[name]
        return self.weights[ref] if kind == "w" else getattr(self, ref)

    def named_initializers(self) -> Iterable[tuple[str, torch.Tensor]]:
        for name in self._slots:
            yield name, self.value(name)

    def node_input(self, name: str, index: int = 0) -> str:
        """The tensor the node named ``name`` reads at input slot ``index``."""
        return self._by_name[name].inputs[index]

    def node_output(self, name: str, index: int = 0) -> str:
        """The tensor the node named ``name`` writes at output ``index``."""
        return self._by_name[name].outputs[index]

    def batchnorm_statistics(self) -> set[str]:
        """Names of the initializers that are BatchNormalization running means and variances."""
        return {n.inputs[k] for n in self.nodes if n.ctx.op_type == "BatchNormalization"
                for k in (3, 4) if len(n.inputs) > k and n.inputs[k]}

    def trainable_weights(self) -> dict[str, nn.Parameter]:
        """The float initializers an optimiser may train, by ONNX name: every float initializer
        but BatchNormalization running statistics (which a forward pass in ``"update"`` mode moves,
        never a gradient) and folded Constant nodes (not weights of the file's initializer table)."""
        stats = self.batchnorm_statistics()
        out = {}
        for name in self.initializer_names:
            kind, ref = self._slots[name]
            if kind == "w" and name not in stats:
                out[name] = self.weights[ref]
        return out

    def requires_grad_weights(self, flag: bool = True) -> "OnnxExecutor":
        for p in self.weights:
            p.requires_grad_(flag)
        return self

    @property
    def device(self) -> torch.device:
        return self.weights[0].device if len(self.weights) else torch.device("cpu")

    def batchnorm_mode(self, mode: str) -> str:
        """How BatchNormalization nodes normalise; returns the mode it replaces.

        ``"running"``: with the stored statistics (eval semantics, what the file computes).
        ``"batch"``: with each batch's own statistics, the stored ones untouched (PyTorch's training
        mode without the update; the ANP authors optimise masks this way).
        ``"update"``: with batch statistics, and the stored running mean and variance updated after
        each forward pass with the node's ``momentum`` (ONNX: running = running * momentum + batch *
        (1 - momentum); the variance as PyTorch keeps it, unbiased), as fine-tuning in train mode
        does. A method that updates them returns their new values as initializer writes.
        """
        if mode not in BN_MODES:
            raise ValueError(f"batchnorm mode must be one of {', '.join(BN_MODES)}, got {mode!r}")
        previous = self._bn_mode
        for node in self.nodes:
            if node.ctx.op_type == "BatchNormalization":
                node.ctx.attrs["_bn_mode"] = mode
        self._bn_mode = mode
        return previous

    # -- modulators -----------------------------------------------------------------------
    def set_modulator(self, node: str, input_index: int, fn: Modulator | None) -> None:
        """Transform what ``node`` reads at ``input_index`` (e.g. ``w -> m * w``) at run time."""
        if fn is None:
            self._modulators.pop((node, input_index), None)
        else:
            self._modulators[(node, input_index)] = fn

    def set_output_modulator(self, node: str, fn: Modulator | None) -> None:
        """Transform what ``node`` outputs (its first output) at run time, before any reader sees it."""
        self.set_modulator(node, OUTPUT, fn)

    def clear_modulators(self) -> None:
        self._modulators.clear()

    # -- running --------------------------------------------------------------------------
    def run(self, x: torch.Tensor, capture: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """All graph outputs (and any named intermediate tensors in ``capture``)."""
        keep = set(self.output_names) | set(capture)
        env: dict[str, torch.Tensor] = {self.input_name: x}
        mods = self._modulators
        for i, node in enumerate(self.nodes):
            args = []
            for j, name in enumerate(node.inputs):
                if not name:
                    args.append(None)
                    continue
                t = env[name] if name in env else self.value(name) if name in self._slots else None
                if t is None:
                    raise ModelError(f"{self.source}: node '{node.ctx.name}' reads '{name}', "
                                     "which nothing produces")
                mod = mods.get((node.ctx.name, j)) if mods else None
                args.append(mod(t) if mod is not None else t)
            try:
                out = node.fn(node.ctx, args)
            except (ModelError, UnsupportedOpError):
                raise
            except RuntimeError as exc:
                shapes = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else "-" for a in args)
                raise ModelError(f"{self.source}: node '{node.ctx.name}' ({node.ctx.op_type}) failed on "
                                 f"inputs of shape {shapes}: {first_line(exc)}") from None
            outs = out if isinstance(out, tuple) else (out,)
            post = mods.get((node.ctx.name, OUTPUT)) if mods else None
            if post is not None:
                outs = (post(outs[0]), *outs[1:])
            for name, t in zip(node.outputs, outs):
                if name:
                    env[name] = t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t
            for name in node.inputs:
                if name and name not in keep and self._last_use.get(name) == i:
                    env.pop(name, None)
        return {name: env[name] for name in keep if name in env}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The first graph output: the class scores for an image classifier ((N, C, 1, 1) squeezed
        to (N, C), as ``util.class_scores`` does for onnxruntime's output).

        A model exported with a fixed batch size B runs on any batch in chunks of B (the last
        one padded), so methods need not care how it was exported.
        """
        out_name = self.output_names[0]
        b = self.static_batch
        if b is None or x.shape[0] == b:
            return class_scores(self.run(x)[out_name])
        outs = []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[:1].expand(b - n, *chunk.shape[1:])])
            outs.append(class_scores(self.run(chunk)[out_name])[:n])
        return torch.cat(outs)


def load_executor(path, device=None, model: onnx.ModelProto | None = None) -> OnnxExecutor:
    """Read an ONNX file (safely) into an executor on the chosen device, in eval semantics."""
    from .load import load_model

    model = model if model is not None else load_model(path)
    ex = OnnxExecutor(model, source=str(path))
    return ex.to(pick_device(device))
