"""From 0/1 neuron masks to initializer writes, under a chosen pruning semantics.

``keep-bias`` (ANP's choice, Section 3.3): a pruned neuron's weights are zeroed and its bias
kept; for a BN unit its scale gamma is zeroed and its shift beta kept.
``zero-bias``: weights and bias (BN scale and shift) are both zeroed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from ..errors import SpecError
from ..graph.neurons import NeuronInventory, initializer_array, weight_view_shape
from .surgery import Write

SEMANTICS = ("keep-bias", "zero-bias")


def mask_writes(model: onnx.ModelProto, inventory: NeuronInventory, masks: dict[str, np.ndarray],
                semantics: str = "keep-bias", base: Callable[[str], np.ndarray] | None = None) -> list[Write]:
    """Writes that zero the pruned neurons of ``masks`` (layer -> 0/1 per neuron). ``base(name)``
    gives the value a mask applies to (default: the initializer in ``model``); a method that also
    re-weights a layer passes its new values, so the two combine instead of overwriting."""
    base = base or (lambda name: initializer_array(model, name))
    if semantics not in SEMANTICS:
        raise SpecError(f"unknown pruning semantics '{semantics}' (choose from {', '.join(SEMANTICS)})")
    writes = []
    for name, mask in masks.items():
        layer = inventory[name]
        keep = (np.asarray(mask) > 0.5).astype(np.float32)
        if keep.shape != (layer.size,):
            raise SpecError(f"mask for layer '{name}' has {keep.size} entries, the layer has {layer.size} neurons")
        if keep.all():
            continue
        w = base(layer.weight)
        writes.append(Write(layer.weight_reader, layer.weight_input, layer.weight,
                            w * keep.reshape(weight_view_shape(layer, w.ndim)).astype(w.dtype)))
        if semantics == "zero-bias" and layer.bias is not None:
            b = base(layer.bias)
            writes.append(Write(layer.bias_node, layer.bias_input, layer.bias, b * keep.astype(b.dtype)))
    return writes
