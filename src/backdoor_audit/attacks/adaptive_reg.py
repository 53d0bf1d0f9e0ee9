"""Regularisation-based adaptive attack against EP/BNP (EP/BNP paper, appendix G.2, eq. 4).

BadNets (same trigger params) trained with an extra term that pulls the pre-activations of the
poisoned images towards those of the same images without the trigger::

    L = E_(x,y)~D [ CE(y, f(delta(x))) ]  +  lambda * sum_l sum_k E_x [ (phi_k^l(x) - phi_k^l(delta(x)))^2 ]

(eq. 4; phi / phi-hat are the benign / poisoned pre-activations of neuron k in layer l).

What is computed, per training step:

* The cross-entropy is the mean over the (poisoned) training batch, exactly as ``train_classifier``.
* The pairs: each poisoned image in the batch is paired with its own clean original (the image
  before the trigger was stamped). The originals are appended to the batch, so one forward pass
  (in training mode) gives both; they get the same crop/flip as their poisoned twin when the run
  augments. They only enter the penalty, not the cross-entropy (they do take part in the
  BatchNorm batch statistics of that pass).
* The pre-activations: the inputs of every BatchNorm layer when the model has BatchNorm (the
  quantities whose statistics BN stores and BNP compares, the x_k of G.1); for models without
  BatchNorm, the outputs of every Conv and Linear layer except the one that gives the logits.
* A neuron is a channel (conv feature map) or a unit (linear layer). For a conv channel the
  squared difference is averaged over its spatial positions; it is summed over the neurons of a
  layer and over layers, and averaged over the poisoned images of the batch (E_x). Gradients flow
  through both sides of the difference, as in eq. 4. A batch without poisoned images adds 0.
* ``lambda`` defaults to 0.01: the appendix tries 1, 0.1, 0.01 and 0.001 and reports that 1 and
  0.1 do not train (NaN) while 0.01 keeps ACC and ASR (Table 8). ``lambda`` 0 skips the pairs and
  gives exactly the BadNets model.

Training is ``train_classifier`` with its own step (same seeding, shuffling, augmentation draws,
optimiser, schedule and checkpoints); the log adds the per-epoch mean cross-entropy ``ce`` and
penalty ``reg``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageSet
from ..errors import DataError, SpecError
from .badnets import BadNets
from ..options import float_param
from .registry import register_attack
from ..training.train import TrainSettings, train_classifier

DEFAULT_LAMBDA = 0.01


@register_attack("adaptive-reg")
class AdaptiveReg(BadNets):
    """BadNets with a penalty on the pre-activation gap between poisoned images and their clean originals."""

    summary = "BadNets trained to keep poisoned pre-activations close to the clean ones (EP/BNP G.2)"
    PARAMS = {
        **BadNets.PARAMS,
        "lambda": (DEFAULT_LAMBDA, "weight of the pre-activation penalty (>= 0; 0 is plain BadNets)"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.lam = float_param("adaptive-reg", "lambda", self.params["lambda"], minimum=0.0)

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        poisoned, idx = self.poison(clean)
        is_poisoned = np.zeros(len(clean), dtype=bool)
        is_poisoned[idx] = True
        log = train_with_gap_penalty(model, poisoned, clean.x, is_poisoned, self.lam, **settings.kwargs())
        log["n_poisoned"] = int(len(idx))
        return log


def preactivation_sites(model: nn.Module, example: torch.Tensor) -> tuple[str, list[tuple[str, nn.Module]]]:
    """Where the pre-activations are taken: ("bn-input", BatchNorm layers) or ("output", hidden Conv/Linear layers).

    ``example`` is an input batch (on the model's device): one eval-mode pass finds the Conv/Linear
    layers whose output is the model's output (the logits), which are left out.
    """
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        return "bn-input", bns
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=n: outputs.__setitem__(name, out)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    hidden = [(n, m) for n, m in layers if n in outputs and outputs[n] is not logits]
    if not hidden:
        raise SpecError(f"adaptive-reg found no BatchNorm and no hidden Conv or Linear layer in {type(model).__name__}")
    return "output", hidden


class _Recorder:
    """Forward hooks keeping the pre-activations of the last pass."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.kind, self.sites = preactivation_sites(model, example)
        self.acts: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, module in self.sites:
            if self.kind == "bn-input":
                self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            else:
                self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.acts[name] = inputs[0]

        return record

    def _post(self, name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.acts[name] = output

        return record

    def gap(self, poisoned_rows: torch.Tensor, n: int) -> torch.Tensor:
        """Eq. 4's penalty for the last pass over ``cat([batch (n rows), clean twins of batch[poisoned_rows]])``."""
        total = None
        for act in self.acts.values():
            d = (act[:n][poisoned_rows] - act[n:]) ** 2
            if d.dim() > 2:
                d = d.flatten(2).mean(2)  # a conv neuron's map: mean over positions
            term = d.flatten(1).sum(1).mean(0)
            total = term if total is None else total + term
        if total is None:
            raise SpecError(f"adaptive-reg: none of the {self.kind} layers it regularises ran in the forward pass")
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.acts = {}


def preactivation_gap(model: nn.Module, x_poisoned: np.ndarray, x_clean: np.ndarray, batch_size: int = 256) -> float:
    """Eq. 4's penalty (sum over layers and neurons, mean over images) of ``model`` in eval mode.

    ``x_poisoned[i]`` is paired with ``x_clean[i]``; the same sites and averaging as in training.
    """
    if len(x_poisoned) != len(x_clean) or len(x_clean) == 0:
        raise DataError(f"need as many poisoned as clean images (and some), got {len(x_poisoned)} and {len(x_clean)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rec = _Recorder(model, torch.from_numpy(np.ascontiguousarray(x_clean[:1], dtype=np.float32)).to(device))
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(x_clean), batch_size):
                xp = torch.from_numpy(np.ascontiguousarray(x_poisoned[start : start + batch_size], dtype=np.float32))
                xc = torch.from_numpy(np.ascontiguousarray(x_clean[start : start + batch_size], dtype=np.float32))
                n = len(xp)
                model(torch.cat([xp, xc]).to(device))
                total += float(rec.gap(torch.ones(n, dtype=torch.bool, device=device), n)) * n
    finally:
        rec.close()
        model.train(was_training)
    return total / len(x_clean)


def train_with_gap_penalty(
    model: nn.Module,
    images: ImageSet,
    clean_x: np.ndarray,
    is_poisoned: np.ndarray,
    lam: float,
    **train: Any,
) -> dict[str, Any]:
    """``train_classifier`` on the poisoned set ``images`` plus ``lam`` times eq. 4's penalty.

    ``clean_x[i]`` is the clean original of ``images.x[i]``; ``is_poisoned[i]`` marks the images
    that carry the trigger (only they are paired). ``train`` are ``train_classifier``'s options;
    the log adds per-epoch ``ce`` and ``reg`` means and ``lambda``.
    """
    if clean_x.shape != images.x.shape or is_poisoned.shape != (len(images),):
        raise DataError(f"clean originals {clean_x.shape} / poison flags {is_poisoned.shape} do not match the "
                        f"training images {images.x.shape}")
    if lam == 0:
        log = train_classifier(model, images, **train)
        log["lambda"] = lam
        return log
    device = train.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    twins = torch.from_numpy(np.ascontiguousarray(clean_x, dtype=np.float32)).to(device)
    flags = torch.from_numpy(np.asarray(is_poisoned, dtype=bool)).to(device)
    rec = _Recorder(model, twins[:1])
    channels = twins.shape[1]

    def step(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor, augment: Any):
        pb = flags[idx]
        if not bool(pb.any()):
            logits = model(augment(xb))
            ce = F.cross_entropy(logits, yb)
            return ce, logits, {"ce": ce.detach(), "reg": torch.zeros(())}
        # one augmentation call on [poisoned | clean] stacked along channels: the same draws as
        # train_classifier's, and the same crop/flip for an image and its clean twin
        both = augment(torch.cat([xb, twins[idx]], dim=1))
        n = len(idx)
        rec.acts = {}
        logits = model(torch.cat([both[:, :channels], both[:, channels:][pb]]))[:n]
        ce = F.cross_entropy(logits, yb)
        reg = rec.gap(pb, n)
        return ce + lam * reg, logits, {"ce": ce.detach(), "reg": reg.detach()}

    try:
        log = train_classifier(model, images, step=step, **train)
    finally:
        rec.close()
    log["lambda"] = lam
    return log
