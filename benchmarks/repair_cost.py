"""What a repair costs, in training steps of the same model: one command, one table.

    python benchmarks/repair_cost.py [--files zoo/cifar10/badnets-t0-s0.onnx ...] [--clean zoo/cifar10/clean.npz]

Per file (BN kept, and its BN-folded copy): one plain training step of the executor (forward and
backward to every weight, batch 128, BN in batch mode where kept) in its own process, with that
process's peak RSS; one ANP iteration (the difference of a 40- and a 10-iteration `audit repair
--method anp` divided by 30, so loading and the parity check cancel out); and the whole default
`audit repair` (what it runs without `--method`) with its wall time and peak RSS. Every figure is
then put as a ratio to the training step measured in the same run: the issue's targets are ANP's iteration near
its floor of about 3 steps, the default repair at most 1,500 steps, peak memory at most 1.5x a
training step's. 500 clean images, as the benchmark of defences uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, statistics, sys, time, numpy as np, torch, torch.nn.functional as F
from backdoor_audit.data import load_images
from backdoor_audit.graph.model import open_model
from backdoor_audit.inputs import fit_images
from backdoor_audit.util import peak_rss_mb
m = open_model(sys.argv[1])
images = load_images(sys.argv[2], limit=128)
fitted = fit_images(m.proto, images, m.executor.device)
x, y = fitted.x, fitted.y
ex = m.executor.requires_grad_weights(True)
if m.inventory.has_batchnorm:
    ex.batchnorm_mode("batch")
times = []
for _ in range(6):
    t = time.perf_counter()
    for p in ex.weights:
        p.grad = None
    F.cross_entropy(ex(x), y).backward()
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": statistics.median(times[1:]), "peak_mb": peak_rss_mb(), "device": str(ex.device)}))
"""


def repair(path: Path, clean: Path, out: Path, *params: str) -> dict:
    cmd = [sys.executable, "-m", "backdoor_audit.cli", "repair", str(path), "--data", str(clean), "--n-clean", "500",
           "--out", str(out), "--json", *params]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout)


def folded_copy(path: Path, tmp: Path) -> Path:
    from backdoor_audit.bench.repair import fold_copy

    return fold_copy(path, tmp / f"{path.stem}-folded.onnx")


def measure(path: Path, clean: Path, tmp: Path) -> dict:
    step = json.loads(subprocess.run([sys.executable, "-c", STEP, str(path), str(clean)], capture_output=True,
                                     text=True, check=True).stdout)
    out = tmp / "out.onnx"
    a10 = repair(path, clean, out, "--method", "anp", "--param", "iterations=10")
    a40 = repair(path, clean, out, "--method", "anp", "--param", "iterations=40")
    default = repair(path, clean, out)
    it = (a40["seconds"] - a10["seconds"]) / 30
    return {"file": path.name, "device": step["device"], "step ms": round(step["step_s"] * 1e3, 1),
            "ANP iteration ms": round(it * 1e3, 1), "ANP iteration / step": round(it / step["step_s"], 2),
            "ANP default (2000 it.) in steps": round(2000 * it / step["step_s"]),
            "default repair s": round(default["seconds"], 1),
            "default repair in steps": round(default["seconds"] / step["step_s"]),
            "step peak MB": round(step["peak_mb"]), "repair peak MB": round(default["peak_rss_mb"]),
            "peak repair / step": round(default["peak_rss_mb"] / step["peak_mb"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", nargs="+", type=Path, default=[Path("zoo/cifar10/badnets-t0-s0.onnx")])
    ap.add_argument("--clean", type=Path, default=Path("zoo/cifar10/clean.npz"))
    ap.add_argument("--out", type=Path, default=Path("docs/performance-repair.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.files:
            for target in (path, folded_copy(path, Path(tmp))):
                rows.append(measure(target, args.clean, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
