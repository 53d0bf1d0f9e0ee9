"""Neural Cleanse trigger reverse engineering (Wang et al., IEEE S&P 2019, Sec. IV).

For each class t find the smallest mask m (H x W, in [0, 1]) and pattern p (C x H x W, in [0, 1])
such that stamping ``(1 - m) * x + m * p`` sends clean images to t:

    min  CE(f((1 - m) * x + m * p), t) + cost * |m|_1

with m and p parameterised through tanh (as the authors' code), Adam (lr 0.1, betas 0.5/0.9), and
the cost adapted as in their code: raised by 1.5x after ``patience`` periods at or above the target
success rate, lowered by 1.5**1.5 after ``patience`` periods below it; the smallest mask that
reached the success rate is kept. A class whose mask is much smaller than the others' is the
suspect: the anomaly index is (median - norm) / (1.4826 * MAD) over the classes' L1 norms, and an
index above 2 flags the class (Sec. IV-C).

Everything happens in pixel space, through the model's preprocessing, so it works the same on
BN-kept and folded files. It sees only the model and clean images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..graph.executor import OnnxExecutor
from ..graph.masks import batches

ANOMALY_THRESHOLD = 2.0  # NC Sec. IV-C


def reverse_options(prefix: str = "", steps: int = 300, steps_source: str = "NC's code (Adam, lr 0.1)") -> list:
    """The options of NC's reverse engineering, shared by the detector and the repair (which names
    the first two ``re_steps``, ``re_batch_size``)."""
    from ..options import Option

    return [
        Option(f"{prefix}steps", int, steps, "optimisation steps of each class's trigger", steps_source, minimum=1),
        Option(f"{prefix}batch_size", int, 128, "images per reverse-engineering step", minimum=1),
        Option("init_cost", float, 1e-3, "initial weight of the mask's L1 norm", "NC's code", minimum=0),
        Option("anomaly", float, ANOMALY_THRESHOLD, "flag a class whose anomaly index exceeds this", "NC Sec. IV-C",
               minimum=0),
    ]


@dataclass
class ReversedTrigger:
    target: int
    mask: np.ndarray  # (H, W) in [0, 1]
    pattern: np.ndarray  # (C, H, W) in [0, 1]
    l1: float  # sum of the mask
    success: float  # share of clean images the trigger sends to ``target`` (last check)
    reached: bool  # the success rate was reached at least once
    trace: list[float] | None = None  # at every check (``period`` steps): the L1 the run would return if stopped there

    def stamp(self, raw: torch.Tensor) -> torch.Tensor:
        """Pixels with this trigger applied."""
        m = torch.as_tensor(self.mask, dtype=raw.dtype, device=raw.device)[None, None]
        p = torch.as_tensor(self.pattern, dtype=raw.dtype, device=raw.device)[None]
        return (1 - m) * raw + m * p


def reverse_trigger(executor: OnnxExecutor, raw: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
                    target: int, *, steps: int = 300, batch_size: int = 128, lr: float = 0.1,
                    init_cost: float = 1e-3, success: float = 0.99, patience: int = 5, period: int = 10,
                    seed: int = 0) -> ReversedTrigger:
    """Reverse-engineer the trigger of class ``target`` from clean pixels ``raw`` (float NCHW in [0, 1])."""
    _, c, h, w = raw.shape
    gen = torch.Generator().manual_seed(seed + 7919 * target)
    dev = raw.device
    mask_raw = (torch.rand((1, 1, h, w), generator=gen) * 2 - 1).mul_(0.5).to(dev).requires_grad_(True)
    pat_raw = (torch.rand((1, c, h, w), generator=gen) * 2 - 1).mul_(0.5).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pat_raw], lr=lr, betas=(0.5, 0.9))
    feed = batches(len(raw), min(batch_size, len(raw)), gen)
    cost, up, down = init_cost, 0, 0
    best = None
    hits = seen = 0
    trace = []
    executor.requires_grad_weights(False)
    for step in range(steps):
        idx = next(feed).to(dev)
        m = (torch.tanh(mask_raw) + 1) / 2
        p = (torch.tanh(pat_raw) + 1) / 2
        stamped = (1 - m) * raw[idx] + m * p
        logits = executor(preprocess(stamped))
        labels = torch.full((len(idx),), target, dtype=torch.long, device=dev)
        l1 = m.sum()
        loss = F.cross_entropy(logits, labels) + cost * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hits += int((logits.detach().argmax(1) == target).sum())
        seen += len(idx)
        if (step + 1) % period == 0 or step == steps - 1:
            rate = hits / max(seen, 1)
            hits = seen = 0
            if rate >= success:
                if best is None or float(l1.detach()) < best[2]:
                    best = (m.detach().clone(), p.detach().clone(), float(l1.detach()), rate)
                up, down = up + 1, 0
            else:
                up, down = 0, down + 1
            if up >= patience:
                cost, up = cost * 1.5, 0
            elif down >= patience:
                cost, down = cost / 1.5 ** 1.5, 0
            last_rate = rate
            trace.append(round(best[2] if best is not None else float(l1.detach()), 3))
    if best is not None:
        m, p, l1v, rate = best
        return ReversedTrigger(target, m[0, 0].cpu().numpy(), p[0].cpu().numpy(), l1v, rate, True, trace)
    m = ((torch.tanh(mask_raw) + 1) / 2).detach()
    p = ((torch.tanh(pat_raw) + 1) / 2).detach()
    return ReversedTrigger(target, m[0, 0].cpu().numpy(), p[0].cpu().numpy(), float(m.sum()), last_rate, False,
                           trace)


def reverse_all(executor: OnnxExecutor, raw: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
                num_classes: int, *, steps: int, batch_size: int, init_cost: float, seed: int = 0,
                progress: bool = False) -> list[ReversedTrigger]:
    """One reversed trigger per class (progress counted in classes)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_classes, desc="reverse triggers", unit="class", leave=False)
    out = []
    for t in range(num_classes):
        out.append(reverse_trigger(executor, raw, preprocess, t, steps=steps, batch_size=batch_size,
                                   init_cost=init_cost, seed=seed))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """NC's anomaly index per class: (median - norm) / (1.4826 * MAD); only classes with a smaller
    norm than the median get a positive index."""
    norms = np.asarray(norms, dtype=np.float64)
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - med))
    return (med - norms) / max(mad, 1e-12)


def save_triggers(path, triggers: list[ReversedTrigger]) -> None:
    """Every class's reversed trigger into one .npz (written atomically), for a later repair."""
    import io

    from ..util import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, target=np.array([t.target for t in triggers]),
                        mask=np.stack([t.mask for t in triggers]).astype(np.float32),
                        pattern=np.stack([t.pattern for t in triggers]).astype(np.float32),
                        l1=np.array([t.l1 for t in triggers]), success=np.array([t.success for t in triggers]),
                        reached=np.array([t.reached for t in triggers]))
    atomic_write_bytes(path, buf.getvalue())


def load_triggers(path, shape: tuple[int, ...]) -> list[ReversedTrigger]:
    """Triggers saved by ``save_triggers``, checked against the model's pixel shape (C, H, W)."""
    from ..errors import DataError

    try:
        with np.load(path) as z:
            parts = {k: z[k] for k in ("target", "mask", "pattern", "l1", "success", "reached")}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a triggers file written by `audit scan --save-triggers` ({exc})") from None
    if tuple(parts["pattern"].shape[1:]) != tuple(shape):
        raise DataError(f"{path}: triggers of shape {tuple(parts['pattern'].shape[1:])}, the model's images are "
                        f"{tuple(shape)}")
    return [ReversedTrigger(int(t), m, p, float(l), float(s), bool(r))
            for t, m, p, l, s, r in zip(*(parts[k] for k in ("target", "mask", "pattern", "l1", "success",
                                                              "reached")))]
