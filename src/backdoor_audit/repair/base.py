"""The one contract every defence method follows.

A method sees a ``RepairContext``: the suspect model as an executor, its neuron inventory and the
defender's data, nothing else: no test data, no trigger, no attack spec, no target class (the
package imports nothing of ``attacks`` or ``evaluation``; tests/test_layering.py enforces it). It
returns a ``RepairResult``: 0/1 masks under a pruning semantics and/or new initializer values
and/or inserted pointwise layers, plus a log. Export and evaluation are separate steps.

Methods register in ``METHODS`` with their option schema (``backdoor_audit.options``) and the data
they need: ``labeled`` clean images, ``unlabeled`` images, the ``train`` data, or ``none``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Preprocess
from ..errors import SpecError
from ..export.surgery import Insert
from ..graph.executor import OnnxExecutor
from ..graph.neurons import NeuronInventory
from ..options import Entry, Option, Registry


class MethodRegistry(Registry):
    """The repair methods; a name joined by ``+`` (``clp+i-bau``) is a chain of them (repair/chain.py)."""

    def get(self, name: str) -> Entry:
        if "+" not in name:
            return super().get(name)
        from .chain import chain_entry

        return chain_entry(name, [super(MethodRegistry, self).get(part.strip()) for part in name.split("+")])


METHODS = MethodRegistry("repair method")


@dataclass
class RepairContext:
    """What a defence method may use.

    ``x``/``y``: the defender's labeled clean images as model input and their labels (on the
    executor's device), ``raw`` the same images as pixels (float NCHW in [0, 1]) and ``preprocess``
    the differentiable step from pixels to model input (``preprocess(raw)`` equals ``x``). With
    unlabeled data ``y`` is None; in data-free mode ``x``, ``y`` and ``raw`` are all None.
    ``unlabeled``: further images without labels (pixels), where the defender has them.
    ``train_x``: the (possibly poisoned) training images as model input, given only to a method
    whose paper's threat model includes them (``needs="train"``, e.g. EP) and only with --train-data.
    """

    executor: OnnxExecutor
    inventory: NeuronInventory
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    preprocessing: Preprocess = field(default_factory=Preprocess)
    unlabeled: torch.Tensor | None = None
    train_x: torch.Tensor | None = None  # the model's training data as model input: only for needs="train"
    seed: int = 0
    progress: bool = False

    @property
    def data_free(self) -> bool:
        return self.x is None and self.unlabeled is None

    @property
    def pixels(self) -> torch.Tensor | None:
        """Every image the defender has, labels or not (``raw`` and ``unlabeled``), as pixels."""
        parts = [t for t in (self.raw, self.unlabeled) if t is not None]
        return torch.cat(parts) if len(parts) > 1 else (parts[0] if parts else None)

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        """Pixels (float NCHW in [0, 1]) to model input, differentiable."""
        return self.preprocessing.torch(raw)

    def labeled(self, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), or SpecError naming ``method`` when the defender gave no labeled images."""
        if self.x is None or self.y is None:
            raise SpecError(f"repair method '{method}' needs labeled clean images (--data with labels)")
        return self.x, self.y

    def trainable(self) -> dict[str, nn.Parameter]:
        """The weights an optimiser may train, by initializer name (BN running statistics and
        folded constants left out; see ``OnnxExecutor.trainable_weights``)."""
        return self.executor.trainable_weights()


@dataclass
class RepairResult:
    method: str
    params: dict[str, Any]
    masks: dict[str, np.ndarray] | None = None  # layer -> 0/1 per neuron (pruned = 0)
    semantics: str = "keep-bias"
    scores: dict[str, np.ndarray] | None = None  # layer -> continuous score (e.g. ANP mask values)
    new_weights: dict[str, np.ndarray] | None = None  # initializer name -> new value (masks apply on top)
    inserts: list[Insert] | None = None  # new 1x1 conv layers on node input slots (graph surgery)
    log: dict[str, Any] = field(default_factory=dict)

    def pruned(self) -> list[tuple[str, int]]:
        """Neuron ids (layer, channel) the masks prune."""
        out = []
        for name, m in (self.masks or {}).items():
            out += [(name, int(k)) for k in np.flatnonzero(np.asarray(m) < 0.5)]
        return out


def layer_limit(values: np.ndarray, u: float) -> float:
    """``mean + u * std`` of one layer's per-neuron scores (std with Bessel's correction, as the
    authors' ``torch.std``; 0 for a single neuron): the outlier rule of CLP, BNP and EP."""
    return float(values.mean() + u * (values.std(ddof=1) if values.size > 1 else 0.0))


def mean_biases(ctx: RepairContext, stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For pruning a folded conv under a re-estimated normalisation (``renorm``; ``stats`` its
    per-channel (mean, std), as ``graph.masks.conv_statistics`` gives them): a pruned channel keeps
    its clean mean, which a kept BN's shift would give it: its bias becomes that mean (its weight is
    zeroed by the mask). New bias values of the layers in ``stats`` that prune something."""
    out = {}
    for name, (mean, _) in stats.items():
        layer = ctx.inventory[name]
        pruned = np.asarray(masks[name]) < 0.5
        if layer.bias is None or not pruned.any():
            continue
        bias = ctx.executor.value(layer.bias).detach().cpu().numpy().copy()
        bias[pruned] = mean.cpu().numpy()[pruned]
        out[layer.bias] = bias
    return out


def register_method(name: str, *, summary: str, source: str, needs: str | tuple[str, ...],
                    options: list[Option]) -> Callable[[Callable[..., RepairResult]], Callable[..., RepairResult]]:
    """Register ``run(ctx, **options) -> RepairResult`` under ``name`` with its option schema."""
    return METHODS.register(name, summary=summary, source=source, needs=needs, options=options)
