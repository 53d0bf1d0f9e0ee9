"""Would scheduling Neural Cleanse's classes (K-Arm-style successive halving) make the scan cheaper
without losing its separation? Judged from the per-class L1 traces the zoo scans recorded, with no
new scan: every class's run is deterministic, so stopping it after w steps returns its trace at w.

    python benchmarks/nc_halving.py [docs/bench-scan.jsonl docs/bench-scan-cifar10.jsonl] [--steps 100]

The schedule: every class runs ``warm`` steps; the ``keep`` share of the classes with the smallest
mask norm then runs on to ``--steps``; the others keep their norm at ``warm``. Two statistics:
NC's anomaly index over all classes as they stand ("all"), and over the continued classes only
("continued"). Printed per schedule: the cost as a share of the full run, the AUROC of the largest
index (all-to-one backdoored models against clean ones), the smallest backdoored and the largest
clean score (the margin a threshold has), and how often the top class is the target.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from backdoor_audit.audit.trigger import anomaly_index
from backdoor_audit.bench.calibration import auroc
from backdoor_audit.bench.results import read_results

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 10  # steps between the traces' checks


def load(paths: list[Path], steps: int) -> list[tuple[bool, int | None, np.ndarray]]:
    """(backdoored all-to-one?, target, traces C x checks) of every clean or all-to-one row whose
    traces reach ``steps``."""
    out = []
    for path in paths:
        for r in read_results(path).values():  # a resumed run's later line for the same scan wins
            nc = r.get("detectors", {}).get("neural-cleanse")
            if r.get("status") != "ok" or nc is None or r["mode"] == "all-to-all":
                continue
            traces = np.array(nc["evidence"]["l1_trace"], dtype=float)
            if traces.ndim == 2 and traces.shape[1] >= steps // PERIOD:
                out.append((r["mode"] == "all-to-one", r.get("target"), traces))
    return out


def judge(rows, warm: int, keep: float, steps: int, continued_only: bool) -> dict:
    full, w = steps // PERIOD - 1, warm // PERIOD - 1
    pos, neg, right, cost = [], [], [], []
    for backdoored, target, tr in rows:
        n = len(tr)
        k = max(3, int(np.ceil(keep * n)))
        cont = np.argsort(tr[:, w])[:k]
        norms = tr[:, w].copy()
        norms[cont] = tr[cont, full]
        classes = cont if continued_only else np.arange(n)
        index = anomaly_index(norms[classes])
        score, top = float(index.max()), int(classes[int(index.argmax())])
        cost.append((n * warm + k * (steps - warm)) / (n * steps))
        (pos if backdoored else neg).append(score)
        if backdoored:
            right.append(top == target)
    return {"cost": float(np.mean(cost)), "auroc": auroc(pos, neg), "min_backdoored": min(pos),
            "max_clean": max(neg), "target_right": float(np.mean(right))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", type=Path,
                    default=[ROOT / "docs" / "bench-scan.jsonl", ROOT / "docs" / "bench-scan-cifar10.jsonl"])
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    rows = load(args.results, args.steps)
    print(f"{sum(b for b, _, _ in rows)} backdoored and {sum(not b for b, _, _ in rows)} clean scans, "
          f"NC at {args.steps} steps per class\n")
    print("| schedule | index over | cost | AUROC | smallest backdoored | largest clean | top class = target |")
    print("|---|---|---|---|---|---|---|")
    f = judge(rows, args.steps, 1.0, args.steps, False)
    print(f"| every class {args.steps} steps | all | 1.00 | {f['auroc']:.3f} | {f['min_backdoored']:.2f} | "
          f"{f['max_clean']:.2f} | {f['target_right']:.2f} |")
    for warm in (20, 30, 50):
        for keep in (0.3, 0.5, 0.7):
            for continued in (False, True):
                f = judge(rows, warm, keep, args.steps, continued)
                print(f"| {warm} steps, then {keep:.0%} of the classes | {'continued' if continued else 'all'} | "
                      f"{f['cost']:.2f} | {f['auroc']:.3f} | {f['min_backdoored']:.2f} | {f['max_clean']:.2f} | "
                      f"{f['target_right']:.2f} |")


if __name__ == "__main__":
    main()
