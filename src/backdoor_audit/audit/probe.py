"""The adversarial neuron perturbation probe (ANP paper, Section 3.2, Fig. 1).

Under a neuron perturbation of budget eps (every unit's weight scaled by 1 + delta_k and bias
by 1 + xi_k, delta, xi in [-eps, eps]) found by PGD to maximise the clean loss, a backdoored
model's errors collapse onto its target class, while a clean model's errors spread out.
Per eps we measure the error rate and which classes the perturbed predictions go to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..graph.executor import OnnxExecutor
from ..graph.modulate import Modulation
from ..graph.neurons import NeuronInventory


@dataclass
class ProbePoint:
    eps: float
    error_rate: float  # share of clean images misclassified under the perturbation
    class_share: list[float]  # share of each class among all perturbed predictions
    error_class_share: list[float]  # share of each class among the misclassified ones
    top_class: int  # the class the errors go to most
    top_share: float  # its share of the errors


def perturbation_probe(ex: OnnxExecutor, inventory: NeuronInventory, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, eps_list=(0.1, 0.2, 0.3, 0.4), steps: int = 10,
                       batch_size: int = 250, seed: int = 0, include_head: bool = False,
                       callback=None) -> list[ProbePoint]:
    units = inventory.units(include_head=include_head)
    mod = Modulation(ex, units)
    gen = torch.Generator(device=mod.delta.device).manual_seed(seed)
    points = []
    with mod:
        mod.perturb = True
        for eps in eps_list:
            with torch.no_grad():
                mod.delta.uniform_(-eps, eps, generator=gen)
                mod.xi.uniform_(-eps, eps, generator=gen)
            noise_ascent(mod, ex, x, y, steps=steps, step=2.5 * eps / max(steps, 1), bound=eps,
                         batch_size=batch_size, callback=callback)
            with torch.no_grad():
                pred = torch.cat([ex(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
            points.append(_summarise(eps, pred.cpu().numpy(), y.cpu().numpy(), num_classes))
    return points


def noise_ascent(mod: Modulation, ex: OnnxExecutor, x: torch.Tensor, y: torch.Tensor, *, steps: int, step: float,
                 bound: float | None, batch_size: int = 250, callback=None) -> None:
    """``steps`` signed-gradient steps of ``mod``'s installed, switched-on perturbation (delta, xi)
    that raise the clean loss summed over all of ``x``; projected onto [-bound, bound] after each
    step, or left unbounded with ``bound=None``."""
    for _ in range(steps):
        mod.delta.requires_grad_(True)
        mod.xi.requires_grad_(True)
        g_d = torch.zeros_like(mod.delta)
        g_x = torch.zeros_like(mod.xi)
        for i in range(0, len(x), batch_size):
            loss = F.cross_entropy(ex(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
            a, b = mod.perturbation_grads(loss)
            g_d += a
            g_x += b
        mod.delta.requires_grad_(False)
        mod.xi.requires_grad_(False)
        mod.signed_step(g_d, g_x, step, bound)
        if callback is not None:
            callback()


def _summarise(eps: float, pred: np.ndarray, y: np.ndarray, num_classes: int) -> ProbePoint:
    wrong = pred != y
    share = np.bincount(pred, minlength=num_classes) / max(len(pred), 1)
    err = np.bincount(pred[wrong], minlength=num_classes) / max(int(wrong.sum()), 1)
    top = int(err.argmax()) if wrong.any() else int(share.argmax())
    return ProbePoint(float(eps), float(wrong.mean()), share.round(4).tolist(), err.round(4).tolist(),
                      top, float(err[top]) if wrong.any() else 0.0)
