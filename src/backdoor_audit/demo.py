"""`audit demo`: the whole path on the MNIST sample shipped with the package.

Train a BadNets model (ANP appendix setting: 3x3 white square at the bottom right, 10%
poisoned, target 0) on the attacker's 90% share, export it to ONNX, scan it (graph and Neural
Cleanse, which names the target class), repair it on 500 clean images the attacker never saw with
the method `audit repair` runs by default, and validate both files under onnxruntime. On this
model ANP leaves the backdoor in place (docs/anp-mnist-table6.md); the default removes it
(docs/repair.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .attacks.run import run_attack
from .training.train import TrainSettings
from .attacks.spec import AttackSpec
from .evaluation.evaluate import EvalResult, evaluate
from .audit.scan import ScanReport, save_reversed_triggers, scan_model
from .data import demo_sample_path, load_images
from .graph.load import load_model
from .inputs import model_preprocess
from .repair.run import RepairReport, default_method, repair_model

DEMO_SPEC = dict(attack="badnets", mode="all-to-one", target=0, num_classes=10,
                 params={"patch": "square", "size": 3, "position": "bottom-right"}, seed=0, rate=0.1)


@dataclass
class DemoResult:
    suspect: str
    repaired: str
    before: EvalResult
    after: EvalResult
    scan: ScanReport
    repair: RepairReport
    train_seconds: float
    seconds: float


def run_demo(out_dir, *, epochs: int = 15, lr: float = 0.05, method: str | None = None, options: dict | None = None,
             n_clean: int = 500, progress: bool = False, step=None) -> DemoResult:
    """Run the demo into ``out_dir``; ``step(name)`` is called as each stage starts. ``method``:
    the repair method (default: what ``audit repair`` runs without ``--method``)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = step or (lambda name: None)
    sample = demo_sample_path()
    spec = AttackSpec(**DEMO_SPEC)
    say("train a BadNets model on the attacker's share and export it to ONNX")
    settings = TrainSettings(epochs=epochs, lr=lr, progress=progress)
    summary = run_attack("mnist-cnn", sample, spec, out / "suspect.onnx", settings,
                         clean_holdout=n_clean, clean_out=out / "clean.npz")
    suspect = Path(summary["model"])
    clean = load_images(out / "clean.npz")
    say("scan the suspect model with the defender's clean images (graph and Neural Cleanse)")
    scan = scan_model(suspect, clean, detectors=("graph", "neural-cleanse"), progress=progress, seed=0)
    if method is None:
        method, defaults = default_method(has_data=True)
        options = {**defaults, **(options or {})}
    options = dict(options or {})
    if method == "nc":  # unlearn the scan's triggers rather than reverse-engineering them twice
        save_reversed_triggers(scan, out / "triggers.npz")
        options.setdefault("triggers", str(out / "triggers.npz"))
    say(f"repair it with {method} on the same clean images (no test data, no trigger)")
    rep = repair_model(suspect, clean, method, out / "repaired.onnx", options, progress=progress)
    say("validate both files under onnxruntime on the test images")
    test = load_images(sample, split="test")
    pre = model_preprocess(load_model(suspect), test)
    before = evaluate(suspect, test, pre, spec)
    after = evaluate(rep.out_path, test, pre, spec)
    return DemoResult(str(suspect), rep.out_path, before, after, scan, rep, summary["train_seconds"],
                      time.perf_counter() - t0)
