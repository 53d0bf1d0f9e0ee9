"""`audit bench scan`: `audit scan` on every zoo model (and BN-folded copies), resumably, then the
detectors' calibration on one split of the models and their judgement on the other.

Each (model file, detectors, options, clean set) is one job, run as its own `audit scan --json`
process on the zoo's defender images (``<set>/clean.npz``), so its wall time and peak memory are
its own. The scan sees only the file and those images; the benchmark adds what it knows of the
model (clean or backdoored, the target) to the row afterwards, for ``bench.calibration``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..audit.scan import shipped_calibration
from .calibration import assign_splits, calibrate, judge_shipped, nc_at_steps, nc_step_curve, score_of
from ..errors import SpecError
from ..graph.load import load_model
from ..graph.neurons import build_inventory
from ..util import first_line, sha256_file
from ..zoo import read_manifest
from .repair import fold_copy
from .results import append_result, fmt, read_results

SCORED = ("neural-cleanse", "mm-bd", "anp-probe", "bn-kl")  # the detectors with a backdoor score
NC_PERIOD = 10  # steps between Neural Cleanse's checks (reverse_trigger's period)
NC_STEPS = (50, 100, 150, 200, 300)  # shorter runs judged from the traces


@dataclass(frozen=True)
class ScanJob:
    model_id: str
    variant: str  # "as built" | "folded"
    path: Path
    row: dict  # the manifest row
    zoo: Path  # the zoo folder it is in (its set's defender images are there)

    def key(self, model_sha: str, detectors: str, options: list[str], clean_sha: str, n_clean: int) -> str:
        text = json.dumps([self.model_id, self.variant, model_sha, detectors, sorted(options), clean_sha, n_clean])
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def plan_scans(zoo_dirs: list[Path], only: list[str] | None, folded: bool) -> list[ScanJob]:
    """Every model of these zoos matching ``only`` (and the folded copy of each that keeps BN), by
    set then id. A model id in two zoos is an error: the calibration keys rows by id."""
    order = {"mnist": 0, "gtsrb": 1, "cifar10": 2}
    found: dict[str, tuple[Path, dict]] = {}
    for zoo in map(Path, zoo_dirs):
        for r in read_manifest(zoo).values():
            if only and not any(fnmatch.fnmatch(r["id"], g) for g in only):
                continue
            if r["id"] in found:
                raise SpecError(f"model {r['id']} is in both {found[r['id']][0]} and {zoo}")
            found[r["id"]] = (zoo, r)
    jobs = []
    for zoo, r in sorted(found.values(), key=lambda zr: (order.get(zr[1]["set"], 9), zr[1]["id"])):
        src = zoo / r["file"]
        jobs.append(ScanJob(r["id"], "as built", src, r, zoo))
        if folded and build_inventory(load_model(src)).batchnorm_state == "kept":
            jobs.append(ScanJob(r["id"], "folded", zoo / ".folded" / r["file"], r, zoo))
    return jobs


def _scan_process(path: Path, clean: Path | None, n_clean: int, detectors: str | None,
                  options: list[str]) -> tuple[dict, float]:
    # the papers' thresholds: the rows must not depend on a calibration fitted from them
    cmd = [sys.executable, "-m", "backdoor_audit.cli", "scan", str(path), "--json", "--thresholds", "paper"]
    if clean is not None:
        cmd += ["--data", str(clean), "--n-clean", str(n_clean)]
    if detectors:
        cmd += ["--detectors", detectors]
    for o in options:
        cmd += ["--param", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return json.loads(proc.stdout), wall


def _cost(rows: list[dict], detector: str) -> str:
    """A detector's mean seconds and largest peak memory over the rows that ran it ("-" for the peak
    where the rows predate the per-detector peak)."""
    rs = [r["detectors"][detector] for r in rows if detector in r["detectors"]]
    if not rs:
        return "-"
    peaks = [r["peak_mb"] for r in rs if r.get("peak_mb") is not None and not np.isnan(r["peak_mb"])]
    return f"{np.mean([r['seconds'] for r in rs]):.1f} / {f'{max(peaks):.0f}' if peaks else '-'}"


def scan_row(report: dict) -> dict:
    """What a calibration needs of a scan report: per scored detector its score, threshold, flag,
    target, top class and evidence (NC's per-class L1 traces let a shorter run be judged without
    running it again), and the verdict."""
    dets = {}
    for d in report["detections"]:
        if d["detector"] in SCORED:
            dets[d["detector"]] = {"score": d["score"], "threshold": d["threshold"], "flagged": d["flagged"],
                                   "target": d["target"], "top_class": d["evidence"].get("top_class"),
                                   "seconds": round(d["seconds"], 2),
                                   "peak_mb": round(d.get("peak_mb", float("nan")), 1),
                                   "evidence": {k: v for k, v in d["evidence"].items() if k != "probe"}}
    return {"verdict": report["verdict"], "suspected_target": report["suspected_target"],
            "decided_by": report["decided_by"], "detectors": dets, "seconds": round(report["seconds"], 2),
            "peak_mb": round(report["peak_rss_mb"], 1), "clean_acc": report["clean_accuracy"]}


def run_scans(jobs: list[ScanJob], results: Path, *, n_clean: int = 500, data: bool = True,
              detectors: str | None = None, options: list[str] | None = None,
              on_event: Callable[[str, ScanJob, dict | None], None] | None = None) -> list[dict]:
    """Scan every job not yet in ``results`` (JSON lines, appended as each finishes); return the
    rows of these jobs."""
    options = list(options or [])
    say = on_event or (lambda *a: None)
    done = read_results(results)
    rows = []
    for job in jobs:
        if job.variant == "folded":
            fold_copy(job.zoo / job.row["file"], job.path)
        clean = job.zoo / job.row["set"] / "clean.npz" if data else None
        key = job.key(sha256_file(job.path), detectors or ("default+data" if data else "default"), options,
                      sha256_file(clean) if clean else "", n_clean if data else 0)
        if key in done and done[key]["status"] == "ok":
            rows.append(done[key])
            say("skip", job, done[key])
            continue
        say("start", job, None)
        row = {"key": key, "model": job.model_id, "variant": job.variant, "set": job.row["set"],
               "attack": job.row["attack"], "mode": job.row["mode"], "target": job.row.get("target"),
               "n_clean": n_clean if data else 0, "options": options, "tool": __version__,
               "threads": torch.get_num_threads()}
        try:
            report, wall = _scan_process(job.path, clean, n_clean, detectors, options)
            row.update(scan_row(report), wall=round(wall, 1), status="ok")
        except Exception as exc:  # noqa: BLE001  one failed scan is one row
            row.update(status="failed", error=first_line(exc))
        append_result(results, row)
        rows.append(row)
        say("done", job, row)
    return rows


# ------------------------------------------------------------------------------------ the tables
def markdown(rows: list[dict], nc_steps: int | None = None) -> str:
    """Per-model rows with their split, then per detector the fitted threshold and the held-out
    figures, over every set and per set. With ``nc_steps``, Neural Cleanse's scores and fits are
    those of runs stopped there (from the traces); the step curve always uses the whole runs."""
    rows = [r for r in rows if r["status"] == "ok"]
    whole = rows
    if nc_steps is not None:
        rows = nc_at_steps(rows, nc_steps, NC_PERIOD)
    split = assign_splits(rows)
    names = [d for d in SCORED if any(d in r["detectors"] for r in rows)]
    head = " | ".join(f"{d} score (top class)" for d in names)
    lines = [f"| model | file | split | truth | verdict | {head} | wall s | peak MB |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        truth = "clean" if r["attack"] == "clean" else (f"target {r['target']}" if r["mode"] == "all-to-one"
                                                          else "all-to-all")
        verdict = r["verdict"] + ("" if r["suspected_target"] is None else f" ({r['suspected_target']})")
        cells = []
        for d in names:
            det = r["detectors"].get(d)
            top = "-" if det is None or det["top_class"] is None else det["top_class"]
            cells.append("-" if det is None else f"{fmt(score_of(det, d))} ({top})")
        lines.append(f"| {r['model']} | {r['variant']} | {split[r['model']]} | {truth} | {verdict} | "
                     f"{' | '.join(cells)} | {r['wall']:.0f} | {r['peak_mb']:.0f} |")
    stopped = "" if nc_steps is None else (f" Neural Cleanse judged at {nc_steps} steps per class, from the "
                                           "traces (the verdict column is the recorded run's).")
    lines += ["", "Thresholds fitted on the calibration split, judged on the held-out split "
              f"(all-to-one backdoored models against clean ones).{stopped}", "",
              "| detector | models of | paper threshold | fitted threshold | calibration AUROC | held-out AUROC | "
              "held-out TPR | held-out FPR | top class = target | all-to-all flagged | held-out clean / backdoored |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in calibrate(rows, names):
        h = f.held_out
        lines.append(f"| {f.detector} | {f.scope} | {fmt(f.paper_threshold, 3)} | {fmt(f.threshold, 3)} | "
                     f"{fmt(f.calibration['auroc'], 3)} | {fmt(h['auroc'], 3)} | {fmt(h.get('tpr'))} | "
                     f"{fmt(h.get('fpr'))} | {fmt(h['target_right'])} | {h.get('all_to_all_flagged', '-')} | "
                     f"{h['n_clean']} / {h['n_backdoored']} |")
    shipped = {name: d["score_threshold"] for name, d in shipped_calibration().items()}
    if shipped:
        lines += ["", "Every row judged at the thresholds the package ships (assets/scan-thresholds.json; a held-out "
                  "test of any model they were not fitted on):", "",
                  "| detector | shipped threshold on the score | AUROC | TPR | FPR | top class = target | "
                  "all-to-all flagged | clean / backdoored |", "|---|---|---|---|---|---|---|---|"]
        for d, t, h in judge_shipped(rows, shipped):
            lines.append(f"| {d} | {fmt(t, 3)} | {fmt(h['auroc'], 3)} | {fmt(h.get('tpr'))} | {fmt(h.get('fpr'))} | "
                         f"{fmt(h['target_right'])} | {h.get('all_to_all_flagged', '-')} | "
                         f"{h['n_clean']} / {h['n_backdoored']} |")
    lines += ["", "Cost per scan (mean over the rows; one process per scan, so the peak memory is the whole scan's):",
              "", "| set | scans | " + " | ".join(f"{d} s / peak MB" for d in names) + " | scan wall s | peak MB |",
              "|---|---|" + "---|" * len(names) + "---|---|"]
    for name in sorted({r["set"] for r in rows}):
        rs = [r for r in rows if r["set"] == name]
        secs = [_cost(rs, d) for d in names]
        lines.append(f"| {name} | {len(rs)} | {' | '.join(secs)} | {np.mean([r['wall'] for r in rs]):.0f} | "
                     f"{max(r['peak_mb'] for r in rs):.0f} (max) |")
    curve = nc_step_curve(whole, [s // NC_PERIOD - 1 for s in NC_STEPS])
    if any(c["calibration"] is not None for c in curve):
        lines += ["", "Neural Cleanse had every class's run stopped after fewer steps (from the recorded L1 traces; "
                  "the run is deterministic, so this is what the shorter run gives):", "",
                  "| steps per class | calibration AUROC | held-out AUROC | held-out top class = target |",
                  "|---|---|---|---|"]
        for steps, c in zip(NC_STEPS, curve):
            lines.append(f"| {steps} | {fmt(c['calibration'], 3)} | {fmt(c['held-out'], 3)} | "
                         f"{fmt(c['target_right'])} |")
    return "\n".join(lines) + "\n"
