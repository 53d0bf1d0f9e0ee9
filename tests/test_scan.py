"""The scan: detectors behind one contract, the graph check for hidden trigger branches judged by
data flow, the verdict, the CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from backdoor_audit.audit.detectors import Detection, neg_log10
from backdoor_audit.audit.hazards import Finding, graph_hazards
from backdoor_audit.audit.scan import decide, default_detectors, parse_detectors, scan_model
from backdoor_audit.cli import main
from backdoor_audit.models import build_model

from conftest import export


class HiddenBranch(torch.nn.Module):
    """A classifier with an architectural backdoor: a bright bottom-right corner switches the
    logits to class 0 through Greater/Where, no weights involved."""

    def __init__(self):
        super().__init__()
        self.net = build_model("mnist-cnn", (1, 28, 28), 10)

    def forward(self, x):
        logits = self.net(x)
        fire = x[:, :, -4:, -4:].amax(dim=(1, 2, 3)) > 0.9
        forced = torch.zeros_like(logits)
        forced[:, 0] = 100.0
        return torch.where(fire[:, None], forced, logits)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    torch.manual_seed(0)
    return export(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28),
                  tmp_path_factory.mktemp("s") / "plain.onnx", "dynamo")


class TinyAttention(torch.nn.Module):
    """A clean transformer-style classifier: a patch-embedding conv, one self-attention block whose
    scores are masked with Where/Equal where a key token is all zero (a padding mask), softmax, a
    linear head: the comparisons read the embedding's output, not the raw image."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(1, 16, 7, stride=7)
        self.qkv = torch.nn.Linear(16, 48)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16 tokens, 16)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / 4.0
        pad = (t.abs().sum(-1) == 0)[:, None, :]  # (N, 1, keys)
        scores = torch.where(pad, torch.full_like(scores, -1e4), scores)
        att = torch.softmax(scores, dim=-1) @ v
        return self.head(att.mean(1))


@pytest.mark.parametrize("exporter", ["dynamo", "dynamo-raw", "legacy13"])
def test_hidden_branch_is_flagged_without_data_and_its_nodes_named(tmp_path, exporter):
    path = export(HiddenBranch().eval(), (1, 28, 28), tmp_path / "hidden.onnx", exporter)
    proto = onnx.load(str(path))
    found = graph_hazards(proto)
    assert len(found) == 1 and found[0].severity == "critical" and found[0].id == "graph.trigger-branch"
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert ops[found[0].evidence["node"]] in ("Greater", "Where")
    assert "Where" in {ops[n] for n in found[0].evidence["path"]}
    rep = scan_model(path, detectors=("graph",))  # no data: the graph alone decides
    assert rep.verdict == "backdoor suspected" and rep.decided_by == "graph" and rep.backdoor_found


def test_a_clean_attention_export_with_where_equal_softmax_is_not_flagged(tmp_path):
    path = export(TinyAttention().eval(), (1, 28, 28), tmp_path / "att.onnx", "dynamo")
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Where", "Equal", "Softmax"} <= ops  # presence alone used to be a high finding
    assert graph_hazards(proto) == []
    rep = scan_model(path, detectors=("graph",))
    assert rep.verdict == "inconclusive" and not rep.backdoor_found and "only the graph" in rep.reason


def test_foreign_and_code_executing_operators_are_findings():
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mystery", ["a"], ["b"], domain="vendor.ops"),
             helper.make_node("PyOp", ["b"], ["y"], domain="ai.onnx.contrib")]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [vi[0]], [vi[1]]))
    found = {f.id: f for f in graph_hazards(model)}
    assert found["graph.code-execution"].severity == "critical" and "PyOp" in found["graph.code-execution"].message
    assert found["graph.foreign-domain"].evidence == {"domain": "vendor.ops", "ops": ["Mystery"]}
    assert "ai.onnx.contrib" not in {f.evidence.get("domain") for f in found.values()}  # PyOp reported once


def test_plain_model_has_no_graph_findings(plain_model):
    assert graph_hazards(onnx.load(str(plain_model))) == []


def test_default_detectors_and_the_plus_form():
    assert parse_detectors(None, True) is None and parse_detectors(" ", False) is None
    assert default_detectors(True) == ("graph", "neural-cleanse", "mm-bd", "bn-kl")
    assert default_detectors(False) == ("graph", "mm-bd")
    assert parse_detectors("+anp-probe, ban,mm-bd", False) == ("graph", "mm-bd", "anp-probe", "ban")
    assert parse_detectors("+anp-probe", True) == ("graph", "neural-cleanse", "mm-bd", "bn-kl", "anp-probe")
    assert parse_detectors("graph, ban", True) == ("graph", "ban")


def _det(name, score, threshold, target):
    flagged = score > threshold
    findings = [Finding(f"{name}.x", "high", f"{name} points at class {target}", {})] if flagged else []
    ev = {"p_value": 10.0 ** -score} if name == "mm-bd" else {}
    opts = {"p_value": 10.0 ** -threshold} if name == "mm-bd" else {"anomaly": threshold}
    return Detection(name, score, threshold, flagged, target if flagged else None, findings, evidence=ev, options=opts)


def test_the_verdict_takes_either_weight_detector_and_the_target_of_the_one_further_over():
    """NC and MM-BD each judge; a model either flags is suspected (on the CIFAR-10 zoo NC misses
    input-aware, which MM-BD names), the target from the detector furthest over its threshold."""
    nc_miss, mm_hit = _det("neural-cleanse", 1.16, 2.97, 6), _det("mm-bd", 8.9, 3.45, 0)
    assert decide([nc_miss, mm_hit])[:3] == ("backdoor suspected", 0, "mm-bd")
    nc_far, mm_near = _det("neural-cleanse", 9.0, 2.97, 0), _det("mm-bd", 4.0, 3.45, 4)
    assert decide([mm_near, nc_far])[:3] == ("backdoor suspected", 0, "neural-cleanse")
    verdict, target, by, reason = decide([_det("neural-cleanse", 1.0, 2.97, 3), _det("mm-bd", 1.0, 3.45, 3)])
    assert (verdict, target, by) == ("no backdoor found", None, "neural-cleanse, mm-bd")
    assert "anomaly index" in reason and "p = " in reason
    assert decide([_det("mm-bd", 1.0, 3.45, 3)])[:3] == ("no backdoor found", None, "mm-bd")  # no data: MM-BD alone


def test_scan_report(plain_model, mnist_images):
    rep = scan_model(plain_model, mnist_images, detectors=parse_detectors("+anp-probe", True),
                     options={"anp-probe": {"eps": "0.1,0.4", "probe_steps": 2, "mask_iterations": 5},
                              "neural-cleanse": {"steps": 20}, "mm-bd": {"steps": 20}})
    assert [d.detector for d in rep.detections] == ["graph", "neural-cleanse", "mm-bd", "bn-kl", "anp-probe"]
    bnkl = rep.detection("bn-kl")  # the MNIST CNN has no BatchNorm: no score, and it says why
    assert bnkl.score is None and bnkl.flagged is None and "no BatchNormalization" in bnkl.evidence["reason"]
    probe = rep.detection("anp-probe")
    assert [p.eps for p in probe.evidence["probe"]] == [0.1, 0.4]
    for p in probe.evidence["probe"]:
        assert 0 <= p.error_rate <= 1 and 0 <= p.top_share <= 1
        assert abs(sum(p.class_share) - 1) < 1e-3
    assert probe.evidence["units"] == 560 and len(probe.neurons) == 10
    nc = rep.detection("neural-cleanse")
    assert len(nc.evidence["anomaly_index"]) == 10 and len(nc.artifacts["triggers"]) == 10
    if rep.verdict == "backdoor suspected":  # by the weight detector furthest over its threshold
        d = rep.detection(rep.decided_by)
        assert d.flagged and all(d.score / d.threshold >= o.score / o.threshold
                                 for o in rep.detections if o.detector in ("neural-cleanse", "mm-bd") and o.flagged)
    else:  # cleared only by both
        assert rep.verdict == "no backdoor found" and rep.decided_by == "neural-cleanse, mm-bd"
    assert all(d.peak_mb > 0 for d in rep.detections)
    assert "triggers" not in json.dumps(rep.to_dict(), default=str)


def test_scan_cli_json_params_and_too_few_images(tmp_path, plain_model, mnist_images):
    few = tmp_path / "few.npz"
    np.savez(few, x=(mnist_images.x[:5, 0] * 255).astype(np.uint8), y=np.arange(5) * 2)
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--data", str(few)])
    assert res.exit_code == 2 and "5 clean images for 9 classes" in res.stderr
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=(mnist_images.x[:, 0] * 255).astype(np.uint8), y=mnist_images.y)
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--data", str(ok), "--json", "--detectors",
                                    "graph,anp-probe", "--param", "anp-probe.mask_iterations=3",
                                    "--param", "anp-probe.probe_steps=1"])
    assert res.exit_code in (0, 1), res.stderr
    out = json.loads(res.stdout)
    assert out["verdict"] and len(out["detections"][1]["evidence"]["probe"]) == 4
    assert [d["detector"] for d in out["detections"]] == ["graph", "anp-probe"]
    assert out["detections"][1]["options"]["mask_iterations"] == 3
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--detectors", "neural-cleanse"])
    assert res.exit_code == 2 and "needs labeled clean images" in res.stderr
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--detectors", "nope"])
    assert res.exit_code == 2 and "unknown detector 'nope'" in res.stderr
    res = CliRunner().invoke(main, ["scan", "--list"])
    assert res.exit_code == 0 and "neural-cleanse:" in res.output


NC_FAST = {"neural-cleanse": {"steps": 120, "batch_size": 32}}


def test_neural_cleanse_names_the_target_of_a_backdoored_model_and_its_triggers_repair_it(tmp_path, tiny_backdoor):
    """The scan's triggers, saved, are what `repair --method nc --param triggers=` unlearns: ASR falls
    without reverse-engineering them again."""
    from backdoor_audit.evaluation.evaluate import evaluate
    from backdoor_audit.graph.load import load_model
    from backdoor_audit.inputs import model_preprocess
    from backdoor_audit.repair.run import repair_model

    path, clean, test, spec = tiny_backdoor
    clean_npz = tmp_path / "clean.npz"
    np.savez(clean_npz, x=(clean.x * 255).round().astype(np.uint8), y=clean.y)
    trig = tmp_path / "t.npz"
    res = CliRunner().invoke(main, ["scan", str(path), "--data", str(clean_npz), "--detectors", "graph,neural-cleanse",
                                    "--param", "neural-cleanse.steps=120", "--param", "neural-cleanse.batch_size=32",
                                    "--save-triggers", str(trig)])
    assert res.exit_code == 1, res.output + res.stderr
    assert "BACKDOOR SUSPECTED, suspected target class 0" in res.output
    out = tmp_path / "r.onnx"
    rep = repair_model(path, clean, "nc", out, {"triggers": str(trig), "iterations": 80, "batch_size": 64})
    assert rep.log["flagged"] == [0] and rep.parity_max_abs <= 1e-4
    pre = model_preprocess(load_model(path), test)
    assert evaluate(out, test, pre, spec).asr <= 10
    with pytest.raises(Exception, match="triggers of shape"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, target=[0], mask=np.zeros((1, 3, 3)), pattern=np.zeros((1, 1, 3, 3)), l1=[1.0],
                 success=[1.0], reached=[True])
        repair_model(path, clean, "nc", tmp_path / "x.onnx", {"triggers": str(bad)})
    assert not (tmp_path / "x.onnx").exists()


def test_neural_cleanse_does_not_flag_the_clean_twin(tiny_clean):
    path, clean = tiny_clean
    rep = scan_model(path, clean, detectors=("graph", "neural-cleanse"), options=NC_FAST)
    nc = rep.detection("neural-cleanse")
    assert rep.verdict == "no backdoor found" and not nc.flagged and nc.score <= nc.threshold, nc.evidence


def _external(tmp_path, plain_model, edit=None) -> tuple:
    """The plain model saved with its weights in ``w.bin`` beside it; ``edit(tensor)`` changes the
    external-data entries of its first initializer."""
    folder = tmp_path / "model"
    folder.mkdir()
    proto = onnx.load(str(plain_model))
    onnx.save_model(proto, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    first = proto.graph.initializer[0]
    if edit is not None:
        edit(first)
        onnx.save_model(proto, str(folder / "m.onnx"))
    return folder / "m.onnx", first.name


def _set(tensor, **entries):
    for e in tensor.external_data:
        if e.key in entries:
            e.value = str(entries.pop(e.key))
    for k, v in entries.items():
        tensor.external_data.add(key=k, value=str(v))


@pytest.mark.parametrize("case, needle", [
    ("dotdot", "leaves the model's folder"),
    ("absolute", "absolute external data location"),
    ("symlink", "passes through the symlink"),
    ("hardlink", "hard links"),
    ("past-end", "runs past the end"),
])
def test_unsafe_external_data_is_a_critical_finding_naming_the_tensor_and_nothing_outside_is_read(
        tmp_path, plain_model, monkeypatch, case, needle):
    import builtins
    import os

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 10_000_000)

    def edit(t):
        if case == "dotdot":
            _set(t, location="../outside.bin")
        elif case == "absolute":
            _set(t, location=str(outside))
        elif case == "symlink":
            (tmp_path / "model" / "link").symlink_to(tmp_path)
            _set(t, location="link/outside.bin")
        elif case == "hardlink":
            os.link(tmp_path / "model" / "w.bin", tmp_path / "elsewhere.bin")
        elif case == "past-end":
            _set(t, offset=10**9)

    path, tensor = _external(tmp_path, plain_model, edit)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    rep = scan_model(path)
    found = [f for f in rep.findings if f.id == "file.external-data"]
    assert found and found[0].severity == "critical" and f"tensor '{tensor}'" in found[0].message, rep.findings
    assert needle in found[0].message
    assert rep.hazard_found and rep.verdict == "inconclusive"
    assert not any("outside.bin" in p or "elsewhere" in p for p in opened), opened
    res = CliRunner().invoke(main, ["scan", str(path)])
    assert res.exit_code == 1 and "file.external-data" in res.output


def test_safe_external_data_scans_like_the_plain_file(tmp_path, plain_model):
    path, _ = _external(tmp_path, plain_model)
    rep = scan_model(path, detectors=("graph",))
    assert not rep.findings and not rep.hazard_found


def test_mm_bd_without_data_on_the_tiny_pair(tiny_backdoor, tiny_clean):
    """MM-BD needs no images: at the paper's p-value it names the backdoored model's target and
    clears its clean twin. (The tiny model's p, 0.0068, is above the MNIST zoo's fitted 3.6e-4: the
    shipped threshold misses it, as it misses half the held-out zoo backdoors without data.)"""
    reps = [scan_model(p, detectors=("graph", "mm-bd"), calibrated=False, options={"mm-bd": {"steps": 100}})
            for p in (tiny_backdoor[0], tiny_clean[0])]
    bad, good = (r.detection("mm-bd") for r in reps)
    assert reps[0].verdict == "backdoor suspected" and reps[0].suspected_target == 0 and reps[0].decided_by == "mm-bd"
    assert reps[1].verdict == "no backdoor found" and not good.flagged


def test_scanning_a_folder_scans_every_onnx_file_and_fails_if_any_is_flagged(tmp_path, plain_model):
    import shutil

    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    onnx.save_model(onnx.load(str(plain_model)), str(folder / "a.onnx"))  # weights inside the file
    shutil.copy(plain_model, folder / "c.onnx")  # its external data left behind: an error line, the scan goes on
    export(HiddenBranch().eval(), (1, 28, 28), folder / "sub" / "b.onnx", "dynamo")
    res = CliRunner().invoke(main, ["scan", str(folder), "--detectors", "graph", "--json"])
    assert res.exit_code == 2, res.output + res.stderr  # an unreadable file is an error, after the others
    assert "c.onnx: tensor '" in res.stderr and "external data file 'plain.onnx.data' is missing" in res.stderr
    out = json.loads(res.stdout)
    assert [o["verdict"] for o in out] == ["inconclusive", "backdoor suspected"]
    assert out[1]["model"].endswith("b.onnx")
    (folder / "c.onnx").unlink()
    res = CliRunner().invoke(main, ["scan", str(folder), "--detectors", "graph"])
    assert res.exit_code == 1 and "BACKDOOR SUSPECTED" in res.output
    (tmp_path / "none").mkdir()
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no .onnx files" in res.stderr


def test_repair_rescan_reports_whether_the_signature_is_gone(tmp_path, tiny_backdoor):
    """CLP prunes nothing in the tiny CNN (docs/repair.md), so MM-BD still points at class 0
    afterwards, with no trigger and no data. Its p (0.0068 before) is under the paper's 0.05 but over
    the MNIST zoo's fitted 3.6e-4, so the re-scan's verdict under the shipped threshold is a
    clearance, the same verdict a scan of the written file gives."""
    path = tiny_backdoor[0]
    res = CliRunner().invoke(main, ["repair", str(path), "--method", "clp", "--out", str(tmp_path / "o.onnx"),
                                    "--rescan", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    r = json.loads(res.stdout)["log"]["rescan"]
    mm = r["scores"]["mm-bd"]
    assert r["decided_by"] == "mm-bd" and mm["top_class"] == 0 and mm["score"] > neg_log10(0.05)
    direct = scan_model(tmp_path / "o.onnx", detectors=("graph", "mm-bd"))
    assert r["verdict"] == direct.verdict and mm["threshold"] == direct.detection("mm-bd").threshold


def test_the_console_summary_names_each_detectors_evidence(plain_model, mnist_images, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=(mnist_images.x[:, 0] * 255).astype(np.uint8), y=mnist_images.y)
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--data", str(data), "--detectors", "mm-bd,ban",
                                    "--param", "mm-bd.steps=3", "--param", "ban.mask_steps=2",
                                    "--param", "ban.noise_steps=1"])
    assert res.exit_code in (0, 1), res.output + res.stderr
    assert "mm-bd (" in res.output and "order-statistic p = " in res.output
    assert "ban (" in res.output and "with the benign features masked out" in res.output
