"""Per-neuron masks and ANP perturbations applied by the executor at run time (no copies).

For every unit layer (see ``NeuronInventory.units``) the executor reads

    weight_k -> (m_k + delta_k) * weight_k        (conv/linear weight, or BN scale gamma_k)
    bias_k   -> (1 + xi_k) * bias_k               (conv/linear bias, or BN shift beta_k)

(ANP Eq. 3-8). ``m``, ``delta`` and ``xi`` are three flat tensors over all units' neurons, so an
optimiser, a sign step or a projection is one tensor operation. ``perturb`` switches delta/xi
on and off; ``bias_follows_mask`` makes a 0/1 mask also zero the bias (the "zero-bias"
pruning semantics) instead of keeping it (ANP's choice).

``renorm`` gives folded conv layers (BatchNorm fused into the conv by the exporter) the BN back
for the optimisation: with the clean-set mean mu_k and deviation s_k of channel k's output o_k,
the layer outputs ``(m_k + delta_k) * s_k * z_k + (1 + xi_k) * mu_k`` with z_k the output
normalised by the batch's own statistics (``renorm_batch``, as BN in train mode) or by mu_k, s_k.
The mask and the perturbations then act after a normalisation, as they act on a kept BN's scale
and shift (ANP's "Adaptation to Batch Normalization"), instead of being renormalised away or
compounding through the layers. A pruned channel outputs mu_k: in the file, weight 0 and bias mu_k.
"""

from __future__ import annotations

import numpy as np
import torch

from .executor import OnnxExecutor
from .neurons import Layer, weight_view_shape


class Modulation:
    def __init__(self, executor: OnnxExecutor, layers: list[Layer], *, bias_follows_mask: bool = False,
                 renorm: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, renorm_batch: bool = True):
        self.executor = executor
        self.layers = list(layers)
        self.offsets: dict[str, tuple[int, int]] = {}
        n = 0
        for layer in self.layers:
            self.offsets[layer.name] = (n, n + layer.size)
            n += layer.size
        dev = executor.device
        self.mask = torch.ones(n, device=dev)
        self.delta = torch.zeros(n, device=dev)
        self.xi = torch.zeros(n, device=dev)
        self.perturb = False
        self.bias_follows_mask = bias_follows_mask
        self.renorm = dict(renorm or {})
        self.renorm_batch = renorm_batch
        bad = [l.name for l in self.layers if l.name in self.renorm and l.op != "Conv"]
        if bad:
            raise ValueError(f"renormalisation is for Conv layers only, not {', '.join(bad)}")
        self._installed = False

    @property
    def size(self) -> int:
        return self.mask.numel()

    # -- run-time coefficients ------------------------------------------------------------
    def _weight_fn(self, layer: Layer):
        lo, hi = self.offsets[layer.name]

        def fn(w: torch.Tensor) -> torch.Tensor:
            coeff = self.mask[lo:hi]
            if self.perturb:
                coeff = coeff + self.delta[lo:hi]
            return w * coeff.view(weight_view_shape(layer, w.dim()))

        return fn

    def _bias_fn(self, layer: Layer):
        lo, hi = self.offsets[layer.name]

        def fn(b: torch.Tensor) -> torch.Tensor:
            coeff = self.mask[lo:hi] if self.bias_follows_mask else None
            if self.perturb:
                pert = 1 + self.xi[lo:hi]
                coeff = pert if coeff is None else coeff * pert
            return b if coeff is None else b * coeff

        return fn

    def _renorm_fn(self, layer: Layer):
        lo, hi = self.offsets[layer.name]
        mu, sd = self.renorm[layer.name]

        def fn(o: torch.Tensor) -> torch.Tensor:
            shape = [1, -1] + [1] * (o.dim() - 2)
            if self.renorm_batch:
                dims = [0] + list(range(2, o.dim()))
                z = (o - o.mean(dim=dims).view(shape)) * torch.rsqrt(o.var(dim=dims, unbiased=False).view(shape) + 1e-5)
            else:
                z = (o - mu.view(shape)) / sd.view(shape)
            scale = self.mask[lo:hi]
            shift = self.mask[lo:hi] if self.bias_follows_mask else torch.ones_like(scale)
            if self.perturb:
                scale = scale + self.delta[lo:hi]
                shift = shift * (1 + self.xi[lo:hi])
            return (scale * sd).view(shape) * z + (shift * mu).view(shape)

        return fn

    def install(self) -> "Modulation":
        for layer in self.layers:
            if layer.name in self.renorm:
                self.executor.set_output_modulator(layer.name, self._renorm_fn(layer))
                continue
            self.executor.set_modulator(layer.weight_reader, layer.weight_input, self._weight_fn(layer))
            if layer.bias is not None:
                self.executor.set_modulator(layer.bias_node, layer.bias_input, self._bias_fn(layer))
        self._installed = True
        return self

    def remove(self) -> None:
        for layer in self.layers:
            if layer.name in self.renorm:
                self.executor.set_output_modulator(layer.name, None)
                continue
            self.executor.set_modulator(layer.weight_reader, layer.weight_input, None)
            if layer.bias is not None:
                self.executor.set_modulator(layer.bias_node, layer.bias_input, None)
        self._installed = False

    def __enter__(self) -> "Modulation":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    def perturbation_grads(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d loss / d delta and d loss / d xi. A model none of whose masked layers has a bias (the
        default exporter drops all-zero conv biases) never reads xi: its gradient is zero, not an
        error."""
        g_delta, g_xi = torch.autograd.grad(loss, [self.delta, self.xi], allow_unused=True)
        return (torch.zeros_like(self.delta) if g_delta is None else g_delta,
                torch.zeros_like(self.xi) if g_xi is None else g_xi)

    def signed_step(self, g_delta: torch.Tensor, g_xi: torch.Tensor, step: float, eps: float | None) -> None:
        """Ascend delta and xi by ``step`` along the gradients' signs, then project onto
        [-eps, eps] (ANP Alg. 1 lines 6-9; the probe's PGD steps); ``eps=None`` skips the
        projection, as the ANP authors' code does."""
        with torch.no_grad():
            self.delta.add_(step * g_delta.sign())
            self.xi.add_(step * g_xi.sign())
            if eps is not None:
                self.delta.clamp_(-eps, eps)
                self.xi.clamp_(-eps, eps)

    # -- views ------------------------------------------------------------------------------
    def per_layer(self, flat: torch.Tensor) -> dict[str, np.ndarray]:
        """Split a flat per-neuron tensor into ``{layer name: array}``."""
        flat = flat.detach().cpu().numpy()
        return {name: flat[lo:hi].copy() for name, (lo, hi) in self.offsets.items()}

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Load per-layer mask values (missing layers stay 1)."""
        with torch.no_grad():
            self.mask.fill_(1.0)
            for name, values in masks.items():
                lo, hi = self.offsets[name]
                self.mask[lo:hi] = torch.as_tensor(np.asarray(values), dtype=self.mask.dtype,
                                                   device=self.mask.device)

    def neuron(self, index: int) -> tuple[str, int]:
        """The neuron id (layer name, channel) of a flat index."""
        for name, (lo, hi) in self.offsets.items():
            if lo <= index < hi:
                return name, index - lo
        raise IndexError(index)
