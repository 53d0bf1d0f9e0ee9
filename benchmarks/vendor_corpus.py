"""Files nobody here wrote, end to end: parity with onnxruntime, `audit validate`, `audit repair`.

    python benchmarks/vendor_corpus.py [--corpus ../vendor-corpus] [--out docs/vendor-corpus.md]

The corpus: the ONNX model-zoo files that ship inside the ``onnx`` package
(``onnx/backend/test/data/light``, IR 3 / opset 9; their weights are computed by ConstantOfShape
nodes, which is what makes them light) and, where ``--corpus`` holds them, the torchvision and
timm exports written by ``benchmarks/export_vendor_models.py`` in its own venv. Per file:
``graph.support.problems`` (what the executor cannot run, listed before anything runs), the
executor's max abs logit difference from onnxruntime on two random images and its forward time
over onnxruntime's, then `audit validate` and `audit repair --method anp` (2 iterations) as a user
runs them, with exit code, wall time and the line that explains a refusal. Random images with
labels 0-9: the point is that every command runs and every written file checks, not accuracy.
Writes the Markdown table and the same rows as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from backdoor_audit.export.session import make_session, run_logits
from backdoor_audit.graph.executor import OnnxExecutor
from backdoor_audit.graph.load import input_dims, load_model, opset_version
from backdoor_audit.graph.support import problems, summary

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def corpus(extra: Path | None) -> list[Path]:
    files = sorted(LIGHT.glob("*.onnx"))
    if extra is not None and extra.is_dir():
        files += sorted(extra.glob("*.onnx"))
    return files


def cli(*args: str) -> tuple[int, float, str]:
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "backdoor_audit.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [l for l in (res.stderr + res.stdout).splitlines() if l.strip()]
    err = [l for l in lines if l.startswith("error:")]
    return res.returncode, time.time() - t, (err or lines or [""])[-1][:400]


def images(dims, folder: Path) -> Path:
    c, h, w = (int(d) if isinstance(d, int) else 0 for d in dims[1:4])
    path = folder / f"rand-{c}x{h}x{w}.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.integers(0, 256, (8, h, w, c), dtype=np.uint8), y=np.arange(8) % 10)
    return path


def parity(path: Path, proto: onnx.ModelProto) -> tuple[float, float]:
    dims = input_dims(proto)
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 2
    x = torch.rand(batch, *[int(d) for d in dims[1:]], generator=torch.Generator().manual_seed(0))
    ex = OnnxExecutor(proto, source=str(path))
    sess = make_session(path)
    with torch.no_grad():
        ex(x)
        t = time.perf_counter()
        ours = ex(x).numpy()
        t_ex = time.perf_counter() - t
    run_logits(sess, x.numpy())
    t = time.perf_counter()
    ref = run_logits(sess, x.numpy())
    t_ort = time.perf_counter() - t
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)), t_ex / max(t_ort, 1e-9)


def megabytes(path: Path) -> float:
    """The file and its external data (the default exporter writes weights to <name>.data)."""
    return round(sum(p.stat().st_size for p in [path, *path.parent.glob(path.name + ".data")]) / 1e6, 1)


def row(path: Path, tmp: Path) -> dict:
    r = {"file": path.name, "MB": megabytes(path)}
    proto = load_model(path)
    r.update(ir=proto.ir_version, opset=opset_version(proto), nodes=len(proto.graph.node))
    found = problems(proto)
    if found:
        r["refused"] = summary(found, limit=2)
        return r
    r["parity"], r["time_vs_ort"] = parity(path, proto)
    data = images(input_dims(proto), tmp)
    r["validate"] = cli("validate", str(path), "--data", str(data))
    out = tmp / f"fixed-{path.stem}.onnx"
    r["repair"] = cli("repair", str(path), "--data", str(data), "--method", "anp", "--param", "iterations=2",
                      "--param", "batch_size=2", "--out", str(out))
    out.unlink(missing_ok=True)
    return r


def markdown(rows: list[dict]) -> str:
    def cmd(v):
        if v is None:
            return "-"
        code, secs, line = v
        return f"ok {secs:.0f} s" if code == 0 else f"exit {code} {secs:.0f} s: {line}"

    out = ["| file | MB | IR / opset | nodes | executor vs ORT (rel.) | executor time / ORT | validate "
           "| repair (anp, 2 it.) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['file']} | {r['MB']} | {r['ir']} / {r['opset']} | {r['nodes']} | refused: {r['refused']} "
                       "| | | |")
            continue
        out.append(f"| {r['file']} | {r['MB']} | {r['ir']} / {r['opset']} | {r['nodes']} | {r['parity']:.1e} | "
                   f"{r['time_vs_ort']:.1f}x | {cmd(r.get('validate'))} | {cmd(r.get('repair'))} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "vendor-corpus")
    ap.add_argument("--out", type=Path, default=Path("docs/vendor-corpus.md"))
    ap.add_argument("--only", default=None, help="substring of the file names to run")
    args = ap.parse_args()
    rows = []
    results = args.out.with_suffix(".json")
    done = {r["file"]: r for r in json.loads(results.read_text())} if results.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in corpus(args.corpus):
            if args.only and args.only not in path.name:
                continue
            if path.name in done:
                rows.append(done[path.name])
                continue
            t = time.time()
            try:
                r = row(path, Path(tmp))
            except Exception as exc:  # noqa: BLE001  (a file that breaks the harness is a finding too)
                r = {"file": path.name, "MB": megabytes(path), "ir": "-", "opset": "-",
                     "nodes": "-", "refused": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            r["seconds"] = round(time.time() - t, 1)
            print(f"{path.name}: {r.get('refused') or 'ran'} ({r['seconds']} s)", flush=True)
            rows.append(r)
            done[path.name] = r
            results.write_text(json.dumps(list(done.values()), indent=1))
    args.out.write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
