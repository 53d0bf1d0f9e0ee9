"""Input-aware dynamic backdoor (IAB; Nguyen & Tran, NeurIPS 2020): every image gets its own trigger.

Two small conv encoder-decoders make, for an image x, a pattern ``G(x)`` (C channels in [0, 1])
and a mask ``m(x) = threshold(M(x))`` (one channel, nearly binary); the triggered image is
``x + m(x) * (G(x) - x)``. As in the authors' code (input-aware-backdoor-attack-release):

1. The mask generator is pre-trained alone (``mask_steps`` batches, Adam lr 0.01, betas 0.5/0.9,
   lr x0.1 after 40% and 80% of its steps, like their milestones 10 and 20 of 25 epochs) on
   ``lambda_norm * mean(relu(m(x) - mask_density)) + lambda_div * diversity``, then frozen.
2. Classifier and pattern generator are trained together. In each (augmented) batch a ``rate``
   share of the eligible images carries its own trigger and the backdoor label; a ``p_cross``
   share carries the trigger made for another image (from a second shuffled batch) and keeps its
   true label; the rest stay clean. Loss: cross-entropy + ``lambda_div * mean(|x1 - x2| /
   |G(x1) - G(x2)|)`` (the diversity term: different images, different triggers). The classifier
   uses SGD with the TrainSettings' lr, momentum, weight decay and schedule; the generator Adam.

Deviations, for CPU budgets: the generators default to the authors' MNIST size (16 channels, 2
down/up steps, ~42k weights each) for every dataset (theirs for CIFAR: 32 channels, 3 steps), and
the mask pre-training to 500 steps instead of 25 epochs (the mask reaches its ~3% density in
100-150 steps on MNIST); the authors never zero the generator's gradients (they accumulate),
here they are zeroed every step; image pairs that happen to be the same image are left out of the
diversity loss (0/0).

Resumable: with ``settings.checkpoint`` the state of both phases' parts (classifier, generators,
optimisers, schedules, random generators) is saved after the mask pre-training and after every
epoch, and a run with the same checkpoint continues from there as if never stopped.

After training the generators' weights (float32, BatchNorm running statistics included) are
stored in ``params["generator"]`` as a base64 .npz, so ``apply`` rebuilds them from the spec alone.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageSet
from ..errors import DataError, SpecError
from .iab_generator import EPS, TriggerGenerator, pack_generators, threshold, triggered, unpack_generators
from ..options import float_param, int_param
from .registry import Attack, register_attack
from ..training.resume import load_checkpoint, save_checkpoint
from ..training.train import AUGMENTS, SCHEDULES, TrainSettings, check_label_range, augment_batch, make_scheduler

_CHUNK = 256  # images triggered at once by ``apply``


@register_attack("input-aware")
class InputAware(Attack):
    """A trigger generator trained jointly with the classifier: each image gets its own pattern and mask."""

    summary = "input-aware dynamic trigger: a generator trained with the model makes each image's pattern and mask"
    PARAMS = {
        "p_cross": (0.1, "share of each batch given another image's trigger, keeping its label"),
        "lambda_div": (1.0, "weight of the diversity loss"),
        "lambda_norm": (100.0, "weight of the mask density loss in mask pre-training"),
        "mask_density": (0.032, "mask share allowed before the density loss applies"),
        "mask_steps": (500, "Adam steps of mask-generator pre-training (the authors: 25 epochs)"),
        "lr_g": (0.01, "Adam learning rate of the generators"),
        "channels": (16, "generator width (channels of its first block)"),
        "depth": (2, "generator down/up-sampling steps"),
        "generator": ("", "set by training: the generators' weights (base64 .npz)"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        p = self.params
        self.p_cross = float_param("input-aware", "p_cross", p["p_cross"], 0.0, 1.0)
        if self.p_cross + spec.rate > 1.0:
            raise SpecError(f"input-aware rate {spec.rate} + p_cross {self.p_cross} exceed 1")
        self.lambda_div = float_param("input-aware", "lambda_div", p["lambda_div"], 0.0, 1e6)
        self.lambda_norm = float_param("input-aware", "lambda_norm", p["lambda_norm"], 0.0, 1e6)
        self.mask_density = float_param("input-aware", "mask_density", p["mask_density"], 0.0, 1.0)
        self.lr_g = float_param("input-aware", "lr_g", p["lr_g"], 0.0, 10.0, open_min=True)
        self.mask_steps = int_param("input-aware", "mask_steps", p["mask_steps"], 0, 10_000_000)
        self.channels = int_param("input-aware", "channels", p["channels"], 1, 1024)
        self.depth = int_param("input-aware", "depth", p["depth"], 1, 6)
        if not isinstance(p["generator"], str):
            raise SpecError("input-aware generator must be the base64 text training stores")
        p.update(p_cross=self.p_cross, lambda_div=self.lambda_div, lambda_norm=self.lambda_norm,
                 mask_density=self.mask_density, lr_g=self.lr_g, mask_steps=self.mask_steps,
                 channels=self.channels, depth=self.depth)
        self._nets: tuple[TriggerGenerator, TriggerGenerator] | None = None
        if p["generator"]:
            self._nets = unpack_generators(p["generator"], self.channels, self.depth)

    # ------------------------------------------------------------------ the trigger

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        c, h, w = shape
        if min(h, w) < 2**self.depth:
            raise SpecError(f"input-aware generator of depth {self.depth} needs images of at least "
                            f"{2**self.depth}x{2**self.depth} px, got {h}x{w}")
        if self._nets is not None and self._nets[0].down[0][0][0].in_channels != c:
            raise SpecError(f"input-aware generator was trained on {self._nets[0].down[0][0][0].in_channels}-channel "
                            f"images, got {c}-channel ones")

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        if self._nets is None:
            raise SpecError("input-aware trigger generator is not trained: its triggers exist only in the spec "
                            "of a model trained with this attack")
        self.check_shape(x.shape[1:])
        pattern_net, mask_net = self._nets
        out = np.empty_like(x)
        with torch.no_grad():
            for start in range(0, len(x), _CHUNK):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + _CHUNK]))
                out[start : start + len(xb)] = triggered(xb, xb, pattern_net, mask_net).clamp(0.0, 1.0).numpy()
        return out

    # ------------------------------------------------------------------ training

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """Pre-train the mask generator, then train classifier and pattern generator together.

        The log has ``train_acc``, ``bd_acc`` and ``cross_acc`` per epoch; ``n_poisoned`` and
        ``n_cross`` count the backdoor and cross images of the last epoch (new ones every epoch)."""
        _check_settings(settings)
        if len(clean) == 0:
            raise DataError(f"no training images in {clean.source or 'the given set'}")
        self.check_shape(clean.shape)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        c = clean.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.seed)
            pattern_net = TriggerGenerator(c, c, self.channels, self.depth).to(device)
            mask_net = TriggerGenerator(c, 1, self.channels, self.depth).to(device)
        torch.manual_seed(settings.seed)
        rng = np.random.default_rng(settings.seed)
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        model.to(device)
        x_all = torch.from_numpy(np.ascontiguousarray(clean.x, dtype=np.float32)).to(device)
        y_all = torch.from_numpy(clean.y.astype(np.int64)).to(device)
        eligible = torch.from_numpy(self.eligible(clean.y)).to(device)
        check_label_range(model, x_all, clean)

        bs, n = settings.batch_size, len(clean)
        steps = math.ceil(n / bs)
        bar = None
        if settings.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.mask_steps + steps * settings.epochs, desc="training", unit="step")
        start = time.perf_counter()

        def batches(count: int):
            """``count`` augmented batches from two independent shuffles, reshuffled every epoch."""
            done = 0
            while done < count:
                o1, o2 = rng.permutation(n), rng.permutation(n)
                for b in range(min(steps, count - done)):
                    i1 = torch.from_numpy(o1[b * bs : (b + 1) * bs]).to(device)
                    i2 = torch.from_numpy(o2[b * bs : (b + 1) * bs]).to(device)
                    x1 = augment_batch(x_all[i1], settings.augment, gen)
                    x2 = augment_batch(x_all[i2], settings.augment, gen)
                    if bar is not None:
                        bar.update(1)
                    done += 1
                    yield x1, y_all[i1], eligible[i1], x2

        log: dict[str, Any] = {"loss": [], "train_acc": [], "bd_acc": [], "cross_acc": [],
                               "epochs": settings.epochs, "steps": steps * settings.epochs, "resumed_at": 0}
        opt_c = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
        sched_c = make_scheduler(opt_c, settings.schedule, settings.lr, steps * settings.epochs)
        opt_g = torch.optim.Adam(pattern_net.parameters(), self.lr_g, betas=(0.5, 0.9))
        # the generator's learning rate follows the classifier's schedule (the authors decay both at
        # the same milestones): a generator still moving at full rate while the classifier's
        # learning rate has annealed to 0 leaves triggers the classifier never learnt
        sched_g = make_scheduler(opt_g, settings.schedule, self.lr_g, steps * settings.epochs, cycle_momentum=False)
        # checkpoints: after the mask pre-training (0 epochs done) and after every epoch but the last
        parts = {"model": model, "opt": opt_c, "sched": sched_c, "pattern": pattern_net, "mask": mask_net,
                 "opt_g": opt_g, "sched_g": sched_g}
        resumed = load_checkpoint(settings.checkpoint, parts, rng, gen, log)
        first_epoch, seconds_before = resumed or (0, 0.0)
        if resumed is None:  # 1. the mask generator alone
            self._pretrain_mask(mask_net, batches(self.mask_steps), log)
            if settings.checkpoint is not None:
                save_checkpoint(settings.checkpoint, 0, time.perf_counter() - start, parts, rng, gen, log)
        elif bar is not None:
            bar.update(self.mask_steps + first_epoch * steps)
        mask_net.eval()
        mask_net.requires_grad_(False)

        # 2. classifier and pattern generator together
        model.train()
        pattern_net.train()
        for epoch in range(first_epoch, settings.epochs):
            sums = np.zeros(7)  # loss, correct, bd correct, n bd, cross correct, n cross, n
            for x1, y1, elig, x2 in batches(steps):
                loss, counts = self._joint_step(model, pattern_net, mask_net, x1, y1, elig, x2)
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
                if sched_c is not None:
                    sched_c.step()
                    sched_g.step()
                sums += counts
            log["loss"].append(float(sums[0] / sums[6]))
            log["train_acc"].append(float(100.0 * sums[1] / sums[6]))
            log["bd_acc"].append(float(100.0 * sums[2] / max(sums[3], 1)))
            log["cross_acc"].append(float(100.0 * sums[4] / max(sums[5], 1)))
            log["n_poisoned"], log["n_cross"] = int(sums[3]), int(sums[5])
            if settings.checkpoint is not None and epoch + 1 < settings.epochs:
                save_checkpoint(settings.checkpoint, epoch + 1, seconds_before + time.perf_counter() - start,
                                parts, rng, gen, log)
        if bar is not None:
            bar.close()
        model.eval()
        pattern_net.eval()
        self.params["generator"] = pack_generators(pattern_net, mask_net)
        # apply uses exactly what the spec stores
        self._nets = unpack_generators(self.params["generator"], self.channels, self.depth)
        log.update(seconds=seconds_before + time.perf_counter() - start, device=device)
        return log

    def _pretrain_mask(self, mask_net: nn.Module, batches: Any, log: dict[str, Any]) -> None:
        """Train the mask generator alone on ``batches`` (pairs of augmented batches); logs
        ``mask_share``, the share of masked pixels in the last batch."""
        opt_m = torch.optim.Adam(mask_net.parameters(), self.lr_g, betas=(0.5, 0.9))
        milestones = [int(0.4 * self.mask_steps), int(0.8 * self.mask_steps)]
        sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, milestones, 0.1)
        mask_net.train()
        mask_share = None
        for x1, _, _, x2 in batches:
            m1, m2 = threshold(mask_net(x1)), threshold(mask_net(x2))
            loss = self.lambda_norm * F.relu(m1 - self.mask_density).mean() + \
                self.lambda_div * _diversity(x1, x2, m1, m2)
            opt_m.zero_grad(set_to_none=True)
            loss.backward()
            opt_m.step()
            sched_m.step()
            mask_share = float((m1.detach() > 0.5).float().mean())
        log["mask_share"] = mask_share

    def _joint_step(self, model: nn.Module, pattern_net: nn.Module, mask_net: nn.Module, x1: torch.Tensor,
                    y1: torch.Tensor, elig: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """One batch: backdoor, cross and clean parts; returns the loss and the step's counts."""
        bs = len(x1)
        elig_pos = torch.nonzero(elig).flatten()
        n_bd = int(round(self.spec.rate * len(elig_pos)))
        is_bd = torch.zeros(bs, dtype=torch.bool, device=x1.device)
        is_bd[elig_pos[:n_bd]] = True
        bd_pos, rest = torch.nonzero(is_bd).flatten(), torch.nonzero(~is_bd).flatten()
        n_cross = min(int(round(self.p_cross * bs)), len(rest))
        cross_pos, clean_pos = rest[:n_cross], rest[n_cross:]

        parts, targets = [], []
        loss_div = x1.new_zeros(())
        if n_bd + n_cross:
            sources = torch.cat([x1[bd_pos], x2[bd_pos], x2[cross_pos]])
            patterns, masks = pattern_net(sources), threshold(mask_net(sources))
            p_bd, p_other, p_cross = patterns.split([n_bd, n_bd, n_cross])
            m_bd, _, m_cross = masks.split([n_bd, n_bd, n_cross])
            x_bd = x1[bd_pos]
            parts += [x_bd + (p_bd - x_bd) * m_bd, x1[cross_pos] + (p_cross - x1[cross_pos]) * m_cross]
            targets += [self._backdoor_labels(y1[bd_pos]), y1[cross_pos]]
            if n_bd:
                loss_div = self.lambda_div * _diversity(x_bd, x2[bd_pos], p_bd, p_other)
        parts.append(x1[clean_pos])
        targets.append(y1[clean_pos])
        inputs, target = torch.cat(parts), torch.cat(targets)
        logits = model(inputs)
        loss_ce = F.cross_entropy(logits, target)
        hit = (logits.detach().argmax(1) == target).cpu().numpy()
        counts = np.array([float(loss_ce.detach()) * bs, hit.sum(), hit[:n_bd].sum(), n_bd,
                           hit[n_bd : n_bd + n_cross].sum(), n_cross, bs], dtype=np.float64)
        return loss_ce + loss_div, counts

    def _backdoor_labels(self, y: torch.Tensor) -> torch.Tensor:
        if self.spec.mode == "all-to-all":
            return (y + 1) % self.spec.num_classes
        return torch.full_like(y, int(self.spec.target))


def _diversity(x1: torch.Tensor, x2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of (RMS distance of the images) / (RMS distance of their triggers).

    A pair of identical images (both shuffles drew the same one) adds 0; the square root is kept
    off 0 so its gradient stays finite."""
    d_images = ((x1 - x2) ** 2).mean(dim=(1, 2, 3)).add(EPS**2).sqrt()
    d_triggers = ((t1 - t2) ** 2).mean(dim=(1, 2, 3)).add(EPS**2).sqrt()
    same = (x1 == x2).flatten(1).all(1)
    return torch.where(same, torch.zeros_like(d_images), d_images / (d_triggers + EPS)).mean()


def _check_settings(settings: TrainSettings) -> None:
    if settings.epochs < 1 or settings.batch_size < 1:
        raise SpecError(f"epochs and batch size must be >= 1, got epochs={settings.epochs}, "
                        f"batch_size={settings.batch_size}")
    if settings.schedule not in SCHEDULES:
        raise SpecError(f"learning-rate schedule {settings.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if settings.augment is not None and settings.augment not in AUGMENTS:
        raise SpecError(f"augmentation {settings.augment!r} is not one of {', '.join(AUGMENTS)} (or none)")
