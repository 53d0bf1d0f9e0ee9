"""TrojanNN (Liu et al., NDSS 2018): a patch optimised to fire chosen neurons, then poisoned retraining.

``train`` (1) trains the model on the attacker's clean images for the training epochs; (2) picks
``neurons`` neurons of the penultimate layer (the input of the last Linear layer, the classifier
head); (3) optimises the patch pixels so that a black image carrying the patch drives those
neurons' activations to ``target_value``; (4) poisons ``spec.rate`` of the eligible images with
that patch (dirty labels, all-to-one or all-to-all) and fine-tunes the model on them for
``finetune_epochs``. The learnt patch is stored in the params.

Neuron choice: the paper and TrojanZoo rank neurons by their connection weights (TrojanZoo: the
summed absolute weights each neuron sends to the next layer, here the head, which is a Linear
layer in every architecture). A small corner patch cannot move many of those neurons at all (a
ReLU unit that the patch leaves at 0 gets no gradient, and the "optimised" patch stays random),
so the ``candidates`` best-connected neurons are probed: a patch is fitted to each alone for a
few steps and the ``neurons`` that reach the highest activation are kept.

Defaults and their sources: 2 neurons, target activation 100, patch pixels parameterised as
``(tanh(w) + 1) / 2`` on a black background, Adam with learning rate 0.1 under cosine annealing
(TrojanZoo's implementation; 1000 steps there, 500 here: the activations have converged well
before on the small models). A 3x3 patch made "from the fully connected layer", poisoned like
BadNets (WIPER, appendix A.3), bottom-right with a 1-px margin as ``badnets``. Fine-tuning lasts
as long as the clean training by default (half of it left the 3x3 MNIST backdoor unlearnt).

Params:

* ``size`` (3), ``position`` ("bottom-right"; also top-left, top-right, bottom-left), ``margin``
  (1): where the square patch goes, as for ``badnets``.
* ``neurons`` (2), ``candidates`` (32), ``target_value`` (100.0), ``trigger_steps`` (500),
  ``trigger_lr`` (0.1).
* ``finetune_epochs``: epochs of poisoned fine-tuning (default 0: as many as the training epochs).
* ``trigger``: set by training: the patch as nested lists (C x size x size) of values in [0, 1]
  on the 8-bit grid; ``neuron_idx``: set by training, the chosen neurons (for the record).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.images import ImageSet
from ..errors import DataError, SpecError
from ..util import first_line
from ..options import float_param, int_param
from .registry import Attack, register_attack
from ..training.resume import aside, stage
from ..training.train import TrainSettings, train_classifier

CORNERS = ("bottom-right", "top-left", "top-right", "bottom-left")
PROBE_STEPS = 50  # optimisation steps of the patches that rank the candidate neurons


@register_attack("trojannn")
class TrojanNN(Attack):
    """Stamp a patch optimised to excite chosen penultimate-layer neurons; retrain with dirty labels."""

    summary = "TrojanNN: 3x3 patch optimised to fire 2 penultimate neurons, then poisoned fine-tuning"
    PARAMS = {
        "size": (3, "patch side in pixels"),
        "position": ("bottom-right", "bottom-right, top-left, top-right or bottom-left"),
        "margin": (1, "pixels between the patch and the image border"),
        "neurons": (2, "penultimate-layer neurons the patch is optimised to excite"),
        "candidates": (32, "best-connected neurons probed for how far a patch can excite them"),
        "target_value": (100.0, "activation the chosen neurons are driven to"),
        "trigger_steps": (500, "Adam steps optimising the patch"),
        "trigger_lr": (0.1, "Adam learning rate of the patch optimisation"),
        "finetune_epochs": (0, "epochs of poisoned fine-tuning (0: as many as the training epochs)"),
        "trigger": ([], "set by training: the patch, C x size x size values in [0, 1]"),
        "neuron_idx": ([], "set by training: the chosen neurons"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.size = int_param("trojannn", "size", self.params["size"], minimum=1)
        self.margin = int_param("trojannn", "margin", self.params["margin"], minimum=0)
        self.position = str(self.params["position"])
        if self.position not in CORNERS:
            raise SpecError(f"trojannn position {self.position!r} is not one of {', '.join(CORNERS)}")
        self.neurons = int_param("trojannn", "neurons", self.params["neurons"], minimum=1)
        self.candidates = int_param("trojannn", "candidates", self.params["candidates"], minimum=1)
        self.target_value = float_param("trojannn", "target_value", self.params["target_value"], minimum=0.0)
        self.trigger_steps = int_param("trojannn", "trigger_steps", self.params["trigger_steps"], minimum=1)
        self.trigger_lr = float_param("trojannn", "trigger_lr", self.params["trigger_lr"], minimum=0.0, open_min=True)
        self.finetune_epochs = int_param("trojannn", "finetune_epochs", self.params["finetune_epochs"], minimum=0)
        self._trigger: np.ndarray | None = None
        if self.params["trigger"]:
            self._trigger = self._parse_trigger(self.params["trigger"])

    def _parse_trigger(self, value: Any) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise SpecError("trojannn trigger must be nested lists of numbers (C x size x size)") from None
        if arr.ndim != 3 or arr.shape[1:] != (self.size, self.size):
            raise SpecError(f"trojannn trigger must be C x {self.size} x {self.size} values, got shape {arr.shape}")
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise SpecError("trojannn trigger values must be in [0, 1]")
        return arr

    # ------------------------------------------------------------------ trigger

    def origin(self, height: int, width: int) -> tuple[int, int]:
        """Top-left pixel (row, col) of the patch."""
        s, m = self.size, self.margin
        row = m if self.position.startswith("top") else height - s - m
        col = m if self.position.endswith("left") else width - s - m
        return row, col

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        c, h, w = shape
        if self.size + self.margin > min(h, w):
            raise SpecError(f"trojannn {self.size}x{self.size} patch with margin {self.margin} does not fit "
                            f"in the {h}x{w} images")
        if self._trigger is not None and self._trigger.shape[0] != c:
            raise SpecError(f"trojannn trigger has {self._trigger.shape[0]} channels, the images {c}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        self.check_shape(x.shape[1:])
        if self._trigger is None:
            raise SpecError("trojannn has no trigger yet: it is learnt by training (or comes from the spec "
                            "of a trained model)")
        row, col = self.origin(x.shape[2], x.shape[3])
        out = x.copy()
        out[:, :, row : row + self.size, col : col + self.size] = self._trigger
        return out

    # ------------------------------------------------------------------ training

    def excite(self, model: nn.Module, shape: tuple[int, int, int], neurons: torch.Tensor,
               steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Fit one patch per row of ``neurons`` (B x n head-input indices) that drives those neurons of a
        black image carrying the patch to ``target_value`` (Adam on ``(tanh(w) + 1) / 2``, cosine schedule).

        Returns the patches rounded to the 8-bit grid, (B, C, size, size), and the activations they
        reach, (B, n).
        """
        c, h, w = shape
        head = last_linear(model)
        device = head.weight.device
        feats: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, inputs: feats.append(inputs[0]))
        was_training = model.training
        model.eval()
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        row, col = self.origin(h, w)
        pad = (col, w - col - self.size, row, h - row - self.size)
        neurons = neurons.to(device)
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randn(len(neurons), c, self.size, self.size, generator=gen).to(device).requires_grad_(True)

        def activation(patch: torch.Tensor) -> torch.Tensor:
            feats.clear()
            model(torch.nn.functional.pad(patch, pad))  # black image with the patch in place
            return feats[-1].reshape(len(patch), -1).gather(1, neurons).abs()

        try:
            opt = torch.optim.Adam([raw], lr=self.trigger_lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            for _ in range(steps):
                loss = ((activation((torch.tanh(raw) + 1) / 2) - self.target_value) ** 2).sum()
                opt.zero_grad()
                loss.backward(inputs=[raw])
                opt.step()
                sched.step()
            patches = np.rint(((torch.tanh(raw.detach()) + 1) / 2).cpu().numpy() * 255.0) / 255.0
            with torch.no_grad():
                reached = activation(torch.from_numpy(patches.astype(np.float32)).to(device)).cpu().numpy()
        finally:
            hook.remove()
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            model.train(was_training)
        return patches.astype(np.float32), reached

    def select_neurons(self, model: nn.Module, shape: tuple[int, int, int]) -> np.ndarray:
        """The ``neurons`` penultimate neurons to excite: of the ``candidates`` with the largest summed
        absolute weights into the head, those a patch fitted to each alone excites most."""
        head = last_linear(model)
        if self.neurons > head.in_features:
            raise SpecError(f"trojannn neurons {self.neurons} exceeds the {head.in_features} penultimate neurons")
        strength = head.weight.detach().abs().sum(0)
        n_cand = min(head.in_features, max(self.neurons, self.candidates))
        cand = strength.argsort(descending=True)[:n_cand].cpu()
        _, reached = self.excite(model, shape, cand[:, None], min(self.trigger_steps, PROBE_STEPS), self.spec.seed)
        order = np.argsort(-reached[:, 0], kind="stable")  # ties keep the connection-strength order
        return cand.numpy()[order[: self.neurons]]

    def optimise_trigger(self, model: nn.Module, shape: tuple[int, int, int], idx: np.ndarray) -> dict[str, Any]:
        """Fit the patch to neurons ``idx`` and store it (8-bit grid) in ``params["trigger"]``."""
        self.check_shape(shape)
        patches, reached = self.excite(model, shape, torch.as_tensor(np.asarray(idx)[None], dtype=torch.long),
                                       self.trigger_steps, self.spec.seed + 1)
        self.params["trigger"] = [[[round(float(v), 6) for v in r] for r in ch] for ch in patches[0]]
        self._trigger = self._parse_trigger(self.params["trigger"])  # exactly what evaluation will stamp
        self.params["neuron_idx"] = [int(i) for i in idx]
        return {"neurons": self.params["neuron_idx"], "activation": [round(float(a), 4) for a in reached[0]]}

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """Train clean, pick neurons, optimise the patch, poison, fine-tune; returns the combined log.

        The clean model and its trigger are a stage of the training's checkpoint (the clean
        training keeps a checkpoint beside it), and the fine-tuning uses the checkpoint itself: an
        interrupted run resumes in whichever part it stopped."""
        self.check_shape(clean.shape)
        state, resumed = stage(settings.checkpoint, "trojan", lambda: self._prepare(model, clean, settings))
        if resumed:
            try:
                model.load_state_dict(state["model"])
                self._trigger = self._parse_trigger(state["trigger"])
            except (RuntimeError, SpecError) as exc:
                raise DataError(f"the trojan stage of {settings.checkpoint} does not fit this model: "
                                f"{first_line(exc)}") from None
            self.params.update(trigger=state["trigger"], neuron_idx=state["info"]["neurons"])
        clean_log = state["clean_log"]
        start = time.perf_counter()
        poisoned, pidx = self.poison(clean)
        poison_seconds = time.perf_counter() - start
        epochs = self.finetune_epochs or settings.epochs
        log = train_classifier(model, poisoned, **settings.kwargs(epochs=epochs))
        log["n_poisoned"] = int(len(pidx))
        log["loss"] = clean_log["loss"] + log["loss"]
        log["train_acc"] = clean_log["train_acc"] + log["train_acc"]
        log["epochs"] = clean_log["epochs"] + epochs
        log["steps"] = clean_log["steps"] + log["steps"]
        log["seconds"] += clean_log["seconds"] + state["seconds"] + poison_seconds
        # where the run was resumed, counted over the combined epochs: in the clean training, or at
        # or after the start of the fine-tuning when the clean model was kept
        if log["resumed_at"] or resumed:
            log["resumed_at"] += clean_log["epochs"]
        else:
            log["resumed_at"] = clean_log.get("resumed_at", 0)
        log["attack_notes"] = {"trojan": {**state["info"], "finetune_epochs": epochs}}
        return log

    def _prepare(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """Train ``model`` clean, pick its neurons and fit the trigger; the trained weights, the
        trigger and their records."""
        clean_log = train_classifier(model, clean, **settings.kwargs(checkpoint=aside(settings.checkpoint, "clean.pt")))
        start = time.perf_counter()
        idx = self.select_neurons(model, clean.shape)
        info = self.optimise_trigger(model, clean.shape, idx)
        return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "trigger": self.params["trigger"], "info": info, "seconds": time.perf_counter() - start,
                "clean_log": {k: clean_log[k]
                              for k in ("loss", "train_acc", "epochs", "steps", "seconds", "resumed_at")}}


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` module (its classifier head); SpecError if it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SpecError(f"trojannn needs a model with a Linear classifier head; {type(model).__name__} has none")
    return linears[-1]
