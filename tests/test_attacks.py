"""Attacks: spec validation and round trips, BadNets trigger placement, poisoning, models, export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from backdoor_audit.attacks import ATTACK_SPEC_KEY, AttackSpec, get_attack, list_attacks, load_spec
from backdoor_audit.data import ImageSet
from backdoor_audit.errors import ModelError, SpecError
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model, list_models

from conftest import make_spec


_spec = make_spec


def _images(n=200, c=1, h=28, w=28, classes=10, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, c, h, w)) * 0.5).astype(np.float32)  # never pure white
    return ImageSet(x=x, y=rng.integers(0, classes, n).astype(np.int64), source="synthetic")


# --------------------------------------------------------------------------- spec


def test_spec_json_round_trip_and_labels():
    spec = _spec(params={"size": 4}, seed=7, rate=0.2)
    assert AttackSpec.from_json(spec.to_json()) == spec
    y = np.array([0, 3, 9])
    np.testing.assert_array_equal(spec.target_labels(y), [0, 0, 0])
    np.testing.assert_array_equal(spec.asr_mask(y), [False, True, True])
    a2a = _spec(mode="all-to-all", target=None)
    np.testing.assert_array_equal(a2a.target_labels(y), [1, 4, 0])
    assert a2a.asr_mask(y).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"target": 10}, "target 10"),
        ({"target": -1}, "target -1"),
        ({"rate": 0.0}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"mode": "some-to-one"}, "mode 'some-to-one'"),
        ({"mode": "all-to-all", "target": 2}, "no target"),
    ],
)
def test_spec_validation(kw, message):
    with pytest.raises(SpecError, match=message):
        _spec(**kw)


def test_spec_json_errors_and_files(tmp_path):
    with pytest.raises(SpecError, match="'num_classes'"):
        AttackSpec.from_json(json.dumps({"attack": "badnets", "mode": "all-to-one", "target": 0}))
    with pytest.raises(SpecError, match="unknown key"):
        AttackSpec.from_json(json.dumps({**json.loads(_spec().to_json()), "colour": 1}))
    (tmp_path / "s.json").write_text(_spec(target=3).to_json())
    assert load_spec(tmp_path / "s.json").target == 3
    (tmp_path / "bad.onnx").write_bytes(b"\x00not onnx at all")
    with pytest.raises(ModelError, match="bad.onnx"):
        load_spec(tmp_path / "bad.onnx")
    with pytest.raises(SpecError, match="s.txt"):
        load_spec(tmp_path / "s.txt")


@pytest.mark.parametrize("dynamo", [True, False])
def test_spec_round_trip_through_onnx_metadata(tmp_path, dynamo):
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10)
    spec = _spec(params={"patch": "checkerboard"}, target=5)
    path = export_torch_model(model, (1, 28, 28), tmp_path / "m.onnx", {ATTACK_SPEC_KEY: spec.to_json()}, dynamo=dynamo)
    assert load_spec(path) == spec
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic batch
    bare = export_torch_model(model, (1, 28, 28), tmp_path / "bare.onnx", {}, dynamo=False)
    with pytest.raises(SpecError, match="no attack spec"):
        load_spec(bare)
    assert list(tmp_path.glob("*.tmp")) == []


# --------------------------------------------------------------------------- BadNets


def test_badnets_default_is_white_square_bottom_right_with_margin():
    attack = get_attack(_spec())
    x = _images(4).x
    out = attack.apply(x)
    assert (out[:, :, 24:27, 24:27] == 1.0).all()
    changed = out != x
    assert changed.sum() == 4 * 9 and changed[:, :, 24:27, 24:27].all()
    np.testing.assert_array_equal(out[:, :, 27, :], x[:, :, 27, :])  # margin row untouched
    np.testing.assert_array_equal(attack.apply(x), out)  # deterministic
    assert not np.shares_memory(out, x)


@pytest.mark.parametrize(
    "params, rows, cols",
    [
        ({"position": "top-left"}, slice(1, 4), slice(1, 4)),
        ({"position": "top-right", "margin": 0}, slice(0, 3), slice(29, 32)),
        ({"position": "bottom-left", "size": 5, "margin": 2}, slice(25, 30), slice(2, 7)),
        ({"position": "4,10"}, slice(4, 7), slice(10, 13)),
    ],
)
def test_badnets_positions(params, rows, cols):
    x = _images(2, c=3, h=32, w=32).x
    out = get_attack(_spec(params=params)).apply(x)
    expected = x.copy()
    expected[:, :, rows, cols] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_badnets_checkerboard_pattern():
    out = get_attack(_spec(params={"patch": "checkerboard"})).apply(_images(1).x)
    np.testing.assert_array_equal(out[0, 0, 24:27, 24:27], [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"size": 40}, "bigger than the 28x28"),
        ({"position": "26,26"}, "falls outside"),
        ({"position": "middle"}, "position 'middle'"),
        ({"patch": "star"}, "patch 'star'"),
        ({"colour": "red"}, "no parameter"),
    ],
)
def test_badnets_bad_params(params, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec(params=params)).apply(_images(1).x)


def test_unknown_attack_lists_known():
    with pytest.raises(SpecError, match="known attacks: .*badnets"):
        get_attack(_spec(attack="no-such-attack"))
    assert "size=3" in dict(list_attacks())["badnets"]


# --------------------------------------------------------------------------- poisoning


def test_poison_all_to_one_is_seeded_and_skips_target_class():
    images = _images(500)
    attack = get_attack(_spec(target=2, rate=0.1, seed=11))
    poisoned, idx = attack.poison(images)
    _, idx_again = attack.poison(images)
    np.testing.assert_array_equal(idx, idx_again)
    eligible = int((images.y != 2).sum())
    assert len(idx) == round(0.1 * eligible)
    assert (images.y[idx] != 2).all() and (poisoned.y[idx] == 2).all()
    assert (poisoned.x[idx][:, :, 24:27, 24:27] == 1.0).all()
    rest = np.setdiff1d(np.arange(500), idx)
    np.testing.assert_array_equal(poisoned.x[rest], images.x[rest])
    np.testing.assert_array_equal(poisoned.y[rest], images.y[rest])
    _, other = get_attack(_spec(target=2, rate=0.1, seed=12)).poison(images)
    assert not np.array_equal(idx, other)


def test_poison_all_to_all_relabels_to_next_class():
    images = _images(300)
    poisoned, idx = get_attack(_spec(mode="all-to-all", target=None, rate=0.2)).poison(images)
    assert len(idx) == 60
    np.testing.assert_array_equal(poisoned.y[idx], (images.y[idx] + 1) % 10)


# --------------------------------------------------------------------------- models


def test_model_registry():
    assert {"mnist-cnn", "small-resnet"} <= set(list_models())
    with pytest.raises(SpecError, match="known models: mnist-cnn"):
        build_model("vgg", (3, 32, 32), 10)
    cnn = build_model("mnist-cnn", (1, 28, 28), 10)
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(c.out_channels for c in convs) == 48 and linears[0].out_features == 512
    assert build_model("mnist-cnn", (3, 32, 32), 43)(torch.zeros(2, 3, 32, 32)).shape == (2, 43)
    resnet = build_model("small-resnet", (3, 32, 32), 10)
    assert resnet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
