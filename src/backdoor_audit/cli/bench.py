"""`audit bench`: benchmarks over a model zoo. Parse, call, print: the work is in ``backdoor_audit.bench``.

The group is added to ``audit`` by main.py; this module imports only common.py of the CLI."""

from __future__ import annotations

from pathlib import Path

import click

from .common import CACHE_DIR, handle_errors


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
@click.option("--results", type=click.Path(), default="docs/bench-repair.jsonl", show_default=True,
              help="one JSON line per finished job; a rerun skips what it holds")
@click.option("--out", type=click.Path(), default="docs/bench-repair.md", show_default=True,
              help="the Markdown table (and the same rows as JSON beside it)")
@click.option("--plan", "plan_only", is_flag=True, help="list the jobs and stop")
@handle_errors
def repair(zoo_dir, config, methods, n_clean, only, folded, folded_only, params, results, out, plan_only):
    """Run repair methods on every zoo model (and its folded copy), resumably; write the tables."""
    import json

    from ..bench.repair import markdown, method_variants, plan, read_results, run_bench
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
    jobs = plan(Path(zoo_dir), variants, list(only), folded or folded_only, per_method, as_built=not folded_only)
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
