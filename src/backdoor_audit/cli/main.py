"""`audit` and its commands: parse, call, print. Exit 0 ok, 1 finding or failed gate, 2 error (one clear line).

No logic lives here: every command calls one library function and shows what it returns.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys

import click

from .. import __version__
from ..errors import AuditError
from .common import CACHE_DIR, PRECISION, data_options, floats, handle_errors, load, load_training
from .bench import bench
from .zoo import zoo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="backdoor-audit")
def main():
    """Check and repair backdoored image classifiers delivered as ONNX."""


main.add_command(zoo)
main.add_command(bench)


# ---------------------------------------------------------------------------------------- inspect
@main.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the inventory as JSON")
@handle_errors
def inspect(model, as_json):
    """List the model's neurons (layers, BN state, couplings, head) and everything in the file the
    executor cannot run, all at once; exit 2 when there is any."""
    from ..graph.load import input_dims, load_model, opset_version
    from ..graph.neurons import build_inventory
    from ..graph.support import problems

    proto = load_model(model)
    found = problems(proto)
    inv = build_inventory(proto)
    if as_json:
        click.echo(json.dumps({"summary": inv.summary(), "layers": [l.__dict__ for l in inv.layers],
                               "couplings": [c.__dict__ for c in inv.couplings],
                               "unsupported": [p.__dict__ for p in found]}, indent=2))
    else:
        s = inv.summary()
        click.echo(f"{model}: opset {opset_version(proto)}, input {input_dims(proto)}, "
                   f"{s['neurons']} neurons in {s['layers']} layers, BatchNorm {s['batchnorm']}")
        for l in inv.layers:
            extra = " head" if l.head else f" normalised by {l.bn}" if l.bn else ""
            click.echo(f"  {l.name:<48} {l.op:<18} {l.size:>5}{extra}")
        for c in inv.couplings:
            click.echo(f"  coupled by {c.kind} at {c.node}: {', '.join(c.layers)}")
        for p in found:
            click.echo(f"  unsupported: {p}")
    if found:
        raise AuditError(f"{model}: {len(found)} unsupported op(s) or attribute(s); the executor cannot run this file")


# ---------------------------------------------------------------------------------------- repair
@main.command()
@click.argument("model", type=click.Path(), required=False)
@data_options(required=False)
@click.option("--method", default=None,
              help="defence method (see --list), or methods joined by + (clp+i-bau); default with --data: "
                   "clp+i-bau+nc (CLP, 10 I-BAU rounds, then Neural Cleanse unlearns what it still finds; the "
                   "zoo benchmark's best across CIFAR-10, GTSRB and MNIST, docs/repair.md), clp without")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="a method option, e.g. --param eps=0.3 (repeatable; --list shows every option)")
@click.option("--out", "out", type=click.Path(), help="where to write the repaired ONNX")
@click.option("--n-clean", type=int, default=None, help="use this many clean images (seeded sample)")
@click.option("--train-data", type=click.Path(), default=None,
              help="the model's (possibly poisoned) training data, for methods that need it (ep); its train "
                   "split when it has splits")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=PRECISION, default="float32", show_default=True,
              help="experimental: run the method's own computation in bf16 autocast (about 0.8x the time on "
              "CPUs with AVX512-BF16/AMX; the written file stays float32). It breaks I-BAU, and so the default: "
              "docs/performance.md")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--rescan", is_flag=True,
              help="scan the repaired file afterwards (graph, mm-bd, and neural-cleanse with labeled data) and report "
                   "whether the backdoor signature is gone: a check that needs no trigger")
@click.option("--list", "list_methods", is_flag=True,
              help="list the methods with their options, defaults, sources and data needs")
@handle_errors
def repair(model, data, split, layout, mean, std, device, method, params, out, n_clean, train_data, seed, precision,
           as_json, rescan, list_methods):
    """Repair MODEL with a defence method on the defender's clean data; write --out."""
    from ..options import parse_assignments
    from ..repair import METHODS
    from ..repair.run import default_method, repair_model

    if list_methods:
        for entry in METHODS:
            click.echo("\n".join(entry.describe()))
        return
    if not model:
        raise click.UsageError("MODEL is required (or --list)")
    if not out:
        raise click.UsageError("--out is required")
    given = parse_assignments(params)
    if method is None:
        method, defaults = default_method(data is not None)
        given = {**defaults, **given}
    options = METHODS.get(method).resolve(given)
    clean = None if data is None else load(data, split, n_clean, seed, defender=True)
    train = None if train_data is None else load_training(train_data)
    report = repair_model(model, clean, method, out, options, device=device, layout=layout,
                          mean=floats(mean, "--mean"), std=floats(std, "--std"), seed=seed,
                          progress=not as_json and sys.stderr.isatty(), train=train, precision=precision)
    if rescan:
        from ..audit.scan import scan_model

        if clean is not None and not clean.labeled:
            clean = None  # the scan's data detectors need labels; the data-free ones still run
        names = ("graph", "mm-bd") + (("neural-cleanse",) if clean is not None else ())  # the deciding ones
        after = scan_model(out, clean, detectors=names, device=device, layout=layout, mean=floats(mean, "--mean"),
                           std=floats(std, "--std"), seed=seed, progress=not as_json and sys.stderr.isatty())
        report.log["rescan"] = {"verdict": after.verdict, "suspected_target": after.suspected_target,
                                "decided_by": after.decided_by, "reason": after.reason,
                                "scores": {d.detector: {"score": d.score, "threshold": d.threshold,
                                                        "top_class": d.evidence.get("top_class")}
                                           for d in after.detections if d.detector != "graph"},
                                "seconds": round(after.seconds, 1)}
    if as_json:
        click.echo(report.to_json())
        return
    _print_repair(report, clean)


def _print_repair(report, clean) -> None:
    did = []
    if report.units:
        did.append(f"pruned {len(report.pruned)} of {report.units} neurons ({report.total_neurons} in the model)")
    if report.rewritten:
        did.append(f"re-trained {len(report.rewritten)} weight tensors")
    bf16 = " (bf16 autocast)" if report.precision == "bf16" else ""
    click.echo(f"{report.method}: {'; '.join(did) or 'changed nothing'} in {report.seconds:.1f} s{bf16}")
    if "flagged" in report.log:
        index = report.log["anomaly_index"]
        flagged = ", ".join(f"class {c} (anomaly index {index[c]:.2f})" for c in report.log["flagged"])
        click.echo(f"  reverse-engineered triggers: {flagged or 'no class flagged'}")
    if report.log.get("note"):
        click.echo(f"  {report.log['note']}")
    if clean is not None:
        click.echo(f"  clean accuracy on the {report.n_clean} defender images: "
                   f"{report.clean_acc_before:.2f} -> {report.clean_acc_after:.2f}")
    if report.pruned:
        shown = ", ".join(f"{l}[{k}]" for l, k in report.pruned[:12])
        more = f" (+{len(report.pruned) - 12} more)" if len(report.pruned) > 12 else ""
        click.echo(f"  pruned: {shown}{more}")
    click.echo(f"  wrote {report.out_path} (onnxruntime parity {report.parity_max_abs:.1e})")
    if "rescan" in report.log:
        r = report.log["rescan"]
        gone = {"no backdoor found": "signature gone", "backdoor suspected": "SIGNATURE STILL THERE"}
        click.echo(f"  re-scan: {gone.get(r['verdict'], r['verdict'])} ({r['verdict']}; "
                   f"{r['decided_by'] or 'no detector decided'}: {r['reason']}; {r['seconds']:.0f} s)")


# ---------------------------------------------------------------------------------------- validate
@main.command()
@click.argument("model", type=click.Path())
@data_options()
@click.option("--attack", "attack", type=click.Path(), default=None,
              help="attack spec JSON, or an ONNX file whose metadata carries one (for ASR)")
@click.option("--limit", type=int, default=None, help="evaluate on this many images (seeded sample)")
@click.option("--min-acc", type=float, default=None, help="gate: fail (exit 1) when ACC is below")
@click.option("--max-asr", type=float, default=None, help="gate: fail (exit 1) when ASR is above")
@click.option("--per-class", is_flag=True, help="also report ACC and ASR per true (source) class")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def validate(model, data, split, layout, mean, std, device, attack, limit, min_acc, max_asr, per_class, as_json):
    """Measure ACC (and ASR with --attack) under onnxruntime; gate with --min-acc/--max-asr."""
    from ..evaluation.gate import validate_model

    images = load(data, split, limit)
    result = validate_model(model, images, attack=attack, layout=layout, mean=floats(mean, "--mean"),
                            std=floats(std, "--std"), min_acc=min_acc, max_asr=max_asr, per_class=per_class)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        asr = "" if result.asr is None else f"  ASR {result.asr:6.2f}% (of {result.n_asr})"
        if result.asr_clean_correct is not None:
            asr += f", {result.asr_clean_correct:.2f}% where clean is right"
        click.echo(f"{model}: ACC {result.acc:6.2f}% (of {result.n}){asr}  [{result.provider}]")
        if result.acc_by_class is not None:
            by_asr = result.asr_by_class or {}
            click.echo("  class     ACC     ASR")
            for c, a in result.acc_by_class.items():
                r = f"{by_asr[c]:6.2f}%" if c in by_asr else "      -"
                click.echo(f"  {c:5d} {a:6.2f}% {r}")
        for line in result.gate_messages:
            click.echo(f"  {line}")
    sys.exit(0 if result.passed else 1)


# ---------------------------------------------------------------------------------------- scan
@main.command()
@click.argument("model", type=click.Path(), required=False)
@data_options(required=False)
@click.option("--n-clean", type=int, default=None, help="use this many clean images (seeded sample)")
@click.option("--detectors", default=None,
              help="comma-separated detectors (see --list), or +NAMES for the default plus those (+anp-probe,ban); "
                   "default: graph, neural-cleanse, mm-bd and bn-kl with --data, graph and mm-bd without")
@click.option("--param", "params", multiple=True, metavar="DETECTOR.KEY=VALUE",
              help="a detector option, e.g. --param neural-cleanse.steps=100 (repeatable)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "html"]), default="text",
              show_default=True, help="the report: console text, JSON, SARIF 2.1.0 (code-scanning upload), or one "
              "self-contained HTML page with the evidence's plots")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="write the report here (atomically) instead of to stdout; the console still gets the summary")
@click.option("--json", "as_json", is_flag=True, help="short for --format json")
@click.option("--save-triggers", type=click.Path(), default=None,
              help="write Neural Cleanse's reversed triggers (.npz) for `audit repair --method nc --param triggers=`")
@click.option("--thresholds", type=click.Choice(["calibrated", "paper"]), default="calibrated", show_default=True,
              help="detector thresholds: fitted on the zoo's calibration split (docs/scan.md), or the papers' "
                   "defaults; a --param of a threshold overrides either")
@click.option("--fail-on", type=click.Choice(["critical", "high", "medium", "low", "info"]), default="high",
              show_default=True,
              help="exit 1 for a file or graph finding of this severity or worse (a backdoor verdict always exits 1)")
@click.option("--list", "list_detectors", is_flag=True, help="list the detectors with their options and data needs")
@handle_errors
def scan(model, data, split, layout, mean, std, device, n_clean, detectors, params, seed, fmt, output, as_json,
         save_triggers, thresholds, fail_on, list_detectors):
    """Is MODEL (a file, or every .onnx file under a folder) backdoored? Graph hazards and MM-BD
    without data; Neural Cleanse and BN statistics too with --data. Exit 1 when a backdoor or a
    hazard is found."""
    from ..audit.detectors import DETECTORS
    from ..audit.scan import parse_detectors, save_reversed_triggers, scan_model, scan_targets
    from ..options import parse_assignments

    if list_detectors:
        for entry in DETECTORS:
            click.echo("\n".join(entry.describe()))
        return
    if not model:
        raise click.UsageError("MODEL is required (or --list)")
    options: dict[str, dict] = {}
    for key, value in parse_assignments(params).items():
        det, sep, opt = key.partition(".")
        if not sep:
            raise click.UsageError(f"--param {key}={value}: name the detector, e.g. neural-cleanse.{key}={value}")
        options.setdefault(det, {})[opt] = value
    clean = None if data is None else load(data, split, n_clean, seed, defender=True)
    names = parse_detectors(detectors, clean is not None)
    if save_triggers and (clean is None or (names is not None and "neural-cleanse" not in names)):
        raise click.UsageError("--save-triggers needs the neural-cleanse detector, which needs --data")
    files = scan_targets(model)
    if save_triggers and len(files) > 1:
        raise click.UsageError("--save-triggers takes one model, not a folder")
    fmt = "json" if as_json else fmt
    console = fmt == "text" or output is not None
    reports, failed, text = [], 0, []
    for path in files:
        try:
            rep = scan_model(path, clean, detectors=names, options=options, device=device, layout=layout,
                             mean=floats(mean, "--mean"), std=floats(std, "--std"), seed=seed,
                             progress=console and sys.stderr.isatty(), calibrated=thresholds == "calibrated")
        except AuditError as exc:
            if len(files) == 1:
                raise
            click.echo(f"error: {exc}", err=True)  # one bad file of a folder: its line, then the others
            failed += 1
            continue
        reports.append(rep)
        lines = _scan_lines(rep)
        text += lines
        if console:
            click.echo("\n".join(lines))
    if save_triggers:
        save_reversed_triggers(reports[0], save_triggers)
    if fmt == "json":
        out = [r.to_dict() for r in reports]
        doc = json.dumps(out[0] if not Path(model).is_dir() else out, indent=2, default=str) + "\n"
    elif fmt == "sarif":
        from ..audit.report_sarif import render_sarif

        doc = render_sarif(reports, command=" ".join(sys.argv))
    elif fmt == "html":
        from ..audit.report_html import render_html

        doc = render_html(reports, title=f"backdoor-audit scan of {model}")
    else:
        doc = "\n".join(text) + "\n"
    if output is not None:
        from ..util import atomic_write_bytes

        atomic_write_bytes(output, doc.encode())
        click.echo(f"wrote the {fmt} report to {output}")
    elif fmt != "text":
        click.echo(doc, nl=False)
    sys.exit(2 if failed else 1 if any(r.backdoor_found or r.hazard_at_least(fail_on) for r in reports) else 0)


def _scan_lines(rep) -> list[str]:
    target = "" if rep.suspected_target is None else f", suspected target class {rep.suspected_target}"
    lines = [f"{rep.model}: {rep.verdict.upper()}{target}  ({rep.seconds:.1f} s)",
             f"  {'decided by ' + rep.decided_by + ': ' if rep.decided_by else ''}{rep.reason}"]
    lines += [f"  {d.detector} ({d.seconds:.1f} s, {d.peak_mb:.0f} MB): {_detection_line(d)}" for d in rep.detections]
    lines += [f"  [{f.severity}] {f.id}: {f.message}" for f in rep.findings]
    return lines


def _detection_line(d) -> str:
    if d.detector == "graph":
        return f"{len(d.findings)} hazard(s) in {d.evidence['nodes']} nodes"
    if d.detector == "neural-cleanse":
        index = d.evidence["anomaly_index"]
        top = sorted(range(len(index)), key=lambda c: -index[c])[:3]
        return "anomaly index " + ", ".join(f"class {c} {index[c]:.2f}" for c in top) + f" (flag > {d.threshold})"
    if d.detector == "anp-probe":
        pts = ", ".join(f"eps {p.eps:.2f}: {p.error_rate:.0%} errors, {p.top_share:.0%} to class {p.top_class}"
                        for p in d.evidence["probe"])
        return f"{pts}; {d.evidence['masks_below_threshold']} of {d.evidence['units']} masks below threshold"
    if d.detector == "mm-bd":
        return (f"largest margin class {d.evidence['top_class']}, order-statistic p = {d.evidence['p_value']:.2g} "
                f"(flag at p <= {d.options['p_value']:.2g})")
    if d.detector == "ban":
        ev = d.evidence
        return (f"under noise (eps {d.options['eps']}) with the benign features masked out, {d.score:.0%} of the other "
                f"classes' images go to class {ev['top_class']} (flag >= {d.threshold}); accuracy "
                f"{ev['accuracy_noise_negative']:.0%} (noise alone {ev['accuracy_noise']:.0%})")
    if d.detector == "bn-kl":
        if d.score is None:
            return d.evidence["reason"]
        layer, channel, z = d.neurons[0]
        return (f"most outlying BN channel {layer}[{channel}], robust z {z:.1f} (flag > {d.threshold}; "
                f"{len(d.evidence['layers'])} BN layers)")
    return f"score {d.score}"


# ---------------------------------------------------------------------------------------- attack
def _literal(value: str):
    """An attack parameter from the command line: an int, else a float, else the text."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@main.command()
@click.argument("name", required=False)
@click.option("--data", type=click.Path(), help="training data (its train split when it has splits)")
@click.option("--arch", default="mnist-cnn", show_default=True, help="architecture (see --list)")
@click.option("--out", type=click.Path(), help="where to write the backdoored ONNX model")
@click.option("--mode", type=click.Choice(["all-to-one", "all-to-all"]), default="all-to-one", show_default=True)
@click.option("--target", type=int, default=0, show_default=True, help="target class (all-to-one)")
@click.option("--rate", type=float, default=0.1, show_default=True, help="share of eligible images poisoned")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="an attack parameter, e.g. --param size=4 (repeatable; --list shows each attack's)")
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default="cosine", show_default=True)
@click.option("--augment", type=click.Choice(["crop-flip"]), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="weights and training order")
@click.option("--attack-seed", type=int, default=0, show_default=True, help="which images are poisoned")
@click.option("--clean-holdout", type=int, default=500, show_default=True,
              help="defender images kept out of training (ANP protocol: from the other 10%)")
@click.option("--clean-out", type=click.Path(), default=None, help="write those defender images to this .npz")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@click.option("--keep-batchnorm", is_flag=True, help="keep BatchNormalization nodes in the export")
@click.option("--device", default=None)
@click.option("--resume", is_flag=True,
              help="keep a checkpoint at OUT.ckpt; the same command after an interruption continues from it")
@click.option("--list", "list_all", is_flag=True, help="list attacks and architectures")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def attack(name, data, arch, out, mode, target, rate, params, epochs, lr, batch_size,
           schedule, augment, seed, attack_seed, clean_holdout, clean_out, exporter, keep_batchnorm, device,
           resume, list_all, as_json):
    """Train a backdoored model with attack NAME and export it to ONNX with its spec in the metadata."""
    from ..attacks import list_attacks
    from ..models import list_models
    from ..options import parse_assignments

    if list_all:
        for attack_name, desc in list_attacks():
            click.echo(f"attack {attack_name}: {desc}")
        click.echo(f"architectures: {', '.join(list_models())}")
        return
    if not name or not data or not out:
        raise click.UsageError("NAME, --data and --out are required (or --list)")
    from ..attacks.run import run_named_attack

    p = {k: _literal(v) for k, v in parse_assignments(params).items()}
    summary = run_named_attack(name, arch, data, out, mode=mode, target=target, rate=rate, params=p,
                               attack_seed=attack_seed, cache_dir=CACHE_DIR, epochs=epochs, lr=lr,
                               batch_size=batch_size, schedule=schedule, augment=augment, seed=seed,
                               clean_holdout=clean_holdout, clean_out=clean_out, dynamo=exporter == "dynamo",
                               keep_batchnorm=keep_batchnorm, device=device,
                               checkpoint=f"{out}.ckpt" if resume else None,
                               progress=not as_json and sys.stderr.isatty())
    summary.pop("defender_idx", None)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    resumed = f" (resumed after epoch {summary['resumed_at']})" if summary.get("resumed_at") else ""
    click.echo(f"{name} on {arch}: {summary['n_poisoned']} of {summary['n_train']} training images poisoned, "
               f"trained in {summary['train_seconds']:.0f} s{resumed}")
    if summary.get("acc") is not None:
        asr = "n/a" if summary.get("asr") is None else f"{summary['asr']:.2f}%"
        click.echo(f"  test ACC {summary['acc']:.2f}%  ASR {asr} (in torch; `audit validate` measures the file)")
    click.echo(f"  wrote {summary['model']}" + (f" and {clean_out}" if clean_out else ""))


# ---------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="where to keep the models and clean set (default: a fresh temporary folder)")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--method", default=None, help="the repair method to show (see audit repair --list) "
              "[default: audit repair's default]")
@handle_errors
def demo(out_dir, epochs, method):
    """Train a BadNets MNIST model, scan it, repair it, validate both under onnxruntime."""
    import tempfile

    from ..demo import run_demo

    out_dir = out_dir or tempfile.mkdtemp(prefix="audit-demo-")
    click.echo(f"audit demo: working in {out_dir}")
    res = run_demo(out_dir, epochs=epochs, method=method, progress=sys.stderr.isatty(),
                   step=lambda name: click.echo(f"- {name}"))
    click.echo("\n".join(_scan_lines(res.scan)))
    _print_repair(res.repair, clean=True)
    click.echo("")
    click.echo(f"{'model':<10} {'ACC %':>8} {'ASR %':>8}   file")
    click.echo(f"{'suspect':<10} {res.before.acc:8.2f} {res.before.asr:8.2f}   {res.suspect}")
    click.echo(f"{'repaired':<10} {res.after.acc:8.2f} {res.after.asr:8.2f}   {res.repaired}")
    click.echo(f"(onnxruntime {res.after.provider}; {res.before.n} test images, ASR over {res.before.n_asr}; "
               f"total {res.seconds:.0f} s)")

