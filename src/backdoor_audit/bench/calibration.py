"""Calibrating the scan's detectors on a zoo: thresholds fitted on one split of the models, judged
on the other.

Each row is one scanned model (``bench.scan``): whether it is backdoored and its target (known to
the benchmark, never to a detector), and per detector the score and the class it points at. The
split is fixed by rule, not drawn: within each (dataset, clean or backdoored) group the models are
sorted by id and alternate between the calibration split and the held-out one, so both splits get
clean models and every kind of attack. A threshold is the midpoint between two calibration scores
that maximises TPR - FPR (Youden's J); ties go to the lower false-positive rate, then to the higher
threshold. The held-out split then gives the AUROC (threshold-free), the TPR and FPR at the fitted
threshold, and how often the detector's top class is the target.

All-to-one backdoored models are the positives; all-to-all models have no single target and are
reported apart (how many the threshold flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..audit.scan import WEIGHT_DETECTORS

SPLITS = ("calibration", "held-out")


def auroc(pos, neg) -> float | None:
    """Area under the ROC curve: the chance that a positive scores above a negative (ties count
    half); None when either side is empty."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def fit_threshold(pos, neg) -> float | None:
    """The threshold (flag when score > threshold) with the largest TPR - FPR on these scores; ties
    to the lower FPR, then the higher threshold. None without both classes."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if not len(pos) or not len(neg):
        return None
    values = np.unique(np.concatenate([pos, neg]))
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    best = None
    for c in cuts:
        tpr, fpr = float((pos > c).mean()), float((neg > c).mean())
        key = (round(tpr - fpr, 9), -fpr, c)  # rounded: 1 - 1/3 and 2/3 are the same J
        if best is None or key > best[0]:
            best = (key, c)
    return float(best[1])


def assign_splits(rows: list[dict]) -> dict[str, str]:
    """Model id -> "calibration" | "held-out": alternating by sorted id within each (set, clean or
    backdoored) group."""
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["attack"] == "clean"), []).append(r["model"])
    out = {}
    for ids in groups.values():
        for i, m in enumerate(sorted(set(ids))):
            out[m] = SPLITS[i % 2]
    return out


@dataclass
class DetectorFit:
    detector: str
    scope: str  # a dataset name, or "all"
    threshold: float | None
    paper_threshold: float | None
    calibration: dict  # n_clean, n_backdoored, auroc
    held_out: dict  # n_clean, n_backdoored, auroc, tpr, fpr, target_right, all_to_all_flagged

    def to_dict(self) -> dict:
        return asdict(self)


def score_of(det: dict, detector: str) -> float | None:
    """A row's score of ``detector``. MM-BD's is -log10 p from its evidence, so rows recorded when
    its score was 1 - p (which saturates at 1) rank the same as new ones."""
    if detector == "mm-bd" and "p_value" in det.get("evidence", {}):
        from ..audit.detectors import neg_log10

        return neg_log10(det["evidence"]["p_value"])
    return det["score"]


def _scores(rows, detector):
    has = [r for r in rows if detector in r["detectors"] and score_of(r["detectors"][detector], detector) is not None]
    pos = [r for r in has if r["mode"] == "all-to-one"]
    neg = [r for r in has if r["attack"] == "clean"]
    a2a = [r for r in has if r["mode"] == "all-to-all"]
    s = lambda rs: [score_of(r["detectors"][detector], detector) for r in rs]  # noqa: E731
    return pos, neg, a2a, s


def _paper_threshold(rows: list[dict], detector: str) -> float | None:
    """The paper's threshold on the score: MM-BD's from its registry default (rows may hold the
    old 1 - p scale), the others' from the rows."""
    if detector == "mm-bd":
        from ..audit.detectors import DETECTORS, neg_log10

        return neg_log10(DETECTORS.get("mm-bd").resolve()["p_value"])
    return next((r["detectors"][detector]["threshold"] for r in rows if detector in r["detectors"]), None)


def fit_detector(rows: list[dict], detector: str, scope: str = "all", threshold: float | None = None) -> DetectorFit:
    """Fit ``detector``'s threshold on the calibration split of ``rows`` (or take ``threshold``) and
    judge it on the other."""
    split = assign_splits(rows)
    cal = [r for r in rows if split[r["model"]] == "calibration"]
    held = [r for r in rows if split[r["model"]] == "held-out"]
    pos, neg, _, s = _scores(cal, detector)
    if threshold is None:
        threshold = fit_threshold(s(pos), s(neg))
    paper = _paper_threshold(rows, detector)
    calibration = {"n_clean": len(neg), "n_backdoored": len(pos), "auroc": auroc(s(pos), s(neg))}
    return DetectorFit(detector, scope, threshold, paper, calibration, judge(held, detector, threshold))


def judge(rows: list[dict], detector: str, threshold: float | None) -> dict:
    """``detector`` on ``rows`` at ``threshold``: AUROC, TPR and FPR, all-to-all models flagged, and
    how often its top class is the target of an all-to-one model."""
    hp, hn, ha, s = _scores(rows, detector)
    out = {"n_clean": len(hn), "n_backdoored": len(hp), "auroc": auroc(s(hp), s(hn))}
    if threshold is not None:
        out["tpr"] = float(np.mean([v > threshold for v in s(hp)])) if hp else None
        out["fpr"] = float(np.mean([v > threshold for v in s(hn)])) if hn else None
        out["all_to_all_flagged"] = f"{sum(v > threshold for v in s(ha))} of {len(ha)}"
    tops = [(r["detectors"][detector].get("top_class"), r["target"]) for r in hp]
    right = [top == target for top, target in tops if top is not None]  # bn-kl names no class
    out["target_right"] = float(np.mean(right)) if right else None
    return out


def judge_shipped(rows: list[dict], shipped: dict[str, float]) -> list[tuple[str, float, dict]]:
    """Every row judged at the shipped score thresholds (``shipped``: detector -> threshold on its
    score), per detector and for the verdict rule: for models the shipped fit never saw, a
    held-out test of the whole set."""
    out = [(d, t, judge(rows, d, t)) for d, t in shipped.items() if any(d in r["detectors"] for r in rows)]
    both = {d: t for d, t in shipped.items() if d in WEIGHT_DETECTORS}
    if len(both) == len(WEIGHT_DETECTORS):
        out.append((VERDICT, 1.0, judge(verdict_rows(rows, both), VERDICT, 1.0)))
    return out


#: the scan's verdict with data (``audit.scan.decide``): backdoored when Neural Cleanse or MM-BD is over
#: its threshold, the target named by the one furthest over it
VERDICT = "verdict (nc or mm-bd)"


def verdict_rows(rows: list[dict], thresholds: dict[str, float]) -> list[dict]:
    """``rows`` with one score, the verdict's: the largest score / threshold over the detectors of
    ``thresholds`` that scored the row (flagged above 1), and that detector's top class."""
    out = []
    for r in rows:
        parts = [(score_of(r["detectors"][d], d) / t, r["detectors"][d].get("top_class"))
                 for d, t in thresholds.items()
                 if d in r["detectors"] and score_of(r["detectors"][d], d) is not None]
        if parts:
            score, top = max(parts, key=lambda p: p[0])
            out.append({**r, "detectors": {VERDICT: {"score": score, "top_class": top, "threshold": 1.0}}})
    return out


def fit_verdict(rows: list[dict], fits: list[DetectorFit], scope: str = "all") -> DetectorFit | None:
    """The verdict rule judged as one detector: NC's and MM-BD's thresholds fitted on the calibration
    split (``fits`` of ``scope``), the combined score held out at 1. None unless both were fitted."""
    thresholds = {f.detector: f.threshold for f in fits if f.scope == scope and f.detector in WEIGHT_DETECTORS
                  and f.threshold is not None and f.threshold > 0}
    if len(thresholds) < len(WEIGHT_DETECTORS):
        return None
    return fit_detector(verdict_rows(rows, thresholds), VERDICT, scope, threshold=1.0)


def calibrate(rows: list[dict], detectors: list[str]) -> list[DetectorFit]:
    """Per detector: a fit over every dataset's models, then one per dataset; then the verdict rule
    (NC or MM-BD) with those thresholds, where both detectors ran."""
    fits = []
    sets = sorted({r["set"] for r in rows})
    scopes = [("all", rows)] + ([(name, [r for r in rows if r["set"] == name]) for name in sets]
                                if len(sets) > 1 else [])
    for d in detectors:
        fits += [fit_detector(rs, d, scope) for scope, rs in scopes]
    for scope, rs in scopes:
        verdict = fit_verdict(rs, fits, scope)
        if verdict is not None:
            fits.append(verdict)
    return fits


def nc_stopped_at(row: dict, check: int) -> tuple[float, int] | None:
    """Neural Cleanse's score (largest anomaly index) and top class had its run stopped at its
    ``check``-th check (``period`` steps each), from the per-class L1 traces the scan recorded; the
    run is deterministic, so this is what the shorter run returns. None without traces."""
    from ..audit.trigger import anomaly_index

    ev = row["detectors"].get("neural-cleanse", {}).get("evidence", {})
    traces = ev.get("l1_trace")
    if not traces or any(t is None or len(t) <= check for t in traces):
        return None  # no traces, or a run shorter than that: not judged on a run it did not have
    norms = np.array([t[check] for t in traces])
    index = anomaly_index(norms)
    return float(index.max()), int(index.argmax())


def nc_at_steps(rows: list[dict], steps: int, period: int = 10) -> list[dict]:
    """``rows`` with Neural Cleanse's score and top class replaced by what a run of ``steps`` steps
    per class gives (``nc_stopped_at``). A row whose run was shorter than that, or recorded no
    traces, loses its NC result rather than being judged on a run it did not have."""
    check = steps // period - 1
    out = []
    for r in rows:
        det = r["detectors"].get("neural-cleanse")
        if det is None:
            out.append(r)
            continue
        judged = nc_stopped_at(r, check)
        others = {k: v for k, v in r["detectors"].items() if k != "neural-cleanse"}
        if judged is not None:
            score, top = judged
            others["neural-cleanse"] = {**det, "score": score, "top_class": top,
                                        "flagged": score > det["threshold"],
                                        "target": top if score > det["threshold"] else None}
        out.append({**r, "detectors": others})
    return out


def nc_step_curve(rows: list[dict], checks: list[int]) -> list[dict]:
    """Per number of checks: NC's AUROC on the calibration and the held-out split, and how often
    the top class is the target on the held-out one, had every run stopped there."""
    split = assign_splits(rows)
    out = []
    for c in checks:
        entry = {"check": c}
        for name in SPLITS:
            judged = [(r, nc_stopped_at(r, c)) for r in rows if split[r["model"]] == name]
            judged = [(r, j) for r, j in judged if j is not None]
            pos = [(r, j) for r, j in judged if r["mode"] == "all-to-one"]
            entry[name] = auroc([j[0] for _, j in pos], [j[0] for r, j in judged if r["attack"] == "clean"])
            if name == "held-out":
                entry["target_right"] = float(np.mean([j[1] == r["target"] for r, j in pos])) if pos else None
        out.append(entry)
    return out


# what a fitted threshold on a detector's score sets: (option, value from the threshold)
OPTION_OF = {
    "neural-cleanse": ("anomaly", lambda t: t),  # flags when the largest anomaly index > anomaly
    "mm-bd": ("p_value", lambda t: 10.0 ** -t),  # score -log10 p; flags when p <= p_value
    "bn-kl": ("outlier", lambda t: t),  # flags when the most outlying channel's robust z > outlier
}


def thresholds_doc(fits: list[DetectorFit], *, fitted_on: str, command: str, previous: dict | None = None,
                   nc_steps: int | None = None) -> dict:
    """The shipped thresholds (``assets/scan-thresholds.json``): per detector the option its fitted
    threshold sets, from the fit over every set's calibration split, with what it was fitted on
    and by which command. The detectors of ``previous`` that this fit does not cover are kept.
    ``nc_steps``: the run length Neural Cleanse's scores were judged at (``nc_at_steps``), recorded
    with its entry."""
    out = {"detectors": dict((previous or {}).get("detectors", {}))}
    for f in fits:
        if f.scope != "all" or f.threshold is None or f.detector not in OPTION_OF:
            continue
        option, convert = OPTION_OF[f.detector]
        out["detectors"][f.detector] = {
            "option": option, "value": float(f"{convert(f.threshold):.4g}"), "score_threshold": f.threshold,
            "paper_value": float(f"{convert(f.paper_threshold):.4g}") if f.paper_threshold is not None else None,
            "calibration": f.calibration, "held_out": f.held_out, "fitted_on": fitted_on, "command": command}
        if f.detector == "neural-cleanse" and nc_steps is not None:  # its scores were judged at that run length
            out["detectors"][f.detector]["steps"] = nc_steps
            out["detectors"][f.detector]["fitted_on"] += (f" (each class's run judged at {nc_steps} steps, "
                                                          "from the L1 traces)")
    return out
