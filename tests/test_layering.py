"""The package map of docs/architecture.md, enforced: which package may import which, and the
honesty boundary (no repair or scan code loads the attacks or the evaluation, and none of it reads
the attack spec a model's metadata may carry)."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from backdoor_audit.cli import main
from backdoor_audit.models import build_model

from conftest import export, make_spec, random_images

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "backdoor_audit"

# the small modules at the bottom: they import nothing of the package but each other
BASE = {"errors", "util", "jsonobj", "__init__"}
# package (or top-level module) -> what it may import besides BASE
ALLOWED = {
    "options": set(),
    "data": set(),
    "graph": set(),
    "models": set(),
    "training": {"data"},
    "export": {"graph"},
    "inputs": {"data", "graph"},
    "audit": {"data", "graph", "inputs", "options", "export", "training", "models"},
    "repair": {"data", "graph", "inputs", "options", "export", "training", "models", "audit"},
    "attacks": {"data", "models", "options", "training", "export"},
    "evaluation": {"data", "graph", "inputs", "export", "attacks"},
    "zoo": {"data", "graph", "inputs", "export", "models", "training", "attacks", "evaluation", "options"},
    "bench": {"data", "graph", "inputs", "export", "models", "training", "attacks", "evaluation", "repair",
              "audit", "options", "zoo"},
    "demo": {"data", "graph", "inputs", "export", "models", "training", "attacks", "evaluation", "repair",
             "audit", "options"},
    "cli": {"data", "graph", "inputs", "export", "models", "training", "attacks", "evaluation", "repair",
            "audit", "options", "zoo", "demo", "bench"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every backdoor_audit module ``path`` imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "backdoor_audit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                out |= {target} if node.module else {f"{target}.{a.name}" for a in node.names}
            elif node.module and node.module.split(".")[0] == "backdoor_audit":
                out.add(node.module)
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__version__" else "__init__"


def test_every_import_follows_the_package_map():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    broken = []
    for path in files:
        src = _top(_module_name(path))
        allowed = BASE | ({src} if src not in BASE else set()) | ALLOWED.get(src, set())
        if src in BASE:
            allowed = BASE
        assert src in ALLOWED or src in BASE, f"{path}: package {src} is not in the package map"
        for target in _imports(path):
            dst = _top(target)
            if dst not in allowed:
                broken.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not broken, "\n".join(broken)


def test_the_map_is_acyclic_and_matches_the_docs():
    order, seen = [], set()

    def visit(pkg, stack=()):
        assert pkg not in stack, f"cycle: {' -> '.join(stack + (pkg,))}"
        if pkg in seen:
            return
        for dep in ALLOWED[pkg]:
            visit(dep, stack + (pkg,))
        seen.add(pkg)
        order.append(pkg)

    for pkg in ALLOWED:
        visit(pkg)
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    for pkg, deps in ALLOWED.items():
        row = next((l for l in doc.splitlines() if l.startswith(f"| `{pkg}")), None)
        assert row is not None, f"docs/architecture.md has no row for {pkg}"
        listed = {d.strip(" `") for d in row.split("|")[3].split(",") if d.strip(" `-")}
        assert listed == deps, (pkg, listed, deps)


def test_repair_and_scan_load_no_attack_or_evaluation_module():
    code = ("import sys, backdoor_audit.repair, backdoor_audit.repair.run, backdoor_audit.audit.scan, "
            "backdoor_audit.audit.probe\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('backdoor_audit.attacks', "
            "'backdoor_audit.evaluation', 'backdoor_audit.zoo', 'backdoor_audit.demo')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cli_and_zoo_cli_do_not_import_each_other():
    zoo_imports = _imports(PACKAGE / "cli" / "zoo.py")
    assert all(not t.startswith("backdoor_audit.cli.main") and t != "backdoor_audit.cli" for t in zoo_imports)


# ------------------------------------------------------------ the spec in the metadata is never read
@pytest.fixture(scope="module")
def with_and_without_spec(tmp_path_factory):
    """One model twice: with a BadNets spec (target 3) in its metadata, and with it stripped."""
    d = tmp_path_factory.mktemp("spec")
    torch.manual_seed(0)
    src = export(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28), d / "m.onnx", "dynamo")
    proto = onnx.load(str(src))
    proto.metadata_props.add(key="backdoor_audit.attack_spec", value=make_spec(target=3).to_json())
    with_spec, without = d / "with.onnx", d / "without.onnx"
    onnx.save(proto, str(with_spec))
    del proto.metadata_props[:]
    onnx.save(proto, str(without))
    return with_spec, without


def test_repair_is_bit_identical_with_the_spec_stripped(tmp_path, with_and_without_spec, mnist_images):
    from backdoor_audit.repair.run import repair_model

    outs, reports = [], []
    for i, path in enumerate(with_and_without_spec):
        out = tmp_path / f"r{i}.onnx"
        reports.append(repair_model(path, mnist_images, "anp", out, {"iterations": 6, "batch_size": 16,
                                                                       "fraction": 0.05}))
        outs.append({t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer})
    a, b = (dataclasses.asdict(r) for r in reports)
    for key in ("pruned", "units", "clean_acc_before", "clean_acc_after", "parity_max_abs", "params"):
        assert a[key] == b[key], key
    assert a["pruned"]  # the run did something
    assert outs[0].keys() == outs[1].keys()
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_scan_is_bit_identical_with_the_spec_stripped(with_and_without_spec, mnist_images):
    from backdoor_audit.audit.scan import scan_model

    opts = {"anp-probe": {"eps": "0.1,0.3", "probe_steps": 2, "mask_iterations": 4}, "neural-cleanse": {"steps": 10},
            "mm-bd": {"steps": 20}, "ban": {"mask_steps": 4, "noise_steps": 2}}
    reps = [scan_model(p, mnist_images, detectors=tuple(opts) + ("graph", "bn-kl"), options=opts)
            for p in with_and_without_spec]
    a, b = (json.loads(json.dumps(r.to_dict(), default=str)) for r in reps)
    for d in (a, b):
        d.pop("model"), d.pop("seconds"), d.pop("peak_rss_mb")
        for det in d["detections"]:
            det.pop("seconds"), det.pop("peak_mb")
    assert a == b


# ------------------------------------------------------------------------ the test split is refused
@pytest.mark.parametrize("command", ["repair", "scan"])
def test_repair_and_scan_refuse_the_test_split(tmp_path, with_and_without_spec, command):
    data = tmp_path / "d.npz"
    imgs = random_images(20)
    x8 = (imgs.x[:, 0] * 255).astype(np.uint8)
    np.savez(data, x_train=x8, y_train=imgs.y, x_test=x8, y_test=imgs.y)
    out = tmp_path / "o.onnx"
    extra = ["--out", str(out)] if command == "repair" else []
    res = CliRunner().invoke(main, [command, str(with_and_without_spec[1]), "--data", str(data), "--split", "test",
                                    *extra])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "evaluation data" in lines[0], res.stderr
    assert not out.exists()
