"""Which step of the default repair bf16 autocast breaks: one command, one table.

    python benchmarks/precision_repair.py [--model FOLDED.onnx] [--clean clean.npz] [--n-clean 500]

Runs, one after the other in this process on the same 500 defender images: CLP and I-BAU (the
default's first two steps) in float32 and under `--precision bf16`, and I-BAU in bf16 with its
implicit hypergradient kept in float32 (autocast switched off around ``ibau.hypergradient``, the
one change). Prints, per variant, the defender-set accuracy after the step, the channels pruned and
the method's seconds as a ratio to float32's. The whole default under bf16, with ACC/ASR on test
data, is `audit bench repair --precision bf16` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch

import backdoor_audit.repair.ibau as ibau
from backdoor_audit.data import load_images
from backdoor_audit.repair.run import repair_model

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def float32_hypergradient():
    original = ibau.hypergradient

    def plain(*args, **kwargs):
        with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", enabled=False):
            return original(*args, **kwargs)

    ibau.hypergradient = plain
    try:
        yield
    finally:
        ibau.hypergradient = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "zoo/.folded/cifar10/badnets-t0-s0.onnx"))
    ap.add_argument("--clean", default=str(ROOT / "zoo/cifar10/clean.npz"))
    ap.add_argument("--n-clean", type=int, default=500)
    args = ap.parse_args()
    clean = load_images(args.clean)
    clean = clean.subset(slice(0, args.n_clean))
    variants = [("clp", "float32", None), ("clp", "bf16", None), ("i-bau", "float32", None),
                ("i-bau", "bf16", None), ("i-bau", "bf16", "the hypergradient in float32")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, precision, note in variants:
            ctx = float32_hypergradient() if note else contextlib.nullcontext()
            with ctx:
                rep = repair_model(args.model, clean, method, Path(tmp) / "o.onnx", precision=precision)
            rows.append((method, precision, note, rep))
    print(f"{Path(args.model).name}, {len(clean)} defender images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | precision | defender-set ACC before / after | pruned | seconds | vs float32 |")
    print("|---|---|---|---|---|---|")
    base = {m: r.seconds for m, p, n, r in rows if p == "float32"}
    for method, precision, note, r in rows:
        label = precision + (f", {note}" if note else "")
        ratio = f"{r.seconds / base[method]:.2f}x" if base[method] > 0.5 else "-"
        print(f"| {method} | {label} | {r.clean_acc_before:.2f} / {r.clean_acc_after:.2f} | {len(r.pruned)} | "
              f"{r.seconds:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
