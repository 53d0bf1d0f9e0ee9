"""ANP's mask optimisation under adversarial neuron perturbation (Algorithm 1, lines 2-12).

Shared by the ANP repair (which prunes the masks it finds) and the scan (which reads their
distribution). It runs on the executor through a :class:`Modulation`, so the weights are never
copied or edited; masks m in [0, 1] per neuron start at 1. Each iteration draws delta, xi ~
U(-eps, eps), takes one signed-gradient ascent step of size eps on the clean loss (lines 5-7),
projects to [-eps, eps] (lines 8-9; ``noise_bound="none"`` skips it, as the authors' code does),
then one SGD step on

    alpha * L(m * w, b) + (1 - alpha) * L((m + delta) * w, (1 + xi) * b)

and projects m onto [0, 1] (lines 10-11). While it runs, BatchNormalization normalises with each
batch's own statistics (``bn_stats="batch"``, the authors' ``model.train()``) or the stored ones.
``renorm="conv"`` gives conv units that no BatchNorm follows (a folded file) a normalisation
estimated on the clean images (see ``Modulation``), normalising with batch or clean statistics as
``bn_stats`` says.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .bnstats import channel_moments
from .executor import OnnxExecutor
from .modulate import Modulation
from .neurons import NeuronInventory


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless mini-batch indices: a fresh seeded permutation each pass over the data."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < min(batch_size, n):
                break  # drop the ragged tail so every step sees a full batch
            yield idx


def conv_statistics(executor: OnnxExecutor, layers, x: torch.Tensor, eps: float = 1e-5,
                    batch_size: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and standard deviation of each conv layer's output on ``x`` (no modulation)."""
    if not layers:
        return {}
    moments = channel_moments(executor, [executor.node_output(l.name) for l in layers], x, batch_size)
    out = {}
    for layer in layers:
        mean, var, _ = moments[executor.node_output(layer.name)]
        out[layer.name] = (mean.float(), torch.sqrt(var + eps).float())
    return out


def optimize_masks(executor: OnnxExecutor, inventory: NeuronInventory, x: torch.Tensor, y: torch.Tensor, *,
                   eps: float, alpha: float, lr: float, momentum: float, iterations: int, batch_size: int,
                   steps: int = 1, include_head: bool = False, layers: str = "all", bn_stats: str = "batch",
                   noise_bound: str = "project", renorm: str = "none", seed: int = 0,
                   callback=None) -> tuple[Modulation, dict]:
    """Optimise per-neuron masks on the labeled images ``x``, ``y`` (model input, on the executor's
    device); return the modulation holding the continuous masks and a log (seconds, loss curve)."""
    if not 0 <= alpha <= 1:
        raise SpecError(f"ANP alpha must be in [0, 1], got {alpha}")
    if eps < 0:
        raise SpecError(f"ANP eps must be >= 0, got {eps}")
    units = inventory.select_units(layers, include_head=include_head)
    if not units:
        raise SpecError(inventory.no_units_reason("ANP"))
    if bn_stats not in ("running", "batch"):
        raise SpecError(f"bn_stats must be 'running' or 'batch', got {bn_stats!r}")
    if noise_bound not in ("project", "none"):
        raise SpecError(f"noise_bound must be 'project' or 'none', got {noise_bound!r}")
    if renorm not in ("none", "conv"):
        raise SpecError(f"renorm must be 'none' or 'conv', got {renorm!r}")
    bound = eps if noise_bound == "project" else None
    ex = executor
    stats = conv_statistics(ex, [u for u in units if u.op == "Conv"], x) if renorm == "conv" else {}
    mod = Modulation(ex, units, renorm=stats, renorm_batch=bn_stats == "batch")
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=mod.mask.device).manual_seed(seed)
    mod.mask.requires_grad_(True)
    opt = torch.optim.SGD([mod.mask], lr=lr, momentum=momentum)
    feed = batches(len(x), min(batch_size, len(x)), gen)
    curve, t0 = [], time.perf_counter()
    previous = ex.batchnorm_mode(bn_stats)
    try:
        with mod:
            for it in range(iterations):
                idx = next(feed).to(x.device)
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                if eps > 0:
                    with torch.no_grad():
                        mod.delta.uniform_(-eps, eps, generator=dev_gen)
                        mod.xi.uniform_(-eps, eps, generator=dev_gen)
                    mod.perturb = True
                    for _ in range(steps):
                        mod.delta.requires_grad_(True)
                        mod.xi.requires_grad_(True)
                        loss = F.cross_entropy(ex(xb), yb)
                        g_delta, g_xi = mod.perturbation_grads(loss)
                        mod.delta.requires_grad_(False)
                        mod.xi.requires_grad_(False)
                        mod.signed_step(g_delta, g_xi, eps / steps, bound)
                    loss_rob = F.cross_entropy(ex(xb), yb)
                    # backward now, so the perturbed pass's graph is freed before the natural one is
                    # built: the same gradient (the two terms add), half the activations held at once
                    ((1 - alpha) * loss_rob).backward()
                else:
                    loss_rob = torch.zeros((), device=xb.device)
                mod.perturb = False
                loss_nat = F.cross_entropy(ex(xb), yb)
                (alpha * loss_nat).backward()
                opt.step()
                with torch.no_grad():
                    mod.mask.clamp_(0.0, 1.0)
                if it % 50 == 0 or it == iterations - 1:
                    curve.append({"iteration": it, "loss_nat": float(loss_nat.detach()),
                                  "loss_rob": float(loss_rob.detach())})
                if callback is not None:
                    callback(it, mod)
    finally:
        ex.batchnorm_mode(previous)
    mod.mask.requires_grad_(False)
    seconds = time.perf_counter() - t0
    return mod, {"seconds": seconds, "iterations_per_second": iterations / max(seconds, 1e-9), "curve": curve}
