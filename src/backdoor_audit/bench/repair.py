"""`audit bench repair`: every repair method on every zoo model, on the file as built and on a
BN-folded copy (the file users receive), resumably.

Each (model file, method, options, clean set) is one job, run as its own `audit repair` process,
so its wall time and peak memory are its own and a crash stays one failed row. Its key is the
sha256 of those four; a result already in the results file for the same key is reused, so a
stopped run continues where it was. ACC and ASR before and after are measured under onnxruntime
on the dataset's test split by ``evaluation`` (the repair itself sees only the zoo's defender
images, ``<set>/clean.npz``). Folded copies are made by onnxruntime's basic graph optimiser (it
fuses Conv + BatchNormalization, as an eval-mode export does) and checked against the original.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from .. import __version__
from ..attacks.spec import AttackSpec
from ..data import load_images
from ..errors import SpecError
from ..evaluation.evaluate import evaluate
from ..export.session import make_session, run_logits
from ..graph.load import input_dims, load_model
from ..graph.neurons import build_inventory
from ..inputs import model_preprocess
from ..options import parse_assignments
from ..repair import METHODS
from ..util import atomic_write_bytes, first_line, sha256_file
from ..zoo import load_config, read_manifest
from ..zoo.training_set import rebuild_training_set
from .results import append_result, fmt, read_results

RESULTS = "repair-results.jsonl"
FOLD_TOL = 1e-3  # max abs logit difference a folded copy may have from its source


@dataclass(frozen=True)
class Job:
    model_id: str
    variant: str  # "as built" | "folded"
    path: Path
    method: str
    options: dict[str, Any]
    row: dict[str, Any]  # the manifest row of the source model
    label: str = ""  # the method as named on the command line, e.g. "anp:renorm=conv"
    precision: str = "float32"  # `audit repair --precision`

    @property
    def needs_training(self) -> bool:
        """Whether the method reads the model's training set (EP), which the bench rebuilds."""
        return "train" in METHODS.get(self.method).needs

    def key(self, model_sha: str, clean_sha: str, n_clean: int) -> str:
        parts = [model_sha, self.method, self.options, clean_sha, n_clean]
        if self.needs_training:
            parts.append("training set rebuilt from the model's metadata")  # EP; it once ran without one
        if self.precision != "float32":
            parts.append(self.precision)  # float32 keys stay what they were before the option existed
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def fold_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with BatchNormalization folded into the convolutions by onnxruntime's basic
    optimiser; checked to compute what ``src`` computes (within FOLD_TOL) on random inputs."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / dst.name
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        proto = load_model(out)
        del proto.metadata_props[:]
        proto.metadata_props.extend(load_model(src).metadata_props)
        shape = [d if isinstance(d, int) and d > 0 else 8 for d in input_dims(proto)]  # dynamic dims: 8
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        gap = float(np.abs(run_logits(make_session(src), x) - run_logits(make_session(out), x)).max())
        if gap > FOLD_TOL:
            raise SpecError(f"folded copy of {src} differs from it by {gap:.1e}")
        atomic_write_bytes(dst, proto.SerializeToString())
    return dst


def method_variants(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """``"anp,anp:renorm=conv;iterations=500,nc"`` as (label, method, options) triples."""
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, rest = item.partition(":")
        opts = dict(parse_assignments([a for a in rest.split(";") if a.strip()], flag=f"--methods {item}"))
        METHODS.get(name.strip())
        out.append((item, name.strip(), opts))
    return out


def plan(zoo_dir: Path, methods: list[tuple[str, str, dict[str, str]]], only: list[str] | None, folded: bool,
         params: dict[str, dict[str, Any]] | None = None, *, as_built: bool = True,
         precision: str = "float32") -> list[Job]:
    """The jobs, in the order the issue asks for: CIFAR-10 dirty-label models and their folded
    copies first, then GTSRB, then MNIST, then the rest (clean models last in each set).
    ``methods`` are (label, method, options) from :func:`method_variants`; ``params`` more options
    per method name, for every variant of it; ``as_built`` False leaves out the files as they are
    (only their folded copies); ``precision`` the `audit repair --precision` of every job (a bf16
    job's method is labelled "METHOD [bf16]" in the tables)."""
    manifest = read_manifest(zoo_dir)
    order = {"cifar10": 0, "gtsrb": 1, "mnist": 2}
    rows = [r for r in manifest.values() if not only or any(fnmatch.fnmatch(r["id"], g) for g in only)]

    def rank(r):
        clean_label = r["attack"] in ("sig", "clb", "refool", "clean")
        return (order.get(r["set"], 9), clean_label, r["mode"] == "all-to-all", r["id"])

    jobs = []
    for r in sorted(rows, key=rank):
        src = zoo_dir / r["file"]
        variants = [("as built", src)] if as_built else []
        if folded and build_inventory(load_model(src)).batchnorm_state == "kept":
            variants.append(("folded", zoo_dir / ".folded" / r["file"]))
        for variant, path in variants:
            for label, m, given in methods:
                opts = METHODS.get(m).resolve({**(params or {}).get(m, {}), **given})
                tag = "" if precision == "float32" else f" [{precision}]"
                jobs.append(Job(r["id"], variant, path, m, opts, r, label + tag, precision))
    return jobs


class _Sets:
    """Each set's test split and defender images, loaded once."""

    def __init__(self, zoo_dir: Path, config: Path | None, cache_dir):
        self.zoo_dir, self.cache_dir = zoo_dir, cache_dir
        self.data = {e.set: e.data for e in load_config(config)} if config else {}
        self._test = {}

    def clean(self, name: str) -> Path:
        return self.zoo_dir / name / "clean.npz"

    def test(self, name: str, dataset: str):
        if name not in self._test:
            path = self.data.get(name) or dataset
            self._test[name] = load_images(path, split="test", cache_dir=self.cache_dir)
        return self._test[name]

    def training(self, job: Job, work: Path) -> Path:
        """The set ``job``'s model was trained on, rebuilt (``zoo.training_set``) and written once
        per model into ``work``, for a method that needs --train-data (EP)."""
        out = work / f"train-{job.model_id.replace('/', '-')}.npz"
        if not out.is_file():
            path = self.data.get(job.row["set"]) or job.row["dataset"]
            train = load_images(path, split="train", cache_dir=self.cache_dir)
            rebuild_training_set(self.zoo_dir / job.row["file"], train).save(out, compress=False)
        return out


def nc_log(log: dict) -> dict:
    """A Neural Cleanse step's log: the method's own, or its step's in a chain ({} without one)."""
    if "flagged" in log:
        return log
    return next((step for step in log.values() if isinstance(step, dict) and "flagged" in step), {})


def _repair_process(job: Job, clean: Path, n_clean: int, out: Path, train: Path | None = None) -> tuple[dict, float]:
    """Run `audit repair` for ``job`` in its own process; return its report (whose peak memory is
    that process's own) and the wall seconds. ``train`` is the model's training set, for a method
    that needs it."""
    cmd = [sys.executable, "-m", "backdoor_audit.cli", "repair", str(job.path), "--method", job.method,
           "--out", str(out), "--json"]
    if set(METHODS.get(job.method).needs) - {"none"}:  # data-free methods that can use data get it too
        cmd += ["--data", str(clean), "--n-clean", str(n_clean)]
    if train is not None:
        cmd += ["--train-data", str(train)]
    for k, v in job.options.items():
        cmd += ["--param", f"{k}={'none' if v is None else v}"]
    if job.precision != "float32":
        cmd += ["--precision", job.precision]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return json.loads(proc.stdout), wall


def run_bench(zoo_dir, jobs: list[Job], results: Path, *, n_clean: int = 500, config=None, cache_dir=None,
              on_event: Callable[[str, Job, dict | None], None] | None = None) -> list[dict]:
    """Run every job not yet in ``results`` (JSON lines, appended as each finishes); return all rows
    of these jobs."""
    zoo_dir = Path(zoo_dir)
    say = on_event or (lambda *a: None)
    done = read_results(results)
    sets = _Sets(zoo_dir, Path(config) if config else None, cache_dir)
    befores: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmp:  # repaired files, rebuilt training sets
        work = Path(tmp)
        for job in jobs:
            if job.variant == "folded":
                fold_copy(zoo_dir / job.row["file"], job.path)
            model_sha = sha256_file(job.path)
            clean = sets.clean(job.row["set"])
            key = job.key(model_sha, sha256_file(clean), n_clean)
            if key in done and "internal error" not in done[key].get("error", ""):  # a crash is retried
                rows.append(done[key])
                say("skip", job, done[key])
                continue
            say("start", job, None)
            test = sets.test(job.row["set"], job.row["dataset"])
            spec = AttackSpec.from_json(json.dumps(job.row["spec"])) if job.row.get("spec") else None
            pre = model_preprocess(load_model(job.path), test)
            if model_sha not in befores:
                b = evaluate(job.path, test, pre, spec)
                befores[model_sha] = {"acc": b.acc, "asr": b.asr}
            row = {"key": key, "model": job.model_id, "variant": job.variant, "set": job.row["set"],
                   "attack": job.row["attack"], "mode": job.row["mode"], "method": job.label or job.method,
                   "options": job.options,
                   "n_clean": n_clean, "before": befores[model_sha], "tool": __version__, "precision": job.precision,
                   "threads": torch.get_num_threads()}  # the child inherits them (OMP_NUM_THREADS)
            out = work / f"{key}.onnx"
            try:
                train = sets.training(job, work) if job.needs_training else None
                rep, wall = _repair_process(job, clean, n_clean, out, train)
                a = evaluate(out, test, pre, spec)
                nc = nc_log(rep["log"])
                row.update(after={"acc": a.acc, "asr": a.asr}, pruned=len(rep["pruned"]), units=rep["units"],
                           rewritten=len(rep.get("rewritten", [])), seconds=rep["seconds"], wall=wall,
                           peak_mb=rep["peak_rss_mb"],
                           clean_acc=[rep["clean_acc_before"], rep["clean_acc_after"]],
                           flagged=nc.get("flagged"), nc_max_index=max(nc["anomaly_index"]) if nc else None,
                           status="ok")
            except Exception as exc:  # noqa: BLE001  one failed job is one row, the grid goes on
                row.update(status="failed", error=first_line(exc))
            finally:
                out.unlink(missing_ok=True)
            append_result(results, row)
            rows.append(row)
            say("done", job, row)
    return rows


# ------------------------------------------------------------------------------------ the tables
def meets_bar(row: dict) -> bool:
    """The defence issue's bar for one finished row: ASR <= 5% at an ACC drop <= 3 points."""
    asr = row["after"]["asr"]
    return asr is not None and asr <= 5 and row["before"]["acc"] - row["after"]["acc"] <= 3


def markdown(rows: list[dict]) -> str:
    """Per-model rows, then means per (set, variant, method) over the all-to-one dirty-label models."""
    lines = ["| model | file | method | ACC before | ACC after | ASR before | ASR after | pruned | re-trained | "
             "wall s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | {r['method']} | failed: {r['error']} |||||||||")
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {r['method']} | {fmt(r['before']['acc'])} | "
                     f"{fmt(r['after']['acc'])} | {fmt(r['before']['asr'])} | {fmt(r['after']['asr'])} | "
                     f"{r['pruned']} | {r['rewritten']} | {r['wall']:.0f} | {fmt(r['peak_mb'], 0)} |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["mode"] == "all-to-one" and r["attack"] not in ("sig", "clb", "refool"):
            groups.setdefault((r["set"], r["variant"], r["method"]), []).append(r)
    if groups:
        lines += ["", "Means over the all-to-one dirty-label models of each set:", "",
                  "| set | file | method | models | ACC drop | ASR after | ASR <= 5 and drop <= 3 | wall s |",
                  "|---|---|---|---|---|---|---|---|"]
        for (s, variant, method), rs in sorted(groups.items()):
            drop = np.mean([r["before"]["acc"] - r["after"]["acc"] for r in rs])
            asr = np.mean([r["after"]["asr"] for r in rs])
            ok = sum(map(meets_bar, rs))
            lines.append(f"| {s} | {variant} | {method} | {len(rs)} | {drop:.2f} | {asr:.2f} | {ok} of {len(rs)} | "
                         f"{np.mean([r['wall'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"
