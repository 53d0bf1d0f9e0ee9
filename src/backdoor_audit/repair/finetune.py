"""Training the suspect model's own weights on the defender's data, for the methods that do
(fine-tuning, fine-pruning, trigger unlearning, WIPER): a seeded SGD loop over the executor.

Images are augmented in pixel space and then preprocessed (``ctx.preprocess``), so augmentation
and a trigger stamped for unlearning act on pixels whatever the model's normalisation. Only
``ctx.trainable()`` weights move (never BatchNorm running statistics, which follow ``bn_mode``).
:class:`WeightEdit` keeps the executor as it was: a method trains inside it and returns what
changed as ``new_weights``, and the repair writes those back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..graph.masks import batches
from ..graph.unfold import VirtualBatchNorm, foldable_convs
from ..options import Option
from ..training.train import augment_batch, make_scheduler
from .base import RepairContext

#: BatchNorm while a method trains: PyTorch's train mode (batch statistics, running ones updated), as
#: the authors' code of every fine-tuning defence here runs (``model.train()``)
BN_MODE = Option("bn_mode", str, "update", "BatchNorm while training: batch statistics that also update the stored "
                 "ones (update, PyTorch's train mode), batch statistics only (batch), or the stored ones (running)",
                 "the authors' code (model.train())", choices=("update", "batch", "running"))


#: BatchNorm put back behind folded convs while training (graph.unfold), folded again after
UNFOLD = Option("unfold", str, "conv", "conv: on a file without BatchNorm, train with a BN put back behind each "
                "biased conv (batch statistics, trainable scale and shift) and fold it into the conv afterwards "
                "(a no-op where BN is kept); none: train the folded weights as they are, where the papers' "
                "learning rates diverge", "ours (docs/repair.md)", choices=("conv", "none"))


def finetune_options(*, lr: float = 0.01, iterations: int = 2000, batch_size: int = 128, source: str = "",
                     augment: str = "auto") -> list[Option]:
    return [
        Option("lr", float, lr, "SGD learning rate", source, minimum=0, open_min=True),
        Option("iterations", int, iterations, "SGD steps over the clean set", source, minimum=1),
        Option("batch_size", int, batch_size, "images per step", source, minimum=1),
        Option("momentum", float, 0.9, "SGD momentum", source, minimum=0, maximum=1, open_max=True),
        Option("weight_decay", float, 5e-4, "SGD weight decay", source, minimum=0),
        Option("schedule", str, "cosine", "learning-rate schedule", choices=("cosine", "constant")),
        augment_option(default=augment),
        BN_MODE,
        UNFOLD,
    ]


class WeightEdit:
    """Snapshot every float initializer of the executor; on exit, ``changed`` holds the new value of
    each one that moved, and the executor is back as it was."""

    def __init__(self, ctx: RepairContext):
        self.ctx = ctx
        self.changed: dict[str, np.ndarray] = {}

    def __enter__(self) -> "WeightEdit":
        ex = self.ctx.executor
        self._saved = {name: ex.value(name).detach().clone() for name in ex.initializer_names
                       if ex.value(name).is_floating_point()}
        return self

    def __exit__(self, *exc) -> None:
        ex = self.ctx.executor
        with torch.no_grad():
            for name, old in self._saved.items():
                now = ex.value(name)
                if exc[0] is None and not torch.equal(now, old):
                    self.changed[name] = now.detach().cpu().numpy().copy()
                now.copy_(old)
        ex.requires_grad_weights(False)


#: "auto" flips only when at least this share of the clean images keeps the suspect model's prediction
#: when flipped: 0.87-0.92 on the CIFAR-10 zoo (trained with flips), 0.46-0.50 on GTSRB (signs, trained
#: without them; flipped "keep left" is "keep right"), measured on each set's 500 defender images
FLIP_AGREEMENT = 0.8


def augment_option(source: str = "ANP Sec. 4.1 (typical augmentation)", default: str = "auto") -> Option:
    return Option("augment", str, default, "random crops (4 px) and horizontal flips of the clean images. auto: "
                  f"for RGB images, crops, and flips only when >= {FLIP_AGREEMENT:.0%} of the clean images keep the "
                  "suspect model's prediction when flipped (not so for traffic signs, digits or text)", source,
                  choices=("auto", "crop-flip", "crop", "none"))


def flip_agreement(ctx: RepairContext, raw: torch.Tensor, batch_size: int = 256) -> float:
    """Share of the images ``raw`` (pixels) whose predicted class the model keeps when they are
    flipped left to right: whether flips preserve what this model was trained to see."""
    same = 0
    with torch.no_grad():
        for i in range(0, len(raw), batch_size):
            xb = raw[i:i + batch_size]
            a = ctx.executor(ctx.preprocess(xb)).argmax(1)
            b = ctx.executor(ctx.preprocess(xb.flip(3))).argmax(1)
            same += int((a == b).sum())
    return same / max(len(raw), 1)


def resolve_augment(augment: str, ctx: RepairContext, raw: torch.Tensor) -> str | None:
    """The augmentation ``augment`` stands for on these images: "auto" is none for grey images, else
    crops, with flips when the model keeps its predictions on flipped clean images (FLIP_AGREEMENT).
    Call it with the model as it is to be judged (BatchNorm not in a training mode)."""
    if augment == "auto":
        if raw.shape[1] != 3:
            return None
        return "crop-flip" if flip_agreement(ctx, raw) >= FLIP_AGREEMENT else "crop"
    return None if augment == "none" else augment


Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def finetune(ctx: RepairContext, raw: torch.Tensor, y: torch.Tensor, *, lr: float, iterations: int,
             batch_size: int, momentum: float, weight_decay: float, schedule: str, augment: str, bn_mode: str,
             params: dict[str, torch.nn.Parameter] | None = None, loss: Loss | None = None,
             stamp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             step_hook: Callable[[int], None] | None = None,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None, lr_steps: int | None = None,
             unfold: str = "conv", progress_desc: str = "fine-tuning",
             session: "Training | None" = None) -> dict[str, Any]:
    """Train ``params`` (default: every trainable weight) on pixels ``raw`` with labels ``y``.

    ``loss(logits, y, idx)`` replaces plain cross-entropy (idx: the batch's positions in ``raw``);
    ``stamp(pixels, idx)`` changes a batch's pixels after augmentation (e.g. a reversed trigger on
    some of them); ``step_hook(it)`` runs after each optimiser step; ``forward(model_input)`` replaces
    the executor's forward (a method that also reads intermediate tensors); ``lr_steps`` divides the
    learning rate by 10 every that many steps (with ``schedule="constant"``); ``session``: train the
    parameters of a :class:`Training` the caller has already entered (then ``params``, ``bn_mode``
    and ``unfold`` are the session's). Returns a log."""
    if len(raw) == 0:
        raise SpecError("fine-tuning needs at least one clean image")
    ex = ctx.executor
    own = session is None
    if own:
        params = params if params is not None else ctx.trainable()
        if not params:
            raise SpecError("the model has no trainable float weights")
        session = Training(ctx, params, bn_mode, unfold)
    trained = session.parameters
    opt = torch.optim.SGD(trained, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, schedule, lr, iterations)
    if lr_steps:
        if sched is not None:
            raise SpecError("lr_steps goes with schedule 'constant'")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_steps, gamma=0.1)
    gen = torch.Generator().manual_seed(ctx.seed)
    # a caller's session has already changed the model: 'auto' must be judged on the suspect one
    assert own or augment != "auto", "resolve augment='auto' before entering a training session"
    aug = resolve_augment(augment, ctx, raw)
    feed = batches(len(raw), min(batch_size, len(raw)), gen)
    bar = None
    if ctx.progress:
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc=progress_desc, unit="it", leave=False)
    losses = []
    with session if own else contextlib.nullcontext():
        for it in range(iterations):
            idx = next(feed).to(raw.device)
            xb = augment_batch(raw[idx], aug, gen)
            if stamp is not None:
                xb = stamp(xb, idx)
            logits = (forward or ex)(ctx.preprocess(xb))
            value = loss(logits, y[idx], idx) if loss is not None else F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if step_hook is not None:
                step_hook(it)
            if it % 50 == 0 or it == iterations - 1:
                losses.append({"iteration": it, "loss": float(value.detach())})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"curve": losses, "iterations": iterations, "augment": aug or "none", "unfolded": session.unfolded}


class Training:
    """What a method's training loop runs inside: the weights it trains (plus a put-back BN's scale
    and shift with ``unfold="conv"`` on a file without BN) with gradients on, BatchNorm in
    ``bn_mode``; on leaving, all back off, the put-back BN folded into the convs."""

    def __init__(self, ctx: RepairContext, params: dict[str, torch.nn.Parameter], bn_mode: str, unfold: str):
        self.ex, self.bn_mode = ctx.executor, bn_mode
        convs = foldable_convs(ctx.inventory) if unfold == "conv" else []
        self.vbn = VirtualBatchNorm(self.ex, convs, ctx.x if ctx.x is not None else ctx.preprocess(ctx.raw)) \
            if convs else None
        self.parameters = list(params.values()) + (self.vbn.parameters() if self.vbn is not None else [])
        self.unfolded = 0 if self.vbn is None else len(self.vbn.layers)

    def __enter__(self) -> "Training":
        for p in self.parameters:
            p.requires_grad_(True)
        self._previous = self.ex.batchnorm_mode(self.bn_mode)
        if self.vbn is not None:
            self.vbn.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.ex.batchnorm_mode(self._previous)
        if self.vbn is not None:
            self.vbn.__exit__()
        for p in self.parameters:
            p.requires_grad_(False)
        if self.vbn is not None and exc[0] is None:
            self.vbn.fold()
