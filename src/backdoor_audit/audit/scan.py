"""`audit scan`: run the detectors the data allows and combine them into one verdict.

The defender has the suspect file and, optionally, a small clean set; nothing else. Without data
the graph is checked and MM-BD optimises synthetic images; with labeled clean images Neural
Cleanse and ANP's probe run too.

The verdict (docs/scan.md), in this order:
1. a hidden trigger branch in the graph: "backdoor suspected", whatever the weights say (other
   graph or file hazards, foreign or code-running operators, unsafe external data, do not make a
   backdoor verdict but exit 1 on their own; with unsafe external data nothing it points at is
   read and the verdict is "inconclusive");
2. the weight detectors that ran, Neural Cleanse (anomaly index of the classes' trigger norms)
   and MM-BD (order-statistic p-value of the classes' maximum margins): if either is over its
   threshold, "backdoor suspected", with the target class of the one furthest over its own
   threshold (score / threshold); if all that ran are under, "no backdoor found". Either one
   alone, not NC first: on the CIFAR-10 zoo NC misses the input-aware backdoor (index 1.16) that
   MM-BD names (p 1.2e-9, class 0), and neither flags a clean model of the MNIST or CIFAR-10 zoo
   at its shipped threshold (docs/scan.md);
3. otherwise ANP's probe, when it ran and could judge (it is evidence beside NC, not a verdict of
   its own, when both ran: on CIFAR-10 it flags clean models too);
4. otherwise "inconclusive": the scan never calls a model clean that it could not judge.
The thresholds are those the zoo calibration fitted on its calibration split and the package ships
(``assets/scan-thresholds.json``, written by `audit bench scan --write-thresholds`; docs/scan.md
says on what), for the detectors it covers; the papers' defaults otherwise, or with
``calibrated=False`` (`--thresholds paper`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import ImageSet
from ..errors import DataError, SpecError
from ..graph.load import load_model
from ..graph.model import accuracy, open_model
from ..inputs import blind_preprocess, fit_images
from ..util import peak_rss_mb
from .detectors import DETECTORS, Detection, ScanContext, run_detector
from .hazards import Finding, external_data

SEVERITIES = ("info", "low", "medium", "high", "critical")
# With data NC and MM-BD both judge (either flags: step 2 above); a CIFAR-10 scan with both is 213 s on
# 2 cores (NC 125 s, MM-BD 85 s). The ANP probe and BAN separate nothing on the zoo (docs/scan.md):
# `--detectors +anp-probe,ban` adds them to the default.
WEIGHT_DETECTORS = ("neural-cleanse", "mm-bd")
WITH_DATA = ("graph", "neural-cleanse", "mm-bd", "bn-kl")
WITHOUT_DATA = ("graph", "mm-bd")


@dataclass
class ScanReport:
    model: str
    verdict: str  # "backdoor suspected" | "no backdoor found" | "inconclusive"
    suspected_target: int | None
    decided_by: str | None  # the detector whose judgement is the verdict
    reason: str
    clean_accuracy: float | None
    n_clean: int
    detections: list[Detection]
    seconds: float
    findings: list[Finding] = field(default_factory=list)
    peak_rss_mb: float = float("nan")  # of the scanning process, at the end of the scan

    @property
    def backdoor_found(self) -> bool:
        return self.verdict == "backdoor suspected"

    @property
    def hazard_found(self) -> bool:
        """A critical or high finding about the file or graph itself (exit 1 with or without a verdict)."""
        return self.hazard_at_least("high")

    def hazard_at_least(self, severity: str) -> bool:
        """A finding about the file or graph itself of ``severity`` or worse (the detectors' findings
        count through the verdict, not on their own)."""
        return any(f.id.startswith(("graph.", "file.")) and SEVERITIES.index(f.severity) >= SEVERITIES.index(severity)
                   for f in self.findings)

    def detection(self, name: str) -> Detection | None:
        return next((d for d in self.detections if d.detector == name), None)

    def to_dict(self) -> dict:
        out = asdict(self)
        for d in out["detections"]:
            d.pop("artifacts", None)
        return out


def scan_targets(path) -> list:
    """The files a scan of ``path`` covers: the file itself, or every .onnx file under a folder
    (sorted; DataError when there is none)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*.onnx") if p.is_file())
    if not files:
        raise DataError(f"{path}: no .onnx files in this folder")
    return files


def save_reversed_triggers(report: ScanReport, path) -> None:
    """Write the Neural Cleanse triggers of ``report`` (every class's) for `audit repair --method nc
    --param triggers=PATH`."""
    from .trigger import save_triggers

    nc = report.detection("neural-cleanse")
    if nc is None:
        raise SpecError("--save-triggers needs the neural-cleanse detector (and --data)")
    save_triggers(path, nc.artifacts["triggers"])


THRESHOLDS = "scan-thresholds.json"  # in the package's assets: the zoo calibration's fitted thresholds


@functools.lru_cache(maxsize=1)
def shipped_calibration() -> dict[str, dict]:
    """The shipped calibration's entry per detector (``assets/scan-thresholds.json``, written by
    `audit bench scan --write-thresholds`: option, value, score_threshold, what it was fitted on);
    empty when none is shipped. Read once per process (a folder scan asks for every file); callers
    do not change it."""
    import json
    from importlib import resources

    path = resources.files("backdoor_audit").joinpath("assets", THRESHOLDS)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["detectors"]


def calibrated_options() -> dict[str, dict]:
    """The detector options the shipped calibration sets, e.g. ``{"neural-cleanse": {"anomaly": 2.6}}``."""
    return {name: {d["option"]: d["value"]} for name, d in shipped_calibration().items()}


def default_detectors(has_data: bool) -> tuple[str, ...]:
    return WITH_DATA if has_data else WITHOUT_DATA


def parse_detectors(text: str | None, has_data: bool) -> tuple[str, ...] | None:
    """``--detectors``: comma-separated names, or ``+a,b`` for the default set plus a and b; None
    (or empty) for the default."""
    if not text or not text.strip():
        return None
    text = text.strip()
    names = [n.strip() for n in text.lstrip("+").split(",") if n.strip()]
    if text.startswith("+"):
        base = default_detectors(has_data)
        return base + tuple(n for n in dict.fromkeys(names) if n not in base)
    return tuple(names)


def scan_model(model_path, clean: ImageSet | None = None, *, detectors: tuple[str, ...] | None = None,
               options: dict[str, dict] | None = None, device=None, layout=None, mean=None, std=None, seed: int = 0,
               progress: bool = False, calibrated: bool = True) -> ScanReport:
    """Scan ``model_path`` with ``detectors`` (default: every one the data allows); ``options`` per
    detector name, over the shipped calibration's thresholds (``calibrated``; else the papers')."""
    t0 = time.perf_counter()
    names = tuple(detectors or default_detectors(clean is not None))
    for name in names:
        DETECTORS.get(name)  # unknown names fail before any work
    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise SpecError(f"options given for detectors that do not run: {', '.join(sorted(unknown))}")
    base = calibrated_options() if calibrated else {}
    options = {n: {**base.get(n, {}), **options.get(n, {})} for n in names if n in base or n in options}
    needs_data = [n for n in names if "none" not in DETECTORS.get(n).needs]
    if clean is not None:
        clean.require_labels("the scan", " (without --data it runs its data-free detectors)")
    if needs_data and clean is None:
        raise DataError(f"detector {needs_data[0]} needs labeled clean images: give --data")
    header = load_model(model_path, check=False, external=False)
    file_findings = external_data(header, model_path)
    unsafe = [f for f in file_findings if f.severity == "critical"]
    if unsafe:  # read nothing it points at: the graph alone is judged, on the file's own bytes
        ctx = ScanContext(str(model_path), header, seed=seed, progress=progress)
        results = [run_detector("graph", ctx)] if "graph" in names else []
        verdict, target, by, reason = decide(results)
        if verdict != "backdoor suspected":
            verdict, by = "inconclusive", None
            reason = f"unsafe external data ({len(unsafe)} tensor(s)): no weight was read, so none was judged"
        return ScanReport(str(model_path), verdict, target, by, reason, None, 0, results, time.perf_counter() - t0,
                          _sorted(file_findings + [f for d in results for f in d.findings]), peak_rss_mb())
    model = open_model(model_path, device) if any(n != "graph" for n in names) else None  # read once
    ctx = ScanContext(str(model_path), model.proto if model else load_model(model_path), model=model, seed=seed,
                      progress=progress)
    acc = None
    if needs_data:
        fitted = fit_images(ctx.proto, clean, model.executor.device, layout=layout, mean=mean, std=std)
        if len(clean) < clean.num_classes:
            raise DataError(f"{clean.source}: {len(clean)} clean images for {clean.num_classes} classes; "
                            "the scan needs at least one image per class")
        ctx.x, ctx.y, ctx.raw, ctx.preprocess = fitted.x, fitted.y, fitted.raw, fitted.preprocess.torch
        ctx.num_classes, ctx.pixel_shape = clean.num_classes, tuple(fitted.raw.shape[1:])
        acc = accuracy(model.executor, ctx.x, ctx.y)
    elif model is not None:  # data-free detectors that run the model on synthetic pixels
        pre, ctx.pixel_shape = blind_preprocess(ctx.proto, layout=layout, mean=mean, std=std)
        ctx.preprocess = pre.torch
        probe = torch.rand((1, *ctx.pixel_shape)).to(model.executor.device)
        with torch.no_grad():
            ctx.num_classes = int(model.executor(ctx.preprocess(probe)).reshape(1, -1).shape[1])
    results = [run_detector(n, ctx, options.get(n)) for n in names]
    verdict, target, by, reason = decide(results)
    findings = _sorted(file_findings + [f for d in results for f in d.findings])
    return ScanReport(str(model_path), verdict, target, by, reason, acc, 0 if clean is None else len(clean),
                      results, time.perf_counter() - t0, findings, peak_rss_mb())


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))


CLEARED = {
    "neural-cleanse": lambda d: f"no class's reverse-engineered trigger is an outlier (largest anomaly index "
                                f"{d.score:.2f} <= {d.threshold})",
    "mm-bd": lambda d: f"no class's maximum margin is an outlier (p = {d.evidence['p_value']:.2g} > "
                       f"{d.options['p_value']:.2g})",
}


def over_threshold(d: Detection) -> float:
    """How far a detection is over its threshold, comparable across detectors: score / threshold
    (both detectors' thresholds are positive: an anomaly index, a -log10 p)."""
    return d.score / d.threshold if d.score is not None and d.threshold else float("-inf")


def decide(results: list[Detection]) -> tuple[str, int | None, str | None, str]:
    """(verdict, suspected target, deciding detector, one-line reason) from the detections."""
    by = {d.detector: d for d in results}
    graph = by.get("graph")
    branch = [f for f in graph.findings if f.id == "graph.trigger-branch"] if graph is not None else []
    if branch:
        return "backdoor suspected", None, "graph", branch[0].message
    ran = [by[name] for name in WEIGHT_DETECTORS if name in by]
    flagged = [d for d in ran if d.flagged]
    if flagged:  # the detector furthest over its own threshold names the target
        d = max(flagged, key=over_threshold)
        return "backdoor suspected", d.target, d.detector, d.findings[0].message
    if ran:
        return ("no backdoor found", None, ", ".join(d.detector for d in ran),
                "; ".join(CLEARED[d.detector](d) for d in ran))
    probe = by.get("anp-probe")
    if probe is not None and probe.flagged is not None:
        if probe.flagged:
            return "backdoor suspected", probe.target, "anp-probe", probe.findings[0].message
        return ("no backdoor found", None, "anp-probe",
                f"under neuron perturbation at most {probe.score:.0%} of the errors go to one class")
    if probe is not None:
        return "inconclusive", None, None, "no small perturbation budget caused enough errors to judge"
    return "inconclusive", None, None, "only the graph was checked (no weight detector ran; give --data or add mm-bd)"
