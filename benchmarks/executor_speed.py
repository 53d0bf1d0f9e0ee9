"""The ONNX->PyTorch executor against the nn.Module the file was exported from: one command, one table.

    python benchmarks/executor_speed.py [--reps 7] [--out docs/performance-executor.json]

For each architecture (random weights) and export (BN kept, BN folded by the default exporter):
eval forward (no grad) and a training step (forward + backward to every weight), batch 128 (2 at
224x224: the CIFAR ResNet-18 keeps full resolution through its first stage), on the device torch
picks. Native and executor runs alternate within one loop, same weights, same batch, same
threads, so the ratio is of two things measured side by side; the median of ``--reps`` runs after
one warm-up each. For the folded file the native side is the module
in eval mode (its BN nodes still run: the native module cannot be folded without changing it), so
a folded ratio below 1 is the folding's gain, not the executor's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.graph.executor import load_executor, pick_device
from backdoor_audit.models import build_model

CASES = [  # (architecture, input shape, batch)
    ("mnist-cnn", (1, 28, 28), 128),
    ("small-resnet", (3, 32, 32), 128),
    ("mobilenetv2", (3, 32, 32), 128),
    ("resnet-18", (3, 32, 32), 128),
    ("resnet-18", (3, 224, 224), 2),  # the CIFAR ResNet-18 (stride-1 stem) at 224: 35 GFLOP an image
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def measure(arch, shape, batch, keep_bn, reps, device, tmp: Path) -> dict:
    torch.manual_seed(0)
    native = build_model(arch, shape, 10).eval()
    path = export_torch_model(native, shape, tmp / f"{arch}-{shape[1]}-{keep_bn}.onnx", keep_batchnorm=keep_bn)
    native = native.to(device)
    ex = load_executor(path, device=device)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def eval_native():
        with torch.no_grad():
            native(x)

    def eval_ex():
        with torch.no_grad():
            ex(x)

    def train_native():
        native.train(keep_bn)  # BN kept: batch statistics, as a fine-tuning step
        native.zero_grad(set_to_none=True)
        F.cross_entropy(native(x), y).backward()
        native.eval()

    ex.requires_grad_weights(True)

    def train_ex():
        previous = ex.batchnorm_mode("batch") if keep_bn else None
        for p in ex.weights:
            p.grad = None
        F.cross_entropy(ex(x), y).backward()
        if previous is not None:
            ex.batchnorm_mode(previous)

    out = {"arch": arch, "input": "x".join(map(str, shape)), "batch": batch, "bn": "kept" if keep_bn else "folded"}
    for label, a, b in (("eval", eval_native, eval_ex), ("train step", train_native, train_ex)):
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(reps):
            ta.append(_timed(a, device))
            tb.append(_timed(b, device))
        na, nb = statistics.median(ta), statistics.median(tb)
        out[f"{label} native ms"] = round(na * 1e3, 1)
        out[f"{label} executor ms"] = round(nb * 1e3, 1)
        out[f"{label} ratio"] = round(nb / na, 3)
    return out


def markdown(rows: list[dict], env: dict) -> str:
    head = (f"torch {env['torch']}, device {env['device']}, {env['threads']} threads, {env['cpu']}; "
            f"median of {env['reps']} alternating runs\n\n")
    lines = ["| model | input | batch | BN | eval native ms | eval executor / native | train step native ms | "
             "train step executor / native |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['input']} | {r['batch']} | {r['bn']} | {r['eval native ms']} | "
                     f"{r['eval ratio']:.2f}x | {r['train step native ms']} | {r['train step ratio']:.2f}x |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("docs/performance-executor.json"))
    ap.add_argument("--only", default=None, help="substring of the architecture names")
    args = ap.parse_args()
    device = pick_device()
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "reps": args.reps}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, shape, batch in CASES:
            if args.only and args.only not in arch:
                continue
            for keep_bn in (True, False):
                if arch == "mnist-cnn" and keep_bn:
                    continue  # no BatchNorm in it
                rows.append(measure(arch, shape, batch, keep_bn, args.reps, device, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print(markdown(rows, env))


if __name__ == "__main__":
    main()
