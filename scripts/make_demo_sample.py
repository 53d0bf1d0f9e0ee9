"""Write the MNIST sample that ships with the package (used by `audit demo` and the tests).

A seeded, stratified sample of 6000 training and 1000 test images from the full MNIST file,
stored uint8 with keys x_train, y_train, x_test, y_test.

    python scripts/make_demo_sample.py [--src ../shared/data/mnist.npz] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "backdoor_audit" / "assets" / "mnist_sample.npz"


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with each class represented in proportion to its frequency in ``y``."""
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    # hand the rounding remainder to the classes with the largest fractional parts
    frac = counts / counts.sum() * n - quota
    quota[np.argsort(-frac)[: n - quota.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(y == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "mnist.npz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with np.load(args.src) as src:
        out = {}
        for split, n in (("train", args.train), ("test", args.test)):
            x, y = src[f"x_{split}"], src[f"y_{split}"]
            idx = stratified_indices(y, n, rng)
            out[f"x_{split}"] = x[idx].astype(np.uint8)
            out[f"y_{split}"] = y[idx].astype(np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
