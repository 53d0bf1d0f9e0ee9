"""`audit scan --format sarif`: the log validates against the SARIF 2.1.0 schema (vendored in
tests/data, offline), locates each finding at its .onnx file, and keeps its fingerprints across
rescans; `--fail-on` sets which file or graph findings fail the scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper

from backdoor_audit.cli import main
from backdoor_audit.models import build_model

from conftest import export
from test_scan import HiddenBranch

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())


def _misdeclared(path: Path) -> Path:
    """Relu of a (1, 4) input whose output is declared (1, 5): the basic checker passes it, the
    full check's strict shape inference does not."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("sarif")
    torch.manual_seed(0)
    export(HiddenBranch().eval(), (1, 28, 28), d / "hidden.onnx", "dynamo")
    export(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28), d / "plain.onnx", "dynamo")
    _misdeclared(d / "misdeclared.onnx")
    return d


def _sarif(args) -> tuple[int, dict]:
    res = CliRunner().invoke(main, ["scan", *args, "--detectors", "graph", "--format", "sarif"])
    assert res.exit_code in (0, 1), res.output + res.stderr
    return res.exit_code, json.loads(res.stdout)


def test_sarif_log_validates_and_locates_every_finding_at_its_file(folder):
    code, log = _sarif([str(folder)])
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    assert code == 1  # the hidden branch
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"graph.trigger-branch", "graph.invalid"}
    assert rules["graph.trigger-branch"]["defaultConfiguration"]["level"] == "error"
    assert float(rules["graph.trigger-branch"]["properties"]["security-severity"]) >= 9
    by_rule = {r["ruleId"]: r for r in run["results"]}
    branch = by_rule["graph.trigger-branch"]
    loc = branch["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == (folder / "hidden.onnx").as_uri()
    assert loc["physicalLocation"]["region"]["startLine"] == 1  # GitHub's upload needs a line
    proto = onnx.load(str(folder / "hidden.onnx"))
    assert loc["logicalLocations"][0]["name"] in {n.name for n in proto.graph.node}
    assert by_rule["graph.invalid"]["level"] == "warning" and "shape" in by_rule["graph.invalid"]["message"]["text"]
    assert [r["ruleIndex"] for r in run["results"]] == [list(rules).index(r["ruleId"]) for r in run["results"]]
    verdicts = {Path(v["model"]).name: v["verdict"] for v in run["properties"]["verdicts"]}
    assert verdicts["hidden.onnx"] == "backdoor suspected" and verdicts["plain.onnx"] == "inconclusive"


def test_sarif_fingerprints_are_stable_across_rescans_and_differ_between_files(folder, tmp_path):
    _, first = _sarif([str(folder / "hidden.onnx")])
    _, again = _sarif([str(folder / "hidden.onnx")])
    prints = [r["partialFingerprints"] for r in first["runs"][0]["results"]]
    assert prints and prints == [r["partialFingerprints"] for r in again["runs"][0]["results"]]
    for f in folder.glob("hidden.onnx*"):  # the file and its external data, in another folder
        shutil.copy(f, tmp_path / f.name)
    _, other = _sarif([str(tmp_path / "hidden.onnx")])
    assert other["runs"][0]["results"][0]["partialFingerprints"] != prints[0]


def test_a_clean_file_gives_a_valid_log_with_no_results(folder, tmp_path):
    out = tmp_path / "scan.sarif"
    res = CliRunner().invoke(main, ["scan", str(folder / "plain.onnx"), "--detectors", "graph", "--format", "sarif",
                                    "--output", str(out)])
    assert res.exit_code == 0, res.output
    log = json.loads(out.read_text())
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"] == []


def test_fail_on_sets_which_graph_findings_fail_the_scan(folder):
    path = str(folder / "misdeclared.onnx")
    assert CliRunner().invoke(main, ["scan", path, "--detectors", "graph"]).exit_code == 0  # medium < high
    res = CliRunner().invoke(main, ["scan", path, "--detectors", "graph", "--fail-on", "medium"])
    assert res.exit_code == 1 and "[medium] graph.invalid" in res.output
    res = CliRunner().invoke(main, ["scan", str(folder / "hidden.onnx"), "--detectors", "graph", "--fail-on",
                                    "critical"])
    assert res.exit_code == 1  # a backdoor verdict fails whatever --fail-on says
