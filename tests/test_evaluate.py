"""End to end on a tiny model: run_attack -> ONNX with metadata -> evaluate() under onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from backdoor_audit.attacks import AttackSpec, get_attack, load_spec
from backdoor_audit.attacks.run import TRAINING_KEY, run_attack
from backdoor_audit.training.train import TrainSettings
from backdoor_audit.training.train import predict
from backdoor_audit.evaluation.evaluate import evaluate
from backdoor_audit.data import ImageSet, Preprocess, defender_split, demo_sample_path, fit_preprocess, load_images
from backdoor_audit.errors import DataError, ModelError, SpecError
from backdoor_audit.export.session import available_providers, make_session, run_logits
from backdoor_audit.models import build_model

SPEC = AttackSpec(attack="badnets", mode="all-to-one", target=0, num_classes=10, seed=0, rate=0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A mnist-cnn trained for 2 epochs on 2000 demo images, exported with dynamo."""
    out = tmp_path_factory.mktemp("attack")
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 2000))
    test = load_images(demo_sample_path(), split="test").subset(slice(0, 500))
    summary = run_attack(
        "mnist-cnn", train, SPEC, out / "m.onnx", TrainSettings(epochs=2, batch_size=32, lr=0.05, seed=1),
        test_data=test, clean_holdout=50, clean_out=out / "clean.npz",
    )  # fmt: skip
    return summary, train, test


def test_run_attack_writes_model_metadata_and_clean_set(trained):
    summary, train, _ = trained
    proto = onnx.load(summary["model"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert load_spec(summary["model"]).params == {"patch": "square", "size": 3, "position": "bottom-right", "margin": 1}
    assert Preprocess.from_json(meta["backdoor_audit.preprocess"]) == Preprocess("NCHW")
    training = json.loads(meta[TRAINING_KEY])
    assert training["n_train"] == 1800 and training["defender"]["split_seed"] == 0
    attacker_idx, defender_idx = defender_split(training["n_total"], 50, training["defender"]["split_seed"])
    np.testing.assert_array_equal(summary["defender_idx"], defender_idx)
    assert not set(attacker_idx) & set(defender_idx)
    clean = load_images(summary["clean_out"])
    np.testing.assert_allclose(clean.x, train.x[defender_idx], atol=1e-6)
    assert summary["n_poisoned"] == round(0.1 * int((train.y[attacker_idx] != 0).sum()))


def test_evaluate_matches_torch(trained):
    summary, _, test = trained
    proto = onnx.load(summary["model"])
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    pre = fit_preprocess(test, dims, metadata={p.key: p.value for p in proto.metadata_props})
    result = evaluate(summary["model"], test, pre, load_spec(summary["model"]))
    assert result.provider == available_providers()[0]
    assert result.n == 500 and result.n_asr == int((test.y != 0).sum())
    assert abs(result.acc - summary["acc"]) <= 0.5 and abs(result.asr - summary["asr"]) <= 0.5
    assert result.acc > 50  # it did learn something in 2 epochs
    assert evaluate(summary["model"], test, pre).asr is None


def test_evaluate_matches_an_independent_torch_computation(tmp_path):
    """Same weights in torch and onnxruntime give the same ACC on real data (untrained net, legacy export)."""
    import torch

    from backdoor_audit.export.from_torch import export_torch_model

    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10)
    test = load_images(demo_sample_path(), split="test").subset(slice(0, 300))
    path = export_torch_model(model, (1, 28, 28), tmp_path / "u.onnx", {}, dynamo=False)
    torch_acc = float((predict(model, test.x).argmax(1) == test.y).mean() * 100)
    assert abs(evaluate(path, test, Preprocess()).acc - torch_acc) <= 0.5
    session = make_session(path)
    np.testing.assert_allclose(run_logits(session, test.x, batch_size=7), predict(model, test.x), atol=1e-4)


def test_evaluate_errors(trained, tmp_path):
    summary, _, test = trained
    with pytest.raises(ModelError, match="missing.onnx"):
        evaluate(tmp_path / "missing.onnx", test, Preprocess())
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.onnx"):
        make_session(tmp_path / "junk.onnx")
    wrong = ImageSet(x=test.x, y=test.y + 10, source="wrong.npz")
    with pytest.raises(DataError, match="go up to 19"):
        evaluate(summary["model"], wrong, Preprocess())
    with pytest.raises(SpecError, match="43 classes"):
        evaluate(summary["model"], test, Preprocess(), AttackSpec("badnets", "all-to-one", 0, 43))
    with pytest.raises(ModelError, match="onnxruntime failed"):
        evaluate(summary["model"], test, Preprocess(layout="NHWC"))


def test_triggered_test_images_differ_from_clean(trained):
    _, _, test = trained
    triggered = get_attack(SPEC).apply(test.x)
    assert (triggered[:, :, 24:27, 24:27] == 1).all() and not np.array_equal(triggered, test.x)


def _validate(*args):
    from click.testing import CliRunner

    from backdoor_audit.cli import main

    return CliRunner().invoke(main, ["validate", *map(str, args)])


def test_validate_gate_exit_codes(trained, tmp_path):
    summary, _, test = trained
    data = tmp_path / "test.npz"
    np.savez(data, x=test.x, y=test.y)
    model, acc, asr = summary["model"], summary["acc"], summary["asr"]
    passed = _validate(model, "--data", data, "--attack", model, "--min-acc", acc - 5, "--max-asr", asr + 5)
    assert passed.exit_code == 0, passed.output
    assert passed.output.count("pass:") == 2
    low_acc = _validate(model, "--data", data, "--min-acc", acc + 5)
    assert low_acc.exit_code == 1 and "FAIL: ACC" in low_acc.output
    high_asr = _validate(model, "--data", data, "--attack", model, "--max-asr", asr - 5)
    assert high_asr.exit_code == 1 and "FAIL: ASR" in high_asr.output
    no_attack = _validate(model, "--data", data, "--max-asr", 2)
    assert no_attack.exit_code == 1 and "needs --attack" in no_attack.output


def test_validate_per_class_agrees_with_predictions(trained, tmp_path):
    summary, _, test = trained
    data = tmp_path / "test.npz"
    np.savez(data, x=test.x, y=test.y)
    model = summary["model"]
    out = _validate(model, "--data", data, "--attack", model, "--per-class", "--json")
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    session, spec = make_session(model), load_spec(model)
    pred = run_logits(session, test.x, 64).argmax(1)
    trig = run_logits(session, get_attack(spec).apply(test.x), 64).argmax(1)
    for c in range(10):
        rows = test.y == c
        assert res["acc_by_class"][str(c)] == pytest.approx(100 * (pred[rows] == c).mean())
        if c == 0:  # all-to-one: the target class's own images are not counted in ASR
            assert "0" not in res["asr_by_class"]
        else:
            assert res["asr_by_class"][str(c)] == pytest.approx(100 * (trig[rows] == 0).mean())
    counted = test.y != 0
    right = counted & (pred == test.y)
    assert res["asr_clean_correct"] == pytest.approx(100 * (trig[right] == 0).mean())
    assert 0 < right.sum() < counted.sum()  # the model errs on some images: a smaller set than ASR's
    counts = np.bincount(test.y, minlength=10)
    overall = sum(res["acc_by_class"][str(c)] * counts[c] for c in range(10)) / counts.sum()
    assert overall == pytest.approx(res["acc"])
    text = _validate(model, "--data", data, "--attack", model, "--per-class")
    assert text.exit_code == 0 and "class     ACC     ASR" in text.output
    assert f"{res['asr_clean_correct']:.2f}% where clean is right" in text.output
    plain = json.loads(_validate(model, "--data", data, "--json").output)
    assert plain["acc_by_class"] is None and plain["asr_by_class"] is None
