"""`audit bench scan` and the calibration it reports: thresholds fitted on one split of the zoo's
models, judged on the other."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from backdoor_audit.cli import main
from backdoor_audit.bench.calibration import (VERDICT, assign_splits, auroc, calibrate, fit_detector, fit_threshold,
                                             judge_shipped, nc_at_steps, thresholds_doc, verdict_rows)


def test_auroc_counts_ties_half_and_needs_both_sides():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 2], [2, 0]) == pytest.approx(0.625)  # 1>0, 2>0, 2=2 (half), 1<2
    assert auroc([], [1]) is None


def test_threshold_maximises_youden_and_prefers_fewer_false_positives():
    assert fit_threshold([5, 6, 7], [1, 2, 3]) == 4.0  # the midpoint of the gap
    # one clean model scores 6: cutting at 6.5 loses a backdoored one (J 2/3 - 0), at 5.5 flags the
    # clean one (J 1 - 1/3): equal J, so the lower FPR wins
    assert fit_threshold([5, 7, 8], [1, 2, 6]) == 6.5
    assert fit_threshold([1], []) is None


def _row(model, attack, score, top=0, target=0, mode="all-to-one", s="mnist"):
    return {"model": model, "set": s, "attack": attack, "mode": "-" if attack == "clean" else mode, "target":
            None if attack == "clean" else target, "status": "ok",
            "detectors": {"nc": {"score": score, "threshold": 2.0, "top_class": top}}}


def test_split_alternates_within_each_group_and_the_fit_is_judged_on_the_other_half():
    rows = [_row(f"mnist/clean-s{i}", "clean", 1.0 + 0.1 * i) for i in range(4)]
    rows += [_row(f"mnist/badnets-t{i}-s0", "badnets", 3.0 + i, top=i, target=i if i else 5) for i in range(4)]
    split = assign_splits(rows)
    assert [split[f"mnist/clean-s{i}"] for i in range(4)] == ["calibration", "held-out"] * 2
    assert sum(v == "held-out" for k, v in split.items() if "badnets" in k) == 2
    fit = fit_detector(rows, "nc")
    assert fit.paper_threshold == 2.0 and 1.2 < fit.threshold < 3.0
    h = fit.held_out
    assert h["n_clean"] == 2 and h["n_backdoored"] == 2 and h["auroc"] == 1.0 and h["fpr"] == 0.0
    assert h["tpr"] == 1.0 and h["target_right"] == 1.0  # held out: badnets-t1 and -t3, tops 1 and 3


def _two(model, attack, nc, mm, nc_top=0, mm_top=0, target=0):
    """A row scored by both weight detectors (MM-BD's score straight, no p-value in its evidence)."""
    r = _row(model, attack, nc, nc_top, target)
    r["detectors"] = {"neural-cleanse": {"score": nc, "threshold": 2.0, "top_class": nc_top},
                      "mm-bd": {"score": mm, "threshold": 1.3, "top_class": mm_top}}
    return r


def test_the_verdict_rule_is_judged_as_one_detector_with_each_detectors_threshold():
    """The scan's verdict with data flags a model when NC or MM-BD is over its own threshold and
    names the class of the one further over it; the bench scores it as max(score / threshold)."""
    rows = [_two("mnist/clean-s0", "clean", 2.0, 2.0), _two("mnist/clean-s1", "clean", 1.0, 3.0),
            _two("mnist/ia-t0-s0", "input-aware", 1.0, 20.0, nc_top=6, mm_top=0),  # NC misses, MM-BD names 0
            _two("mnist/sig-t0-s0", "sig", 5.0, 1.0, nc_top=0, mm_top=4)]  # NC alone
    judged = {r["model"]: r["detectors"][VERDICT] for r in verdict_rows(rows, {"neural-cleanse": 4.0, "mm-bd": 10.0})}
    assert judged["mnist/ia-t0-s0"] == {"score": 2.0, "top_class": 0, "threshold": 1.0}
    assert judged["mnist/sig-t0-s0"]["score"] == 1.25 and judged["mnist/sig-t0-s0"]["top_class"] == 0
    assert judged["mnist/clean-s0"]["score"] == 0.5 and judged["mnist/clean-s1"]["score"] == 0.3
    (_, _, nc), (_, _, mm), (name, cut, both) = judge_shipped(rows, {"neural-cleanse": 4.0, "mm-bd": 10.0})
    assert nc["tpr"] == 0.5 and mm["tpr"] == 0.5 and nc["fpr"] == mm["fpr"] == 0.0
    assert (name, cut) == (VERDICT, 1.0) and both["tpr"] == 1.0 and both["fpr"] == 0.0 and both["auroc"] == 1.0
    assert both["target_right"] == 1.0
    fits = calibrate(rows, ["neural-cleanse", "mm-bd"])  # fitted on the calibration split, then combined
    assert [f.detector for f in fits] == ["neural-cleanse", "mm-bd", VERDICT] and fits[-1].threshold == 1.0


def test_nc_judged_at_fewer_steps_from_its_traces_and_never_on_a_run_it_did_not_have():
    def row(traces):
        return {"model": "m", "detectors": {"mm-bd": {"score": 1.0}, "neural-cleanse": {
            "score": 9.0, "threshold": 2.0, "top_class": 0, "target": 0, "evidence": {"l1_trace": traces}}}}

    # class 2's mask is the outlier after 2 checks (20 steps); by the 4th every class has caught up
    traces = [[50, 40, 30, 20], [52, 41, 31, 21], [50, 5, 4, 19], [49, 39, 29, 20], [51, 40, 30, 22]]
    short, whole = nc_at_steps([row(traces)], 20) + nc_at_steps([row(traces)], 40)
    nc = short["detectors"]["neural-cleanse"]
    assert nc["top_class"] == 2 and nc["flagged"] and nc["target"] == 2 and nc["score"] > 10
    assert not whole["detectors"]["neural-cleanse"]["flagged"]
    assert short["detectors"]["mm-bd"] == {"score": 1.0}  # the other detectors are untouched
    assert "neural-cleanse" not in nc_at_steps([row(traces)], 50)[0]["detectors"]  # only 40 steps were run
    assert "neural-cleanse" not in nc_at_steps([row(None)], 20)[0]["detectors"]


def _zoo(tmp_path, tiny_backdoor, tiny_clean):
    """Two copies of the tiny backdoored model and two of its clean twin, as a four-model zoo."""
    path, clean, _, spec = tiny_backdoor
    zoo = tmp_path / "zoo"
    (zoo / "mnist").mkdir(parents=True)
    x8 = (clean.x[:, 0] * 255).round().astype(np.uint8)
    np.savez(zoo / "mnist" / "clean.npz", x=x8, y=clean.y)
    rows = []
    for seed in (0, 1):
        for name, src, attack in ((f"badnets-t0-s{seed}", path, "badnets"), (f"clean-s{seed}", tiny_clean[0], "clean")):
            shutil.copy(src, zoo / "mnist" / f"{name}.onnx")
            rows.append({"id": f"mnist/{name}", "file": f"mnist/{name}.onnx", "set": "mnist", "attack": attack,
                         "mode": "all-to-one" if attack != "clean" else "-", "target": 0 if attack != "clean" else None,
                         "spec": json.loads(spec.to_json()) if attack != "clean" else None, "dataset": "unused"})
    (zoo / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return zoo


def test_bench_scan_runs_resumes_and_reports_the_held_out_split(tmp_path, tiny_backdoor, tiny_clean):
    zoo = _zoo(tmp_path, tiny_backdoor, tiny_clean)
    results, out = tmp_path / "r.jsonl", tmp_path / "scan.md"
    args = ["bench", "scan", "--zoo", str(zoo), "--detectors", "graph,mm-bd,neural-cleanse", "--param",
            "mm-bd.steps=10", "--param", "neural-cleanse.steps=20", "--clean", "300", "--results", str(results),
            "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    assert {r["model"] for r in rows} == {"mnist/badnets-t0-s0", "mnist/badnets-t0-s1", "mnist/clean-s0",
                                          "mnist/clean-s1"}
    assert all(set(r["detectors"]) == {"mm-bd", "neural-cleanse"} and r["peak_mb"] > 0 for r in rows)
    assert all(0 < d["peak_mb"] <= r["peak_mb"] for r in rows for d in r["detectors"].values())
    doc = json.loads(out.with_suffix(".json").read_text())
    nc = next(f for f in doc["calibration"] if f["detector"] == "neural-cleanse")
    assert nc["calibration"] == {"n_clean": 1, "n_backdoored": 1, "auroc": 1.0}  # the tiny pair is told apart
    assert nc["held_out"]["n_clean"] == 1 and nc["held_out"]["auroc"] == 1.0 and nc["held_out"]["target_right"] == 1.0
    table = out.read_text()
    assert "| mnist/clean-s1 | as built | held-out | clean |" in table and "| neural-cleanse | all |" in table
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "4 of 4 scans ok" in again.output and " ... " not in again.output


def test_thresholds_doc_sets_each_detectors_option_and_keeps_the_others():
    rows = [_row(f"mnist/clean-s{i}", "clean", 1.0 + 0.1 * i) for i in range(4)]
    rows += [_row(f"mnist/badnets-t{i}-s0", "badnets", 3.0 + i) for i in range(4)]
    for r in rows:
        r["detectors"]["neural-cleanse"] = r["detectors"].pop("nc")
    fit = fit_detector(rows, "neural-cleanse")
    previous = {"detectors": {"bn-kl": {"option": "outlier", "value": 40.0}}}
    doc = thresholds_doc([fit], fitted_on="8 rows", command="audit bench scan", previous=previous)
    nc = doc["detectors"]["neural-cleanse"]
    assert nc["option"] == "anomaly" and nc["value"] == pytest.approx(fit.threshold, abs=1e-4)
    assert nc["paper_value"] == 2.0 and nc["fitted_on"] == "8 rows"
    assert doc["detectors"]["bn-kl"] == previous["detectors"]["bn-kl"]


def test_the_scan_uses_the_shipped_thresholds_unless_asked_for_the_papers(tiny_backdoor):
    from backdoor_audit.audit.scan import calibrated_options, scan_model

    shipped = calibrated_options()
    assert shipped["neural-cleanse"]["anomaly"] > 0  # the calibration ships with the package
    path, clean, _, _ = tiny_backdoor
    opts = {"neural-cleanse": {"steps": 10}}
    cal = scan_model(path, clean, detectors=("neural-cleanse",), options=opts).detection("neural-cleanse")
    paper = scan_model(path, clean, detectors=("neural-cleanse",), options=opts, calibrated=False)
    assert cal.threshold == shipped["neural-cleanse"]["anomaly"]
    assert paper.detection("neural-cleanse").threshold == 2.0
    assert cal.score == pytest.approx(paper.detection("neural-cleanse").score)  # only the threshold moves
