"""Seeded SGD training of a classifier on an ImageSet, and batched prediction."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageSet
from ..errors import DataError, SpecError
from .resume import load_checkpoint, save_checkpoint

SCHEDULES = ("cosine", "onecycle", "constant")
AUGMENTS = ("crop-flip",)


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained: the keyword arguments of :func:`train_classifier`, as one value."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = False
    checkpoint: str | None = None

    def kwargs(self, **override: Any) -> dict[str, Any]:
        """Keyword arguments for ``train_classifier``, with ``override`` applied."""
        return {**asdict(self), **override}


def train_classifier(
    model: nn.Module,
    images: ImageSet,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    seed: int = 0,
    device: str | None = None,
    augment: str | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    step: "StepFn | None" = None,
) -> dict[str, Any]:
    """Train ``model`` in place with SGD + cross-entropy; return a log and leave it in eval mode.

    ``lr`` 0.01 suits the MNIST CNN, 0.1 the small ResNet. ``schedule`` "cosine" anneals the
    learning rate per step to 0, "onecycle" warms up then anneals (OneCycleLR), "constant" keeps
    it. ``augment`` "crop-flip" (for RGB data) takes random 4-px-padded crops and horizontal flips.
    Shuffling and augmentation are seeded with ``seed``; seed the weight init before building
    the model. The log holds the mean loss and training accuracy per epoch and the seconds taken.

    ``checkpoint``: a file where the state after each epoch (model, optimiser, schedule, random
    generators, log) is saved atomically; a later call with the same file and arguments resumes
    after the last finished epoch and gives the same model as an uninterrupted run. The caller
    deletes it when done (``resume.discard``).

    ``step``: what one batch computes (default :func:`cross_entropy_step`). It gets the model, the
    batch's images (not yet augmented), labels, their indices in ``images`` and the seeded
    augmentation to apply, and returns (loss, logits, extras); each extra term's per-epoch mean
    is logged under its name. Attacks with their own objective (adaptive-reg) plug in here.
    """
    if epochs < 1 or batch_size < 1:
        raise SpecError(f"epochs and batch size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if schedule not in SCHEDULES:
        raise SpecError(f"learning-rate schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if augment is not None and augment not in AUGMENTS:
        raise SpecError(f"augmentation {augment!r} is not one of {', '.join(AUGMENTS)} (or none)")
    if len(images) == 0:
        raise DataError(f"no training images in {images.source or 'the given set'}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model.to(device)
    x_all = torch.from_numpy(np.ascontiguousarray(images.x, dtype=np.float32)).to(device)
    y_all = torch.from_numpy(images.y.astype(np.int64)).to(device)
    check_label_range(model, x_all, images)

    steps_per_epoch = math.ceil(len(images) / batch_size)
    total_steps = epochs * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, schedule, lr, total_steps)

    step = step or cross_entropy_step
    log: dict[str, Any] = {"loss": [], "train_acc": [], "epochs": epochs, "steps": total_steps, "resumed_at": 0}
    parts = {"model": model, "opt": opt, "sched": sched}
    first_epoch, seconds_before = load_checkpoint(checkpoint, parts, rng, gen, log) or (0, 0.0)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=first_epoch * steps_per_epoch, desc="training", unit="step")
    model.train()
    for epoch in range(first_epoch, epochs):
        order = torch.from_numpy(rng.permutation(len(images))).to(device)
        loss_sum, correct = 0.0, 0
        extra_sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss, logits, extras = step(model, x_all[idx], y_all[idx], idx, lambda x: augment_batch(x, augment, gen))
            yb = y_all[idx]
            for name, value in extras.items():
                extra_sums[name] = extra_sums.get(name, 0.0) + float(value) * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
            if bar is not None:
                bar.update(1)
        log["loss"].append(loss_sum / len(images))
        log["train_acc"].append(100.0 * correct / len(images))
        for name, total in extra_sums.items():
            log.setdefault(name, []).append(total / len(images))
        if checkpoint is not None and epoch + 1 < epochs:
            save_checkpoint(checkpoint, epoch + 1, seconds_before + time.perf_counter() - start,
                            parts, rng, gen, log)
    if bar is not None:
        bar.close()
    model.eval()
    log["seconds"] = seconds_before + time.perf_counter() - start
    log["device"] = device
    return log


StepFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]],
    tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
]


def cross_entropy_step(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor,
                       augment: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The default training step: augment, forward, cross-entropy."""
    logits = model(augment(xb))
    return F.cross_entropy(logits, yb), logits, {}


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, lr: float, total_steps: int,
                   cycle_momentum: bool = True) -> Any:
    """The per-step learning-rate scheduler of ``schedule`` for ``opt`` (None for "constant").

    ``cycle_momentum`` False keeps one-cycle from also cycling the momentum (or Adam's beta1)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                   cycle_momentum=cycle_momentum)
    return None


def augment_batch(x: torch.Tensor, augment: str | None, gen: torch.Generator) -> torch.Tensor:
    """The batch ``x`` augmented as ``augment`` says ("crop-flip", "crop" or None), drawing from ``gen``."""
    if augment in ("crop-flip", "crop"):
        return _crop_flip(x, gen, flip=augment == "crop-flip")
    return x


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` (put in eval mode) on float32 NCHW images, as a numpy array."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)).to(device)
            outs.append(model(xb).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def check_label_range(model: nn.Module, x_all: torch.Tensor, images: ImageSet) -> None:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        n_out = int(model(x_all[:1]).shape[1])
    model.train(was_training)
    top = int(images.y.max())
    if top >= n_out:
        raise DataError(f"labels of {images.source or 'the training set'} go up to {top} "
                        f"but the model has {n_out} outputs")


def _crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crops of the zero-padded batch (shift up to ``pad`` px) and, with ``flip``, random
    horizontal flips."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    if not flip:
        return out
    flipped = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flipped[:, None, None, None], out.flip(3), out)
