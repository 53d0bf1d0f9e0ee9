"""`audit validate`'s throughput against a bare onnxruntime loop over the same arrays: one command.

    python benchmarks/validate_speed.py [--model zoo/cifar10/badnets-t0-s0.onnx] [--images 10000]

Measured in one run, on the CIFAR-10 JPEG test split of ../shared/data: decoding the zip into the
npz cache (first load) against reading the cache (every later load); then, with the images in
memory, `evaluate` (the function `audit validate` calls: preprocessing per chunk, ACC and the
per-class breakdown, and the same again on triggered images for ASR when the model carries an attack
spec) against a bare ``InferenceSession.run`` loop over the already preprocessed float array, same
session options and batch size. The ratio of images per second is the figure; the target is >= 0.90
for the ACC pass. Median of three alternating runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from backdoor_audit.data import load_images
from backdoor_audit.data.preprocess import fit_preprocess
from backdoor_audit.evaluation.evaluate import evaluate
from backdoor_audit.export.session import make_session
from backdoor_audit.graph.load import input_dims, load_model, metadata

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("zoo/cifar10/badnets-t0-s0.onnx"))
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("docs/performance-validate.json"))
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        images = load_images(CIFAR, split="test", limit=args.images, cache_dir=cache)
        rows["decode JPEG zip (first load), s"] = time.perf_counter() - t
        t = time.perf_counter()
        load_images(CIFAR, split="test", limit=args.images, cache_dir=cache)
        rows["read npz cache (later loads), s"] = time.perf_counter() - t
    proto = load_model(args.model)
    pre = fit_preprocess(images, input_dims(proto), metadata=metadata(proto))
    x = np.ascontiguousarray(pre.apply(images.x), dtype=np.float32)
    session = make_session(args.model)
    name = session.get_inputs()[0].name

    def bare():
        for i in range(0, len(x), args.batch):
            session.run(None, {name: x[i:i + args.batch]})

    def ours():
        evaluate(args.model, images, pre, batch_size=args.batch)

    bare(), ours()
    tb, to = [], []
    for _ in range(3):
        t = time.perf_counter()
        bare()
        tb.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours()
        to.append(time.perf_counter() - t)
    n = len(x)
    rows["bare InferenceSession.run, images/s"] = n / statistics.median(tb)
    rows["evaluate (audit validate, ACC), images/s"] = n / statistics.median(to)
    rows["ratio evaluate / bare"] = statistics.median(tb) / statistics.median(to)
    rows["provider"] = session.get_providers()[0]
    print(f"{args.model}, {n} images, batch {args.batch}\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |")
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
