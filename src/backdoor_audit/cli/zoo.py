"""`audit zoo`: build a model zoo from a config, show what is built, print its table.

The group is added to ``audit`` by main.py; this module imports only common.py of the CLI.

Parse, call, print: the work is in ``backdoor_audit.zoo``.
"""

from __future__ import annotations

import sys

import click

from .common import CACHE_DIR, handle_errors


@click.group()
def zoo():
    """Train and list zoos of clean and backdoored models (see zoo/zoo.toml)."""


_CONFIG = click.argument("config", type=click.Path())
_OUT = click.option("--out", "out", type=click.Path(file_okay=False), default="zoo", show_default=True,
                    help="zoo folder: <set>/<model>.onnx and manifest.jsonl")
_ONLY = click.option("--only", multiple=True, help="build only ids matching this glob, e.g. 'mnist/*' (repeatable)")


@zoo.command()
@_CONFIG
@_OUT
@_ONLY
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)")
@click.option("--progress/--no-progress", default=None,
              help="training progress bars (default: when stderr is a terminal)")
@click.option("--rebuild", multiple=True, help="train ids matching this glob again even if built (repeatable)")
@handle_errors
def build(config, out, only, device, progress, rebuild):
    """Train every model of CONFIG not yet in OUT's manifest (resumes an interrupted build)."""
    from ..zoo import build_zoo, load_config
    from ..zoo.build import select

    entries = select(load_config(config), list(only))

    def show(kind, entry, info):
        if kind == "skip":
            click.echo(f"  {entry.id}: already built")
        elif kind == "start":
            why = " (resuming)" if info["resume"] else " (config changed since it was built)" if info["stale"] else ""
            click.echo(f"  {entry.id}: training{why} ...")
        else:
            asr = "" if info["asr"] is None else f" ASR {info['asr']:.2f}%"
            click.echo(f"  {entry.id}: ACC {info['acc']:.2f}%{asr}, trained in {info['train_seconds']:.0f} s")

    rows = build_zoo(entries, out, device=device, progress=sys.stderr.isatty() if progress is None else progress,
                      cache_dir=CACHE_DIR, on_event=show,
                      rebuild=list(rebuild))
    click.echo(f"{len(rows)} of {len(entries)} models built in {out}")


@zoo.command()
@_CONFIG
@_OUT
@_ONLY
@handle_errors
def status(config, out, only):
    """List CONFIG's models: built, stale (config changed since), partly trained or still to do; and
    models OUT still holds that CONFIG no longer lists."""
    from ..zoo import load_config
    from ..zoo.build import select, status as zoo_status, unlisted

    entries = load_config(config)
    states = zoo_status(select(entries, list(only)), out)
    for entry, state in states:
        what = entry.attack or "clean"
        click.echo(f"{state:8s} {entry.id}  ({entry.arch}, {what}, epochs {entry.train.get('epochs')})")
    extra = [] if only else unlisted(entries, out)
    for model_id in extra:
        click.echo(f"unlisted {model_id}  (in {out}'s manifest, no longer in {config})")
    done = sum(s == "built" for _, s in states)
    click.echo(f"{done} of {len(states)} built" + (f"; {len(extra)} unlisted" if extra else ""))


@zoo.command()
@_OUT
@handle_errors
def table(out):
    """Print the manifest of the zoo in OUT as a Markdown table."""
    from ..zoo import read_manifest

    rows = list(read_manifest(out).values())
    if not rows:
        click.echo(f"no models in {out}", err=True)
        sys.exit(2)
    click.echo("| model | dataset | arch | attack | mode | ACC (%) | ASR (%) | train time (min) |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for r in rows:
        asr = "-" if r["asr"] is None else f"{r['asr']:.2f}"
        mode = r["mode"] or "-"
        click.echo(f"| {r['id']} | {r['dataset']} | {r['arch']} | {r['attack']} | {mode} | {r['acc']:.2f} | {asr} "
                   f"| {r['train_seconds'] / 60:.1f} |")
