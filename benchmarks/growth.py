"""How `audit repair` and `audit scan` grow with the clean set and the model: one command, a table
and a log-log plot.

    python benchmarks/growth.py [--sizes 50,500,5000] [--models small-resnet,...] [--out docs/performance-growth]

Resumable: every finished measurement is one line of ``<out>.jsonl``; a rerun skips what it holds
and draws the table and the plot from all of it, so a run stopped for time continues where it was
(rows measured in different runs are on one host only if the runs were).

Each model of the registry is exported with random weights at 3x32x32 (time and memory do not
depend on what the weights are) and run, for each clean-set size (a seeded sample of CIFAR-10's
training split, decoded once into the cache), as its own process: `audit repair --method anp`
with a fixed 20 iterations, `audit repair --method clp` (data-free, the cheapest method) and
`audit scan` with MM-BD and Neural Cleanse at 10 steps per class. Fixed step counts make the
figures per unit of work, so the growth with data and with FLOPs is what is left: wall seconds
(the command's own, from its JSON) and peak RSS (the process's). The plot (PNG) puts both on
log-log axes against the clean-set size and the model's parameter count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from backdoor_audit.bench.results import append_result, read_results
from backdoor_audit.cli.common import CACHE_DIR
from backdoor_audit.data import load_images
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
COMMANDS = {
    "repair anp (20 it.)": ["repair", "--method", "anp", "--param", "iterations=20"],
    "repair clp": ["repair", "--method", "clp"],
    "scan (mm-bd + nc, 10 steps)": ["scan", "--detectors", "mm-bd,neural-cleanse", "--param", "mm-bd.steps=10",
                                    "--param", "neural-cleanse.steps=10"],
}


def run(cmd_key: str, model: Path, n: int, out: Path) -> dict:
    args = [sys.executable, "-m", "backdoor_audit.cli", COMMANDS[cmd_key][0], str(model), *COMMANDS[cmd_key][1:],
            "--data", str(CIFAR), "--split", "train", "--n-clean", str(n), "--json"]
    if cmd_key.startswith("repair"):
        args += ["--out", str(out)]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed: {res.stderr.strip().splitlines()[-1:]}")
    rep = json.loads(res.stdout)
    return {"seconds": round(rep["seconds"], 2), "peak_mb": round(rep["peak_rss_mb"], 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sizes = sorted({r["n"] for r in rows})
    params = sorted({r["params_m"] for r in rows})
    for cmd in COMMANDS:
        for col, (key, label) in enumerate((("seconds", "wall s"), ("peak_mb", "peak RSS MB"))):
            big = max(params)
            xs = [r for r in rows if r["command"] == cmd and r["params_m"] == big]
            axes[0, col].loglog([r["n"] for r in xs], [r[key] for r in xs], "o-", label=cmd)
            xs = [r for r in rows if r["command"] == cmd and r["n"] == max(sizes)]
            axes[1, col].loglog([r["params_m"] for r in xs], [r[key] for r in xs], "o-", label=cmd)
            axes[0, col].set(xlabel="clean images", ylabel=label, title=f"{label} vs data ({big:.1f}M parameters)")
            axes[1, col].set(xlabel="parameters (M)", ylabel=label, title=f"{label} vs model ({max(sizes)} images)")
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,500,5000")
    ap.add_argument("--models", default="small-resnet,mobilenetv2,resnet-18")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance-growth")
    args = ap.parse_args()
    results = args.out.with_suffix(".jsonl")
    done = read_results(results)
    # decode the CIFAR-10 split into the CLI's cache first: on a machine without that cache the first
    # measured command would build it and report the whole split's decoding as its peak (2.2 GB)
    load_images(CIFAR, split="train", cache_dir=CACHE_DIR, pick=(50, 0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.models.split(","):
            jobs = [(n, cmd) for n in [int(s) for s in args.sizes.split(",")] for cmd in COMMANDS
                    if f"{arch}|{n}|{cmd}" not in done]
            if not jobs:
                continue
            torch.manual_seed(0)
            net = build_model(arch, (3, 32, 32), 10)
            params = sum(p.numel() for p in net.parameters()) / 1e6
            path = export_torch_model(net, (3, 32, 32), tmp / f"{arch}.onnx")
            for n, cmd in jobs:
                row = {"key": f"{arch}|{n}|{cmd}", "model": arch, "params_m": round(params, 3), "n": n,
                       "command": cmd, **run(cmd, path, n, tmp / "out.onnx")}
                append_result(results, row)
                done[row["key"]] = row
                print(json.dumps(row), flush=True)
    rows = sorted(done.values(), key=lambda r: (r["params_m"], r["n"], list(COMMANDS).index(r["command"])))
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    args.out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"\ntorch {env['torch']}, {env['threads']} threads, device {env['device']}\n")
    print("| model | parameters (M) | clean images | command | wall s | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']} | {r['n']} | {r['command']} | {r['seconds']} | {r['peak_mb']} |")


if __name__ == "__main__":
    main()
