"""`audit bench`: benchmarks over a model zoo. Parse, call, print: the work is in ``backdoor_audit.bench``.

The group is added to ``audit`` by main.py; this module imports only common.py of the CLI."""

from __future__ import annotations

from pathlib import Path

import click

from .common import CACHE_DIR, PRECISION, handle_errors


@click.group()
def bench():
    """Benchmarks over a model zoo (docs/repair.md)."""


@bench.command("repair")
@click.option("--zoo", "zoo_dir", type=click.Path(file_okay=False), default="zoo", show_default=True)
@click.option("--config", type=click.Path(), default=None, help="zoo config giving the datasets [<zoo>/zoo.toml]")
@click.option("--methods", default="all", show_default=True,
              help="comma-separated methods, each optionally with options: anp,anp:renorm=conv;iterations=500,nc")
@click.option("--clean", "n_clean", type=int, default=500, show_default=True, help="defender images per repair")
@click.option("--only", multiple=True, help="zoo ids matching this glob, e.g. 'cifar10/*' (repeatable)")
@click.option("--folded/--no-folded", default=True, show_default=True,
              help="also repair a BN-folded copy of every model that keeps BatchNorm")
@click.option("--folded-only", is_flag=True, help="repair only the BN-folded copies (of models that keep BN)")
@click.option("--param", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="a method option for this run, e.g. anp.iterations=200 (repeatable)")
@click.option("--precision", type=PRECISION, default="float32", show_default=True,
              help="`audit repair --precision` for every job (bf16 rows are labelled 'METHOD [bf16]')")
@click.option("--results", type=click.Path(), default="docs/bench-repair.jsonl", show_default=True,
              help="one JSON line per finished job; a rerun skips what it holds")
@click.option("--out", type=click.Path(), default="docs/bench-repair.md", show_default=True,
              help="the Markdown table (and the same rows as JSON beside it)")
@click.option("--plan", "plan_only", is_flag=True, help="list the jobs and stop")
@handle_errors
def repair(zoo_dir, config, methods, n_clean, only, folded, folded_only, params, precision, results, out, plan_only):
    """Run repair methods on every zoo model (and its folded copy), resumably; write the tables."""
    import json

    from ..bench.repair import markdown, method_variants, plan, run_bench
    from ..bench.results import read_results
    from ..errors import SpecError
    from ..options import parse_assignments
    from ..repair import METHODS
    from ..util import atomic_write_bytes

    # "all": every method that runs on what a zoo holds (ep needs the poisoned training set, which it does not)
    every = ",".join(e.name for e in METHODS if "train" not in e.needs)
    variants = method_variants(every if methods == "all" else methods)
    per_method: dict[str, dict[str, str]] = {}
    for key, value in parse_assignments(params).items():
        method, sep, option = key.partition(".")
        if not sep:
            raise SpecError(f"--param {key}: name the method, as METHOD.KEY=VALUE")
        per_method.setdefault(method, {})[option] = value
    jobs = plan(Path(zoo_dir), variants, list(only), folded or folded_only, per_method, as_built=not folded_only,
                precision=precision)
    if plan_only:
        for j in jobs:
            click.echo(f"{j.model_id:32s} {j.variant:9s} {j.label}")
        click.echo(f"{len(jobs)} jobs")
        return
    if config is None and (Path(zoo_dir) / "zoo.toml").is_file():
        config = Path(zoo_dir) / "zoo.toml"  # where each set's data is; else the manifest's dataset path

    def show(kind, job, row):
        name = f"{job.model_id} ({job.variant}) {job.label}"
        if kind == "start":
            click.echo(f"  {name} ...", nl=False)
        elif kind == "done":
            if row["status"] == "ok":
                click.echo(f" ACC {row['before']['acc']:.2f} -> {row['after']['acc']:.2f}, ASR "
                           f"{_pct(row['before']['asr'])} -> {_pct(row['after']['asr'])}, {row['wall']:.0f} s")
            else:
                click.echo(f" failed: {row['error']}")

    rows = run_bench(zoo_dir, jobs, Path(results), n_clean=n_clean, config=config, cache_dir=CACHE_DIR,
                     on_event=show)
    every = list(read_results(Path(results)).values())  # the tables cover every result the file holds
    atomic_write_bytes(out, markdown(every).encode())
    atomic_write_bytes(Path(out).with_suffix(".json"), json.dumps(every, indent=1, sort_keys=True).encode())
    ok = sum(r["status"] == "ok" for r in rows)
    click.echo(f"{ok} of {len(rows)} jobs ok; wrote {out} and {Path(out).with_suffix('.json')} "
               f"({len(every)} results)")


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


@bench.command("scan")
@click.option("--zoo", "zoo_dirs", type=click.Path(file_okay=False), multiple=True,
              help="a zoo folder (repeatable: the committed zoo and the calibration zoo) [zoo]")
@click.option("--clean", "n_clean", type=int, default=500, show_default=True, help="defender images per scan")
@click.option("--no-data", is_flag=True, help="scan without data (the data-free detectors only)")
@click.option("--only", multiple=True, help="zoo ids matching this glob, e.g. 'mnist/*' (repeatable)")
@click.option("--folded/--no-folded", default=True, show_default=True,
              help="also scan a BN-folded copy of every model that keeps BatchNorm")
@click.option("--detectors", default=None, help="comma-separated detectors [audit scan's default]")
@click.option("--param", "params", multiple=True, metavar="DETECTOR.KEY=VALUE",
              help="a detector option for every scan (repeatable)")
@click.option("--results", type=click.Path(), default="docs/bench-scan.jsonl", show_default=True,
              help="one JSON line per finished scan; a rerun skips what it holds")
@click.option("--out", type=click.Path(), default="docs/bench-scan.md", show_default=True,
              help="the Markdown tables (the rows and the calibration as JSON beside it)")
@click.option("--write-thresholds", type=click.Path(dir_okay=False), default=None,
              help="write the thresholds fitted on the calibration split here, for `audit scan` to ship "
                   "(src/backdoor_audit/assets/scan-thresholds.json)")
@click.option("--plan", "plan_only", is_flag=True, help="list the scans and stop")
@click.option("--nc-steps", type=click.IntRange(min=10), default=None,
              help="judge and fit Neural Cleanse as if each class's run stopped after this many steps (from the "
                   "recorded traces; rows that ran fewer steps lose their NC result)")
@click.option("--tables-only", is_flag=True, help="scan nothing: write the tables (and thresholds) from the results")
@handle_errors
def scan(zoo_dirs, n_clean, no_data, only, folded, detectors, params, results, out, write_thresholds, plan_only,
         nc_steps, tables_only):
    """Scan every zoo model (and its folded copy), resumably; fit the detectors' thresholds on one
    split of the models and report them on the other."""
    import json

    from ..bench.results import read_results
    from ..bench.scan import SCORED, markdown, plan_scans, run_scans
    from ..bench.calibration import assign_splits, calibrate, nc_at_steps, thresholds_doc
    from ..util import atomic_write_bytes

    jobs = plan_scans([Path(z) for z in zoo_dirs or ["zoo"]], list(only), folded)
    if plan_only:
        for j in jobs:
            click.echo(f"{j.model_id:32s} {j.variant}")
        click.echo(f"{len(jobs)} scans")
        return

    def show(kind, job, row):
        if kind == "start":
            click.echo(f"  {job.model_id} ({job.variant}) ...", nl=False)
        elif kind == "done":
            ok = row["status"] == "ok"
            click.echo(f" {row['verdict']}, {row['wall']:.0f} s" if ok else f" failed: {row['error']}")

    rows = [] if tables_only else run_scans(jobs, Path(results), n_clean=n_clean, data=not no_data,
                                            detectors=detectors, options=list(params), on_event=show)
    every = [r for r in read_results(Path(results)).values() if r["status"] == "ok"]
    atomic_write_bytes(out, markdown(every, nc_steps).encode())
    judged = every if nc_steps is None else nc_at_steps(every, nc_steps)
    fits = calibrate(judged, [d for d in SCORED if any(d in r["detectors"] for r in judged)])
    atomic_write_bytes(Path(out).with_suffix(".json"), json.dumps(
        {"rows": every, "calibration": [f.to_dict() for f in fits]}, indent=1, sort_keys=True).encode())
    if write_thresholds:
        import sys

        split = assign_splits(every)
        cal = sorted(r["model"] + ("" if r["variant"] == "as built" else " (folded)") for r in every
                     if split[r["model"]] == "calibration")
        previous = json.loads(Path(write_thresholds).read_text()) if Path(write_thresholds).is_file() else None
        doc = thresholds_doc(fits, fitted_on=f"{len(cal)} zoo scans of the calibration split "
                             f"({n_clean} clean images each): {', '.join(cal)}",
                             command="audit " + " ".join(sys.argv[1:]), previous=previous, nc_steps=nc_steps)
        atomic_write_bytes(write_thresholds, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        click.echo(f"wrote the fitted thresholds to {write_thresholds}")
    ok = sum(r["status"] == "ok" for r in rows)
    click.echo(f"{ok} of {len(rows)} scans ok; wrote {out} and {Path(out).with_suffix('.json')} ({len(every)} rows)")
