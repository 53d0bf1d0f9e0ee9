"""Backdoor detectors behind one contract (a registry with the repair methods' option schema).

A detector gets a ``ScanContext`` (the file, and the defender's clean images when there are any)
and returns a ``Detection``: a score (higher = more backdoor-like), the threshold it is judged
by, whether it flags the model, a suspected target class, suspect neurons, findings of one shape
and its own evidence. Like a repair method it never sees test data, a trigger or an attack spec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from ..errors import SpecError
from ..graph.masks import optimize_masks
from ..graph.model import OpenedModel
from ..options import Option, Registry
from ..util import section_peak
from .hazards import Finding, graph_hazards
from .probe import perturbation_probe
from .trigger import anomaly_index, reverse_all, reverse_options

DETECTORS = Registry("detector")
register_detector = DETECTORS.register


@dataclass
class ScanContext:
    path: str
    proto: onnx.ModelProto
    model: OpenedModel | None = None  # opened when a detector needs the executor
    x: torch.Tensor | None = None  # preprocessed clean images (None: no data)
    y: torch.Tensor | None = None
    raw: torch.Tensor | None = None  # the same images as pixels in [0, 1]
    preprocess: Any = None
    num_classes: int = 0
    pixel_shape: tuple[int, ...] = ()  # (C, H, W) of the model's images
    seed: int = 0
    progress: bool = False

    @property
    def has_data(self) -> bool:
        return self.x is not None

    def bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False)


@dataclass
class Detection:
    detector: str
    score: float | None  # higher = more backdoor-like; None: the detector had nothing to score
    threshold: float | None
    flagged: bool | None  # None: cannot judge (e.g. inconclusive)
    target: int | None = None
    findings: list[Finding] = field(default_factory=list)
    neurons: list[tuple[str, int, float]] = field(default_factory=list)  # (layer, neuron, value)
    evidence: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    seconds: float = 0.0
    peak_mb: float = float("nan")  # resident memory peak while this detector ran (MiB)
    artifacts: dict = field(default_factory=dict)  # arrays for files and plots (reversed triggers), not in JSON


def run_detector(name: str, ctx: ScanContext, given: dict | None = None) -> Detection:
    entry = DETECTORS.get(name)
    if "none" not in entry.needs and not ctx.has_data:
        raise SpecError(f"detector {name} needs labeled clean images (--data)")
    opts = entry.resolve(given)
    t0 = time.perf_counter()
    with section_peak() as mem:
        det = entry.run(ctx, **opts)
    det.options, det.seconds, det.peak_mb = opts, time.perf_counter() - t0, mem.mb
    return det


# ------------------------------------------------------------------------------ graph, no data
@register_detector("graph", summary="hidden trigger branches (data flow from the raw input to the logits that "
                   "bypasses every weight) and operators that need native or Python code", source="ours; "
                   "ShadowLogic (HiddenLayer, 2024) for the branch", needs="none")
def detect_graph(ctx: ScanContext) -> Detection:
    findings = graph_hazards(ctx.proto)
    worst = {"critical": 1.0, "high": 0.5}
    score = max((worst.get(f.severity, 0.0) for f in findings), default=0.0)
    return Detection("graph", score, 0.5, score >= 0.5, findings=findings,
                     evidence={"nodes": len(ctx.proto.graph.node)})


# ------------------------------------------------------------------ Neural Cleanse, clean data
# 100 steps per class, not the repair's 300: the calibration's traces separate the MNIST zoo at 100 as at
# 300, and CIFAR-10's BadNets from its clean models at 100 but not at 50 (docs/scan.md); a third of the cost
NC_OPTIONS = reverse_options(steps=100, steps_source="ours: the zoo calibration's L1 traces (docs/scan.md)")


@register_detector("neural-cleanse", summary="reverse-engineer the smallest trigger of every class; a class whose "
                   "mask is an outlier (anomaly index of the L1 norms) is the suspected target",
                   source="Wang et al., IEEE S&P 2019", needs="labeled", options=NC_OPTIONS)
def detect_nc(ctx: ScanContext, *, steps: int, batch_size: int, init_cost: float, anomaly: float) -> Detection:
    triggers = reverse_all(ctx.model.executor, ctx.raw, ctx.preprocess, ctx.num_classes, steps=steps,
                           batch_size=batch_size, init_cost=init_cost, seed=ctx.seed, progress=ctx.progress)
    norms = np.array([t.l1 for t in triggers])
    index = anomaly_index(norms)
    top = int(np.argmax(index))
    flagged = [int(c) for c in np.flatnonzero(index > anomaly)]
    findings = []
    if flagged:
        findings.append(Finding(
            "nc.outlier-class", "high",
            f"class {top}'s reverse-engineered trigger covers {norms[top]:.1f} pixels against a median of "
            f"{np.median(norms):.1f} (anomaly index {index[top]:.2f} > {anomaly})",
            {"classes": flagged, "mask_l1": float(norms[top])}))
    return Detection("neural-cleanse", float(index[top]), anomaly, bool(flagged), top if flagged else None,
                     findings, evidence={"top_class": top, "mask_l1": norms.round(3).tolist(),
                                         "anomaly_index": index.round(3).tolist(),
                                         "reached": [t.reached for t in triggers],
                                         "l1_trace": [t.trace for t in triggers]},
                     artifacts={"triggers": triggers})


# ------------------------------------------------------------------- MM-BD, no data at all
MMBD_OPTIONS = [
    Option("images", int, 30, "synthetic images optimised per class (uniform random starts)", "MM-BD code (univ_bd.py)",
           minimum=1),
    Option("steps", int, 300, "gradient steps per class (SGD, lr 0.01; stops early when the loss settles)",
           "MM-BD code", minimum=1),
    Option("lr", float, 0.01, "step size in pixel units", "MM-BD code", minimum=0, open_min=True),
    Option("p_value", float, 0.05, "flag when the largest class's margin has an order-statistic p-value at or "
           "below this under a gamma null fitted to the other classes", "MM-BD Sec. 3", minimum=0, maximum=1),
]


def _margin(logits: torch.Tensor, t: int) -> torch.Tensor:
    """Per image, class ``t``'s logit minus the largest other logit."""
    others = logits.clone()
    others[:, t] = -torch.inf
    return logits[:, t] - others.max(1).values


def max_margins(ctx: ScanContext, images: int, steps: int, lr: float, batch: int = 64) -> np.ndarray:
    """Per class, the largest logit margin (class logit minus the best other) that synthetic pixels
    in [0, 1] reach by gradient ascent: a backdoor's target class reaches a far larger one.

    Each class's images ascend their own margin and stop when their summed loss settles; the
    classes run side by side, as many per forward pass as fit in ``batch`` images (an image's
    gradient depends on itself alone: the executor runs BN on its stored statistics). 64 images,
    two classes of 30: at 256 a MobileNetV2 scan peaked at 3.7 GB of activations."""
    ex = ctx.model.executor
    ex.requires_grad_weights(False)
    gen = torch.Generator().manual_seed(ctx.seed)
    bar = ctx.bar(ctx.num_classes, "max margins")
    out = np.zeros(ctx.num_classes)
    per = max(1, batch // images)
    for first in range(0, ctx.num_classes, per):
        group = list(range(first, min(first + per, ctx.num_classes)))
        xs = {t: torch.rand((images, *ctx.pixel_shape), generator=gen).to(ex.device) for t in group}
        active, last = list(group), {}
        for _ in range(steps):
            if not active:
                break
            x = torch.cat([xs[t] for t in active]).requires_grad_(True)
            logits = ex(ctx.preprocess(x.clamp(0, 1)))
            losses = [-_margin(logits[i * images:(i + 1) * images], t).sum() for i, t in enumerate(active)]
            (grad,) = torch.autograd.grad(torch.stack(losses).sum(), [x])
            settled = []
            with torch.no_grad():
                for i, t in enumerate(active):
                    xs[t] = xs[t] - lr * grad[i * images:(i + 1) * images]
                    value = float(losses[i].detach())
                    if t in last and abs(last[t] - value) <= 1e-5 * abs(last[t]):
                        settled.append(t)
                    last[t] = value
            active = [t for t in active if t not in settled]
        with torch.no_grad():
            logits = ex(ctx.preprocess(torch.cat([xs[t] for t in group]).clamp(0, 1)))
            for i, t in enumerate(group):
                out[t] = float(_margin(logits[i * images:(i + 1) * images], t).max())
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return out


def neg_log10(p: float) -> float:
    """-log10 p, at most 300 (a p of 0 in floating point)."""
    return float(min(300.0, -np.log10(max(p, 1e-300))))


def order_p_value(stats: np.ndarray) -> float:
    """MM-BD's test: fit a gamma distribution to every class's statistic but the largest, and give
    the chance that the largest of K such draws reaches the observed maximum, 1 - F(max)^K."""
    from scipy.stats import gamma

    stats = np.asarray(stats, dtype=np.float64)
    top = int(np.argmax(stats))
    null = np.delete(stats, top)
    shape, loc, scale = gamma.fit(null)
    return float(1.0 - gamma.cdf(stats[top], a=shape, loc=loc, scale=scale) ** len(stats))


@register_detector("mm-bd", summary="maximum achievable logit margin per class from synthetic images: an outlier "
                   "class is a backdoor target; no data needed", source="Wang et al., IEEE S&P 2024 (MM-BD)",
                   needs="none", options=MMBD_OPTIONS)
def detect_mmbd(ctx: ScanContext, *, images: int, steps: int, lr: float, p_value: float) -> Detection:
    margins = max_margins(ctx, images, steps, lr)
    p = order_p_value(margins)
    top = int(np.argmax(margins))
    flagged = p <= p_value
    findings = []
    if flagged:
        findings.append(Finding("mmbd.outlier-margin", "high",
                                f"synthetic images reach a logit margin of {margins[top]:.1f} for class {top} "
                                f"against a median of {np.median(margins):.1f} "
                                f"(order-statistic p = {p:.2g} <= {p_value})",
                                {"class": top, "margin": float(margins[top]), "p": p}))
    # the score is -log10 p, so that higher means more backdoor-like like every other detector's
    # (1 - p saturates: most backdoored models' p are below 1e-6)
    return Detection("mm-bd", neg_log10(p), neg_log10(p_value), flagged, top if flagged else None, findings,
                     evidence={"top_class": top, "margins": margins.round(3).tolist(), "p_value": p})


# ------------------------------------------------------------- ANP's probe and masks, clean data
PROBE_OPTIONS = [
    Option("eps", str, "0.1,0.2,0.3,0.4", "neuron perturbation budgets of the probe", "ANP Fig. 1a"),
    Option("probe_steps", int, 10, "PGD steps per budget (signed, from a uniform start)", minimum=1),
    Option("mask_iterations", int, 300, "ANP mask optimisation steps (eps 0.4, alpha 0.2)", minimum=1),
    Option("mask_threshold", float, 0.2, "masks below this count as pruned", "ANP Sec. 4.1", minimum=0, maximum=1),
    Option("top", int, 10, "lowest-mask neurons reported", minimum=1),
    Option("min_error", float, 0.2, "judge only budgets whose perturbation causes this error rate", minimum=0,
           maximum=1),
    Option("max_eps", float, 0.2, "... and only budgets up to this (at 0.4 clean models collapse too)", minimum=0),
    Option("suspect_share", float, 0.7, "errors concentrated on one class beyond this share: flagged", minimum=0,
           maximum=1),
    Option("clear_share", float, 0.5, "below this share at every judged budget: not flagged", minimum=0, maximum=1),
]


@register_detector("anp-probe", summary="adversarial neuron perturbation: how the clean errors concentrate on one "
                   "class, and the ANP masks' lowest neurons", source="Wu & Wang, NeurIPS 2021 (ANP), Sec. 3.2",
                   needs="labeled", options=PROBE_OPTIONS)
def detect_probe(ctx: ScanContext, *, eps: str, probe_steps: int, mask_iterations: int, mask_threshold: float,
                 top: int, min_error: float, max_eps: float, suspect_share: float, clear_share: float) -> Detection:
    try:
        eps_list = tuple(float(e) for e in eps.split(","))
    except ValueError:
        raise SpecError(f"detector anp-probe: eps must be numbers separated by commas, got {eps!r}") from None
    ex, inv = ctx.model.executor, ctx.model.inventory
    bar = ctx.bar(len(eps_list) * probe_steps + mask_iterations, "ANP probe")
    tick = (lambda *_: bar.update(1)) if bar else None
    try:
        points = perturbation_probe(ex, inv, ctx.x, ctx.y, ctx.num_classes, eps_list=eps_list, steps=probe_steps,
                                    seed=ctx.seed, callback=tick)
        mod, _ = optimize_masks(ex, inv, ctx.x, ctx.y, eps=0.4, alpha=0.2, lr=0.2, momentum=0.9,
                                iterations=mask_iterations, batch_size=128, seed=ctx.seed, callback=tick)
    finally:
        if bar:
            bar.close()
    masks = mod.mask.detach().cpu().numpy()
    order = np.argsort(masks, kind="stable")[:top]
    lowest = [(*mod.neuron(int(i)), round(float(masks[i]), 4)) for i in order]
    below = int((masks < mask_threshold).sum())
    usable = [p for p in points if p.error_rate >= min_error and p.eps <= max_eps + 1e-9]
    score, target, flagged = None, None, None
    if usable:
        best = max(usable, key=lambda p: p.top_share)
        score, target = best.top_share, best.top_class
        flagged = True if score >= suspect_share else (False if score < clear_share else None)
    findings = []
    if flagged:
        findings.append(Finding("probe.collapse", "high",
                                f"under neuron perturbation {score:.0%} of the errors go to class {target}",
                                {"target": target, "share": score}))
    if below:
        findings.append(Finding("masks.near-zero", "info" if flagged is False else "medium",
                                f"{below} of {masks.size} neurons get ANP masks below {mask_threshold}",
                                {"neurons": [list(n) for n in lowest[:below]]}))
    by_layer = {name: masks[lo:hi] for name, (lo, hi) in mod.offsets.items()}
    return Detection("anp-probe", score, suspect_share, flagged, target if flagged else None, findings, lowest,
                     {"top_class": None if not usable else best.top_class, "probe": points,
                      "masks_below_threshold": below, "units": int(masks.size)},
                     artifacts={"masks_by_layer": by_layer})


# --------------------------------------------------------- BatchNorm statistics, clean data
BNKL_OPTIONS = [
    Option("outlier", float, 3.5, "flag when some BN channel's KL divergence has a robust z-score (median and "
           "MAD of its layer) above this", "Iglewicz & Hoaglin's modified z-score rule (3.5)", minimum=0),
    Option("top", int, 10, "highest-divergence channels reported", minimum=1),
]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 * MAD): how far each value sits above its population, the mirror
    of NC's anomaly index (which counts below)."""
    return -anomaly_index(values)


@register_detector("bn-kl", summary="how far each BatchNorm channel's clean statistics sit from the stored "
                   "(training) ones: a backdoor neuron's training population mixed poisoned inputs in; the most "
                   "outlying channel scores the model", source="Zheng et al., NeurIPS 2022 (EP/BNP), as a detector",
                   needs="unlabeled", options=BNKL_OPTIONS)
def detect_bn_kl(ctx: ScanContext, *, outlier: float, top: int) -> Detection:
    from ..graph.bnstats import bn_divergences

    kls = bn_divergences(ctx.model.executor, ctx.model.inventory, ctx.x)
    if not kls:
        return Detection("bn-kl", None, outlier, None, evidence={
            "reason": "no BatchNormalization statistics in the file (folded at export, or never there)"})
    per_layer, ranked = {}, []
    for name, kl in kls.items():
        z = robust_z(kl)
        per_layer[name] = {"channels": int(kl.size), "max_kl": round(float(kl.max()), 4),
                           "median_kl": round(float(np.median(kl)), 4), "max_z": round(float(z.max()), 3),
                           "above_mean_3std": int((kl > kl.mean() + 3 * kl.std(ddof=1)).sum()) if kl.size > 1 else 0}
        ranked += [(name, int(i), float(z[i])) for i in np.argsort(-z)[:top]]
    ranked.sort(key=lambda t: -t[2])
    score = ranked[0][2]
    flagged = score > outlier
    findings = []
    if flagged:
        name, i, z = ranked[0]
        findings.append(Finding("bnkl.outlier-channel", "medium",
                                f"BatchNorm {name} channel {i}: its clean statistics diverge from the stored ones "
                                f"{z:.1f} robust deviations beyond its layer's (> {outlier})",
                                {"layer": name, "channel": i, "z": round(z, 3)}))
    return Detection("bn-kl", score, outlier, flagged, None, findings,
                     [(n, i, round(z, 3)) for n, i, z in ranked[:top]],
                     evidence={"layers": per_layer, "images": int(len(ctx.x))})


from . import ban as _ban  # noqa: E402,F401  (registers the "ban" detector)
