"""The one contract every defence method follows.

A method sees a ``RepairContext``: the suspect model as an executor, its neuron inventory and
the defender's small clean set (already preprocessed), nothing else: no test data, no
trigger, no attack spec, no target class. It returns a ``RepairResult``: 0/1 masks under a
pruning semantics and/or new initializer values, plus a log. Export and evaluation are
separate steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import SpecError
from ..graph.executor import OnnxExecutor
from ..graph.neurons import NeuronInventory


@dataclass
class RepairContext:
    executor: OnnxExecutor
    inventory: NeuronInventory
    x: torch.Tensor  # the defender's clean images, as model input, on the executor's device
    y: torch.Tensor  # their labels
    seed: int = 0
    progress: bool = False


@dataclass
class RepairResult:
    method: str
    params: dict[str, Any]
    masks: dict[str, np.ndarray] | None = None  # layer -> 0/1 per neuron (pruned = 0)
    semantics: str = "keep-bias"
    scores: dict[str, np.ndarray] | None = None  # layer -> continuous score (e.g. ANP mask values)
    new_weights: dict[str, np.ndarray] | None = None  # initializer name -> new value
    log: dict[str, Any] = field(default_factory=dict)

    def pruned(self) -> list[tuple[str, int]]:
        """Neuron ids (layer, channel) the masks prune."""
        out = []
        for name, m in (self.masks or {}).items():
            out += [(name, int(k)) for k in np.flatnonzero(np.asarray(m) < 0.5)]
        return out


@dataclass(frozen=True)
class MethodInfo:
    name: str
    run: Callable[..., RepairResult]
    defaults: dict[str, Any]
    summary: str


METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, defaults: dict[str, Any], summary: str):
    """Register ``run(ctx, **options) -> RepairResult`` under ``name`` (one line per method)."""

    def deco(fn):
        METHODS[name] = MethodInfo(name, fn, dict(defaults), summary)
        return fn

    return deco


def get_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise SpecError(f"unknown repair method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def resolve_options(info: MethodInfo, options: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults overridden by the given options; unknown keys are an error."""
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        raise SpecError(f"method '{info.name}' has no option {', '.join(unknown)} "
                        f"(options: {', '.join(sorted(info.defaults))})")
    merged = dict(info.defaults)
    merged.update({k: v for k, v in options.items() if v is not None})
    return merged


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless mini-batch indices: a fresh seeded permutation each pass over the data."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < min(batch_size, n):
                break  # drop the ragged tail so every step sees a full batch
            yield idx
