"""bf16 and torch.compile against plain float32 on the executor: one command, one table.

    python benchmarks/precision.py [--archs small-resnet,mobilenetv2] [--batch 128] [--reps 7]

For each architecture (random weights, 3x32x32, BN kept as the zoo's files keep it) the ONNX
executor runs, interleaved in one process so every figure is a ratio measured in the same run:
float32 eager (the baseline); bf16 autocast (``torch.autocast("cpu"|"cuda", torch.bfloat16)``,
which oneDNN maps to AVX512-BF16 / AMX on CPUs that have them); ``torch.compile`` of the
executor's forward (inductor); and both. Each is timed for an evaluation pass (no grad) and a
training step (forward and backward to every weight, BN on batch statistics), batch 128, median
of ``--reps``. What bf16 costs in fidelity is measured on a trained zoo file (``--trained``, its
clean set): the largest logit difference against float32, the share of the clean images whose
top-1 class changes, and the accuracy either way. A variant that fails
(torch.compile cannot trace the executor, say) is reported with its one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.graph.executor import load_executor
from backdoor_audit.models import build_model
from executor_speed import _timed  # this folder is on sys.path when the script runs


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    return ", ".join(have) or "no bf16 instructions"


def measure(arch: str, batch: int, reps: int, device, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    net = build_model(arch, (3, 32, 32), 10).eval()
    path = export_torch_model(net, (3, 32, 32), tmp / f"{arch}.onnx", keep_batchnorm=True)
    ex = load_executor(path, device=device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    compiled = None
    compile_error = ""
    try:
        compiled = torch.compile(ex)
        with torch.no_grad():
            compiled(x)
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        compiled, compile_error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"

    def bf16():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    variants = {"float32": (ex, contextlib.nullcontext), "bf16 autocast": (ex, bf16)}
    if compiled is not None:
        variants["torch.compile"] = (compiled, contextlib.nullcontext)
        variants["torch.compile + bf16"] = (compiled, bf16)

    def evaluation(fn, ctx):
        def run():
            with torch.no_grad(), ctx():
                fn(x)
        return run

    ex.requires_grad_weights(True)

    def training(fn, ctx):
        def run():
            previous = ex.batchnorm_mode("batch")
            for p in ex.weights:
                p.grad = None
            with ctx():
                loss = F.cross_entropy(fn(x).float(), y)
            loss.backward()
            ex.batchnorm_mode(previous)
        return run

    rows = []
    for label, make in (("eval", evaluation), ("train step", training)):
        runs = {}
        for name, (fn, ctx) in variants.items():
            try:
                run = make(fn, ctx)
                run(), run()  # warm-up (and compilation of the training graph)
                runs[name] = run
            except Exception as e:  # noqa: BLE001
                rows.append({"arch": arch, "pass": label, "variant": name,
                             "note": f"fails: {type(e).__name__}: {str(e).splitlines()[0][:100]}"})
        times = {name: [] for name in runs}
        for _ in range(reps):
            for name, run in runs.items():
                times[name].append(_timed(run, device))
        base = statistics.median(times["float32"])
        for name in runs:
            med = statistics.median(times[name])
            rows.append({"arch": arch, "pass": label, "variant": name, "ms": round(med * 1e3, 1),
                         "ratio": round(med / base, 3), "note": ""})
    if compile_error:
        rows.append({"arch": arch, "pass": "compile", "variant": "torch.compile", "note": f"fails: {compile_error}"})
    return rows


def fidelity(path: Path, clean: Path, device) -> dict:
    """What bf16 changes on a trained file: the largest logit difference against float32 (and the
    logits' own scale), the share of the clean images whose top-1 class changes, and the accuracy."""
    from backdoor_audit.data import load_images
    from backdoor_audit.graph.model import open_model
    from backdoor_audit.inputs import fit_images

    m = open_model(path, device)
    fitted = fit_images(m.proto, load_images(clean), m.executor.device)
    with torch.no_grad():
        ref = torch.cat([m.executor(b) for b in fitted.x.split(128)])
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = torch.cat([m.executor(b).float() for b in fitted.x.split(128)])
    acc = lambda z: (z.argmax(1) == fitted.y).float().mean().item() * 100  # noqa: E731
    return {"arch": path.name, "pass": "fidelity", "variant": "bf16 autocast",
            "note": f"max abs logit difference {(low - ref).abs().max().item():.3f} (logits up to "
                    f"{ref.abs().max().item():.1f}); top-1 changed on "
                    f"{(low.argmax(1) != ref.argmax(1)).float().mean().item() * 100:.1f}% of {len(ref)} clean "
                    f"images; accuracy {acc(ref):.2f} -> {acc(low):.2f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="small-resnet,mobilenetv2")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--trained", type=Path, default=Path("zoo/cifar10/badnets-t0-s0.onnx"),
                    help="a trained file for the fidelity row (skipped if absent)")
    ap.add_argument("--clean", type=Path, default=Path("zoo/cifar10/clean.npz"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in filter(None, args.archs.split(",")):
            rows += measure(arch, args.batch, args.reps, device, Path(tmp))
            print(f"{arch} done", file=sys.stderr)
    if args.trained.is_file() and args.clean.is_file():
        rows.append(fidelity(args.trained, args.clean, device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"CPU bf16 support: {cpu_flags()}, batch {args.batch}, median of {args.reps}\n")
    print("| model | pass | variant | ms | ratio to float32 | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['pass']} | {r['variant']} | {r.get('ms', '')} | {r.get('ratio', '')} | "
              f"{r['note']} |")


if __name__ == "__main__":
    main()
