"""`audit bench repair` on a one-model zoo: runs each method in its own process, evaluates under
onnxruntime, writes the tables, and a second run reuses every result (resume)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from click.testing import CliRunner

from backdoor_audit.cli import main
from backdoor_audit.data import demo_sample_path, load_images


def _zoo(tmp_path, tiny_backdoor):
    path, clean, test, spec = tiny_backdoor
    zoo = tmp_path / "zoo"
    (zoo / "mnist").mkdir(parents=True)
    shutil.copy(path, zoo / "mnist" / "badnets-t0-s0.onnx")
    x8 = lambda s: (s.x[:, 0] * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(zoo / "mnist" / "clean.npz", x=x8(clean), y=clean.y)
    data = tmp_path / "mnist.npz"
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 3000))  # what the fixture trained on
    np.savez(data, x_train=x8(train), y_train=train.y, x_test=x8(test), y_test=test.y)
    row = {"id": "mnist/badnets-t0-s0", "file": "mnist/badnets-t0-s0.onnx", "set": "mnist", "attack": "badnets",
           "mode": "all-to-one", "spec": json.loads(spec.to_json()), "dataset": str(data)}
    (zoo / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    return zoo


def test_bench_runs_resumes_and_writes_tables(tmp_path, tiny_backdoor):
    zoo = _zoo(tmp_path, tiny_backdoor)
    results, out = tmp_path / "r.jsonl", tmp_path / "bench.md"
    args = ["bench", "repair", "--zoo", str(zoo), "--methods", "clp,ft:iterations=20;batch_size=64",
            "--clean", "300", "--results", str(results), "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    rows = [json.loads(l) for l in results.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["clp", "ft:iterations=20;batch_size=64"]
    assert all(r["status"] == "ok" for r in rows), rows
    assert rows[0]["before"]["asr"] > 90 and rows[1]["options"]["iterations"] == 20
    assert rows[1]["rewritten"] > 0 and rows[1]["peak_mb"] > 0
    table = out.read_text()
    assert "| mnist/badnets-t0-s0 | as built | clp |" in table and "Means over" in table
    assert {r["key"] for r in json.loads(out.with_suffix(".json").read_text())} == {r["key"] for r in rows}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "2 of 2 jobs ok" in again.output
    assert len(results.read_text().splitlines()) == 2  # nothing ran twice
    assert " ... " not in again.output  # no job started


def test_a_bf16_job_is_its_own_row_beside_the_float32_one(tmp_path, tiny_backdoor):
    zoo = _zoo(tmp_path, tiny_backdoor)
    results = tmp_path / "r.jsonl"
    args = ["bench", "repair", "--zoo", str(zoo), "--methods", "ft:iterations=5;batch_size=64", "--clean", "300",
            "--results", str(results), "--out", str(tmp_path / "b.md")]
    for extra in ([], ["--precision", "bf16"], ["--precision", "bf16"]):
        res = CliRunner().invoke(main, args + extra)
        assert res.exit_code == 0, res.output + res.stderr
    rows = [json.loads(l) for l in results.read_text().splitlines()]  # the second bf16 run reused the first
    assert [(r["method"], r["precision"], r["status"]) for r in rows] == [
        ("ft:iterations=5;batch_size=64", "float32", "ok"), ("ft:iterations=5;batch_size=64 [bf16]", "bf16", "ok")]
    assert rows[0]["key"] != rows[1]["key"]


def test_bench_plan_lists_folded_copies_only_for_bn_models(tmp_path, tiny_backdoor):
    zoo = _zoo(tmp_path, tiny_backdoor)
    res = CliRunner().invoke(main, ["bench", "repair", "--zoo", str(zoo), "--methods", "clp", "--plan"])
    assert res.exit_code == 0, res.output
    assert "as built" in res.output and "folded" not in res.output and "1 jobs" in res.output
    only = CliRunner().invoke(main, ["bench", "repair", "--zoo", str(zoo), "--methods", "clp", "--plan",
                                     "--folded-only"])
    assert only.exit_code == 0 and "0 jobs" in only.output  # no BN, so no folded copy and nothing else


def test_bench_retries_a_crashed_job_but_keeps_a_refusal(tmp_path, tiny_backdoor):
    zoo = _zoo(tmp_path, tiny_backdoor)
    results = tmp_path / "r.jsonl"
    args = ["bench", "repair", "--zoo", str(zoo), "--methods", "clp,bnp", "--clean", "300", "--results",
            str(results), "--out", str(tmp_path / "b.md")]
    assert CliRunner().invoke(main, args).exit_code == 0
    rows = [json.loads(l) for l in results.read_text().splitlines()]
    assert rows[1]["status"] == "failed" and "BatchNormalization" in rows[1]["error"]  # bnp's refusal
    rows[0].update(status="failed", error="error: internal error: RuntimeError: boom")
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert again.output.count(" ... ") == 1 and "mnist/badnets-t0-s0 (as built) clp ..." in again.output


def test_fold_copy_removes_batchnorm_and_keeps_the_function(tmp_path):
    import onnx
    import torch

    from backdoor_audit.bench.repair import fold_copy
    from backdoor_audit.export.session import make_session, run_logits
    from backdoor_audit.models import build_model

    from conftest import export, randomise_bn

    torch.manual_seed(0)
    src = export(randomise_bn(build_model("small-resnet", (3, 32, 32), 10)), (3, 32, 32), tmp_path / "bn.onnx",
                 "legacy17-bn")
    dst = fold_copy(src, tmp_path / "folded" / "bn.onnx")
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(src)).graph.node}
    assert "BatchNormalization" not in ops
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    assert np.abs(run_logits(make_session(src), x) - run_logits(make_session(dst), x)).max() <= 1e-3
    assert {p.key for p in onnx.load(str(dst)).metadata_props} == {p.key for p in onnx.load(str(src)).metadata_props}


def test_the_row_finds_nc_s_log_alone_or_as_a_chain_step():
    from backdoor_audit.bench.repair import nc_log

    assert nc_log({"flagged": [0], "anomaly_index": [3.1, 0.2]})["flagged"] == [0]
    chain = {"clp": {"u": 3.0}, "i-bau": {"batches": 5}, "nc": {"flagged": [], "anomaly_index": [1.2, 0.4]}}
    assert nc_log(chain) == chain["nc"]
    assert nc_log({"clp": {"u": 3.0}, "i-bau": {"batches": 5}}) == {}


def test_bench_gives_ep_the_training_set_rebuilt_from_the_model(tmp_path, tiny_backdoor):
    zoo = _zoo(tmp_path, tiny_backdoor)
    results = tmp_path / "r.jsonl"
    res = CliRunner().invoke(main, ["bench", "repair", "--zoo", str(zoo), "--methods", "ep", "--clean", "300",
                                    "--results", str(results), "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 0, res.output
    row = json.loads(results.read_text())
    assert row["status"] == "ok", row  # not the refusal it gives without --train-data
    assert row["pruned"] > 0 and row["after"]["asr"] < row["before"]["asr"], row  # EP itself: test_repair_methods
