"""A first `audit scan`: the neuron perturbation probe plus ANP's mask distribution.

The defender has the suspect model and a small clean set, nothing else. Evidence:
- probe (ANP Section 3.2): under adversarial neuron perturbation, the share of the errors
  that land on one class. Backdoored models collapse onto their target; clean ones spread.
- masks (ANP Fig. 2b): after a short ANP mask optimisation, backdoored models grow a cluster
  of masks near 0; the lowest-mask neurons are the suspects.
- graph: operators a plain classifier never has (control flow, comparisons, selection).
Only budgets up to PROBE_MAX_EPS count for the verdict: backdoored models collapse at smaller
budgets than clean ones (ANP Fig. 1a), while at large budgets every model we measured, clean
ones included, sends its errors to one class. When no small budget causes enough errors to
judge, the verdict is "inconclusive" (exit 0, stated as such), never "clean".
The thresholds below are first settings from a handful of MNIST models (see docs/scan.md), not
a calibration; the calibrated scan is a later piece of work.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data import ImageSet
from ..errors import DataError
from ..graph.masks import optimize_masks
from ..graph.model import accuracy, open_model
from ..inputs import fit_images
from .probe import ProbePoint, perturbation_probe

# first, uncalibrated settings (docs/scan.md records what they were chosen on)
PROBE_MIN_ERROR = 0.2  # look at budgets where the perturbation causes at least this error rate
PROBE_MAX_EPS = 0.2  # ... and only small ones: at eps 0.4 clean MNIST models collapse onto one class too
PROBE_SUSPECT_SHARE = 0.7  # errors concentrated on one class beyond this share: suspected
PROBE_CLEAR_SHARE = 0.5  # below this at every budget: no backdoor found
SUSPICIOUS_OPS = {"If", "Loop", "Scan", "Where", "Equal", "Greater", "Less", "GreaterOrEqual",
                  "LessOrEqual", "ArgMax", "ArgMin", "Not", "And", "Or", "Xor", "TopK", "NonZero"}


@dataclass
class Finding:
    id: str
    severity: str  # high | medium | info
    message: str
    evidence: dict = field(default_factory=dict)


@dataclass
class ScanReport:
    model: str
    verdict: str  # "backdoor suspected" | "no backdoor found" | "inconclusive"
    suspected_target: int | None
    probe_score: float
    clean_accuracy: float
    probe: list[ProbePoint]
    lowest_masks: list[tuple[str, int, float]]
    masks_below_threshold: int
    units: int
    findings: list[Finding]
    seconds: float

    @property
    def backdoor_found(self) -> bool:
        return self.verdict == "backdoor suspected" or any(f.severity == "high" for f in self.findings)

    def to_dict(self) -> dict:
        return asdict(self)


def graph_findings(proto) -> list[Finding]:
    ops = {}
    for node in proto.graph.node:
        if node.op_type in SUSPICIOUS_OPS:
            ops.setdefault(node.op_type, []).append(node.name or node.op_type)
    if not ops:
        return []
    listing = ", ".join(f"{op} ({len(v)}x, e.g. '{v[0]}')" for op, v in sorted(ops.items()))
    return [Finding("graph.suspicious-ops", "high",
                    f"operators a plain classifier never has: {listing}", {"ops": ops})]


def scan_model(model_path, clean: ImageSet, *, eps_list=(0.1, 0.2, 0.3, 0.4), probe_steps: int = 10,
               mask_iterations: int = 300, mask_threshold: float = 0.2, top_neurons: int = 10,
               device=None, layout=None, mean=None, std=None, seed: int = 0,
               progress: bool = False) -> ScanReport:
    t0 = time.perf_counter()
    if not clean.labeled:
        raise DataError(f"{clean.source}: the scan needs labeled clean images (<class>/<image> folders)")
    m = open_model(model_path, device)
    fitted = fit_images(m.proto, clean, m.executor.device, layout=layout, mean=mean, std=std)
    num_classes = clean.num_classes
    if len(clean) < num_classes:
        raise DataError(f"{clean.source}: {len(clean)} clean images for {num_classes} classes; "
                        "the scan needs at least one image per class")
    x, y = fitted.x, fitted.y
    findings = graph_findings(m.proto)
    bar = _bar(progress, len(eps_list) * probe_steps + mask_iterations)
    tick = (lambda *_: bar.update(1)) if bar else None
    try:
        points = perturbation_probe(m.executor, m.inventory, x, y, num_classes, eps_list=eps_list,
                                    steps=probe_steps, seed=seed, callback=tick)
        mod, _ = optimize_masks(m.executor, m.inventory, x, y, eps=0.4, alpha=0.2, lr=0.2, momentum=0.9,
                                iterations=mask_iterations, batch_size=128, seed=seed, callback=tick)
    finally:
        if bar:
            bar.close()
    masks = mod.mask.detach().cpu().numpy()
    order = np.argsort(masks, kind="stable")[:top_neurons]
    lowest = [(*mod.neuron(int(i)), round(float(masks[i]), 4)) for i in order]
    below = int((masks < mask_threshold).sum())
    verdict, target, score = _verdict(points)
    if verdict == "backdoor suspected":
        findings.append(Finding("probe.collapse", "high",
                                f"under neuron perturbation {score:.0%} of the errors go to class {target}",
                                {"target": target, "share": score}))
    if below:
        findings.append(Finding("masks.near-zero", "medium" if verdict != "no backdoor found" else "info",
                                f"{below} of {masks.size} neurons get ANP masks below {mask_threshold}",
                                {"neurons": [list(n) for n in lowest[:below]]}))
    return ScanReport(str(model_path), verdict, target, score, accuracy(m.executor, x, y), points, lowest,
                      below, int(masks.size), findings, time.perf_counter() - t0)


def _verdict(points: list[ProbePoint]) -> tuple[str, int | None, float]:
    usable = [p for p in points if p.error_rate >= PROBE_MIN_ERROR and p.eps <= PROBE_MAX_EPS + 1e-9]
    if not usable:
        return "inconclusive", None, 0.0
    best = max(usable, key=lambda p: p.top_share)
    if best.top_share >= PROBE_SUSPECT_SHARE:
        return "backdoor suspected", best.top_class, best.top_share
    if best.top_share < PROBE_CLEAR_SHARE:
        return "no backdoor found", None, best.top_share
    return "inconclusive", best.top_class, best.top_share


def _bar(progress: bool, total: int):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="scan", unit="step", leave=False)
