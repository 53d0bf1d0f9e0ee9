"""WaNet and input-aware (IAB) attacks: triggers, poisoning, learnt-trigger storage, spec round trips."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch

from backdoor_audit.attacks import AttackSpec, get_attack, list_attacks, load_spec
from backdoor_audit.attacks.iab_generator import TriggerGenerator, pack_generators, triggered
from backdoor_audit.attacks.run import run_attack
from backdoor_audit.training.train import TrainSettings
from backdoor_audit.data import demo_sample_path, load_images
from backdoor_audit.errors import SpecError
from backdoor_audit.models import build_model

from conftest import make_spec, random_images


def _spec(attack: str = "wanet", **fields) -> AttackSpec:
    if fields.get("mode") == "all-to-all":
        fields["target"] = None  # tests parametrised over both modes pass one target for both
    return make_spec(attack, **fields)


def _round_trip(spec: AttackSpec) -> AttackSpec:
    return AttackSpec.from_json(json.dumps(json.loads(spec.to_json())))


def test_both_attacks_are_listed_with_a_summary():
    listed = dict(list_attacks())
    assert "warp" in listed["wanet"] and "k=4" in listed["wanet"] and "s=0.5" in listed["wanet"]
    assert "generator" in listed["input-aware"] and "p_cross=0.1" in listed["input-aware"]


# --------------------------------------------------------------------------- WaNet


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 17)])
def test_wanet_warp_changes_the_image_and_is_reproducible(shape):
    x = random_images(6, *shape).x
    out = get_attack(_spec()).apply(x)
    assert out.shape == x.shape and out.dtype == np.float32 and not np.shares_memory(out, x)
    assert (np.abs(out - x).reshape(len(x), -1).max(axis=1) > 0.05).all()  # every image is warped
    assert 0.0 <= out.min() and out.max() <= 1.0
    again = get_attack(_round_trip(_spec())).apply(x)  # a fresh attack from the JSON spec
    np.testing.assert_array_equal(again, out)
    other = get_attack(_spec(params={"grid_seed": 1})).apply(x)
    assert not np.array_equal(other, out)


def test_wanet_field_has_the_configured_k_and_s():
    for k, s in ((4, 0.5), (6, 1.0)):
        attack = get_attack(_spec(params={"k": k, "s": s, "grid_seed": 3}))
        ctrl = np.asarray(attack.params["grid"])
        assert ctrl.shape == (k, k, 2) and np.abs(ctrl).max() <= 1.0
        flow = attack.flow(28, 28)
        assert flow.shape == (28, 28, 2)
        unit = ctrl / np.abs(ctrl).mean()  # bicubic with align_corners passes through the corner points
        corners = {(0, 0): (0, 0), (0, k - 1): (0, 27), (k - 1, 0): (27, 0), (k - 1, k - 1): (27, 27)}
        for (r, c), (fr, fc) in corners.items():
            np.testing.assert_allclose(flow[fr, fc], unit[r, c] * s / 28, rtol=1e-10, atol=1e-12)
        field = attack.field(28, 28)[0].numpy()
        assert np.abs(field).max() <= 1.0
    # s scales the displacement, k changes its shape
    small, big = (get_attack(_spec(params={"s": s})).flow(28, 28) for s in (0.5, 1.0))
    np.testing.assert_allclose(big, 2 * small, rtol=1e-12)


def test_wanet_grid_is_stored_exactly_and_overrides_the_seed():
    attack = get_attack(_spec(params={"grid_seed": 5}))
    grid = attack.params["grid"]
    assert all(isinstance(v, float) for row in grid for cell in row for v in cell)
    x = random_images(3).x
    given = get_attack(_spec(params={"grid": json.loads(json.dumps(grid)), "grid_seed": 99}))
    np.testing.assert_array_equal(given.apply(x), attack.apply(x))
    as_text = get_attack(_spec(params={"grid": json.dumps(grid)}))
    np.testing.assert_array_equal(as_text.apply(x), attack.apply(x))


@pytest.mark.parametrize("mode", ["all-to-one", "all-to-all"])
def test_wanet_poisoning_labels_and_noise_mode(mode):
    images = random_images(40, 3, 32, 32)
    attack = get_attack(_spec(mode=mode, target=2, rate=0.25, params={"noise_rate": 0.25}))
    poisoned, idx = attack.poison(images)
    eligible = attack.spec.asr_mask(images.y)
    assert len(idx) == round(0.25 * eligible.sum()) and eligible[idx].all()
    expected = np.full(len(idx), 2) if mode == "all-to-one" else (images.y[idx] + 1) % 10
    np.testing.assert_array_equal(poisoned.y[idx], expected)
    np.testing.assert_array_equal(poisoned.x[idx], attack.apply(images.x[idx]))
    noise = attack.noise_indices(images.y, idx)
    assert len(noise) == 10 and not set(noise) & set(idx)
    np.testing.assert_array_equal(poisoned.y[noise], images.y[noise])  # noise samples keep their labels
    assert not np.array_equal(poisoned.x[noise], images.x[noise])
    assert not np.array_equal(poisoned.x[noise], attack.apply(images.x[noise]))  # warp plus noise
    untouched = np.setdiff1d(np.arange(40), np.concatenate([idx, noise]))
    np.testing.assert_array_equal(poisoned.x[untouched], images.x[untouched])
    np.testing.assert_array_equal(poisoned.y[untouched], images.y[untouched])
    again, idx2 = get_attack(_spec(mode=mode, target=2, rate=0.25, params={"noise_rate": 0.25})).poison(images)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(again.x, poisoned.x)
    other, _ = get_attack(_spec(mode=mode, target=2, rate=0.25, params={"noise_rate": 0.25}, seed=1)).poison(images)
    assert not np.array_equal(other.x, poisoned.x)


def test_wanet_spec_round_trips_through_onnx_and_reproduces_the_trigger(tmp_path):
    train, test = random_images(40, 1, 28, 28), random_images(10, 1, 28, 28, seed=1)
    torch.manual_seed(0)
    summary = run_attack("mnist-cnn", train, _spec(rate=0.2), tmp_path / "w.onnx",
                         TrainSettings(epochs=1, batch_size=20), test_data=test, dynamo=False)
    stored = load_spec(summary["model"])
    assert stored == summary["spec"] and np.asarray(stored.params["grid"]).shape == (4, 4, 2)
    assert stored.params["k"] == 4 and stored.params["s"] == 0.5 and stored.params["noise_rate"] == 0.2
    np.testing.assert_array_equal(get_attack(stored).apply(test.x), get_attack(_spec(rate=0.2)).apply(test.x))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"k": 1}, "k must be >= 2"),
        ({"k": 2.5}, "k must be an integer"),
        ({"s": 0}, r"wanet s must be in \(0, 100\]"),
        ({"s": "strong"}, "s must be a number"),
        ({"noise_rate": 1.0}, r"noise_rate must be in \[0, 1\)"),
        ({"grid_seed": -1}, "grid_seed must be >= 0"),
        ({"grid": [[0.1, 0.2]]}, "grid must have shape 4x4x2"),
        ({"grid": np.zeros((4, 4, 2)).tolist()}, "not all zero"),
        ({"grid": "[[1, "}, "grid must be a k x k x 2 list"),
        ({"warp": 1}, "no parameter"),
    ],
)
def test_wanet_bad_params(params, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec(params=params))


def test_wanet_bad_inputs():
    attack = get_attack(_spec(rate=1.0, params={"noise_rate": 0.5}))
    with pytest.raises(SpecError, match="expects NCHW"):
        attack.apply(np.zeros((28, 28), dtype=np.float32))
    with pytest.raises(SpecError, match="do not fit"):
        attack.poison(random_images(20))


# --------------------------------------------------------------------------- input-aware

IAB_PARAMS = {"mask_steps": 8}


@pytest.fixture(scope="module")
def iab():
    """An input-aware attack trained for 8 mask steps + 2 x 8 joint steps on 256 MNIST digits."""
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 256))
    attack = get_attack(_spec("input-aware", params=IAB_PARAMS))
    torch.manual_seed(0)
    model = build_model("mnist-cnn", train.shape, 10)
    log = attack.train(model, train, TrainSettings(epochs=2, batch_size=32, lr=0.05))
    return attack, log, train


def test_iab_training_stores_the_generator(iab):
    attack, log, _ = iab
    text = attack.params["generator"]
    arrays = np.load(io.BytesIO(base64.b64decode(text)))
    assert arrays["pattern.down.0.0.0.weight"].shape == (16, 1, 3, 3)
    assert arrays["mask.up.1.1.0.weight"].shape[0] == 1  # one mask channel
    assert all(a.dtype == np.float32 for a in arrays.values())
    n_weights = sum(a.size for k, a in arrays.items() if "running" not in k)
    assert 50_000 < n_weights < 200_000
    assert len(log["loss"]) == 2 and log["steps"] == 16 and log["n_poisoned"] > 0 and log["n_cross"] > 0
    assert 0.0 <= log["mask_share"] <= 1.0 and np.isfinite(log["loss"]).all()


def test_iab_apply_is_reproducible_from_the_json_spec(iab):
    attack, _, train = iab
    x = train.x[:16]
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert (np.abs(out - x).reshape(16, -1).max(axis=1) > 0.05).all()
    stored = _round_trip(AttackSpec(**{**vars(attack.spec), "params": attack.params}))
    np.testing.assert_array_equal(get_attack(stored).apply(x), out)
    np.testing.assert_array_equal(attack.apply(x), out)


def test_iab_triggers_depend_on_the_input(iab):
    attack, _, train = iab
    pattern_net, mask_net = attack._nets
    x = torch.from_numpy(train.x[:8])
    with torch.no_grad():
        own = triggered(x, x, pattern_net, mask_net)
        other = triggered(x, x.roll(1, 0), pattern_net, mask_net)  # each image with its neighbour's trigger
        patterns = pattern_net(x)
    assert not torch.equal(own, other)
    residual = (own - x).flatten(1)
    assert all(not torch.allclose(residual[0], residual[i]) for i in range(1, 8))
    assert all(not torch.allclose(patterns[0], patterns[i]) for i in range(1, 8))


@pytest.mark.parametrize("mode", ["all-to-one", "all-to-all"])
def test_iab_static_snapshot_labels_follow_the_mode(iab, mode):
    attack, _, train = iab
    images = train.subset(slice(0, 40))
    snap = get_attack(_spec("input-aware", mode=mode, target=3, rate=0.3, params=attack.params))
    poisoned, idx = snap.poison(images)
    expected = np.full(len(idx), 3) if mode == "all-to-one" else (images.y[idx] + 1) % 10
    np.testing.assert_array_equal(poisoned.y[idx], expected)
    np.testing.assert_array_equal(poisoned.x[idx], attack.apply(images.x[idx]))
    again, idx2 = get_attack(_spec("input-aware", mode=mode, target=3, rate=0.3, params=attack.params)).poison(images)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(again.x, poisoned.x)


def test_iab_rgb_all_to_all_run_is_seeded_and_round_trips_through_onnx(tmp_path):
    train, test = random_images(40, 3, 32, 32), random_images(8, 3, 32, 32, seed=1)
    spec = _spec("input-aware", mode="all-to-all", params={"mask_steps": 2, "channels": 8})
    settings = TrainSettings(epochs=1, batch_size=20, seed=3)
    runs = []
    for name in ("a.onnx", "b.onnx"):
        torch.manual_seed(0)
        runs.append(run_attack("mnist-cnn", train, spec, tmp_path / name, settings, test_data=test, dynamo=False))
    assert runs[0]["n_poisoned"] > 0
    stored = load_spec(runs[0]["model"])
    assert stored == runs[0]["spec"] and stored.params["generator"]
    assert stored.params["generator"] == load_spec(runs[1]["model"]).params["generator"]  # same seeds, same trigger
    out = get_attack(stored).apply(test.x)
    assert out.shape == test.x.shape and not np.array_equal(out, test.x)
    np.testing.assert_array_equal(get_attack(_round_trip(stored)).apply(test.x), out)
    with pytest.raises(SpecError, match="trained on 3-channel"):
        get_attack(stored).apply(test.x[:, :1])


def _packed(c: int = 1, channels: int = 16, depth: int = 2) -> str:
    return pack_generators(TriggerGenerator(c, c, channels, depth), TriggerGenerator(c, 1, channels, depth))


@pytest.mark.parametrize(
    "params, rate, message",
    [
        ({"p_cross": -0.1}, 0.1, r"p_cross must be in \[0, 1\]"),
        ({"p_cross": 0.95}, 0.1, "exceed 1"),
        ({"lambda_div": "high"}, 0.1, "lambda_div must be a number"),
        ({"mask_steps": 1.5}, 0.1, "mask_steps must be an integer"),
        ({"depth": 0}, 0.1, r"depth must be an integer in \[1, 6\]"),
        ({"lr_g": 0}, 0.1, r"lr_g must be in \(0, 10\]"),
        ({"generator": "not base64!"}, 0.1, "not the base64 .npz"),
        ({"generator": 3}, 0.1, "base64 text"),
        ({"generator": _packed(channels=8)}, 0.1, "do not fit channels=16, depth=2"),
        ({"mask": 1}, 0.1, "no parameter"),
    ],
)
def test_iab_bad_params(params, rate, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("input-aware", params=params, rate=rate))


def test_iab_untrained_and_shape_errors():
    attack = get_attack(_spec("input-aware"))
    attack.check_shape((3, 16, 16))  # fine before training
    with pytest.raises(SpecError, match="not trained"):
        attack.apply(random_images(2).x)
    with pytest.raises(SpecError, match="at least 8x8"):
        get_attack(_spec("input-aware", params={"depth": 3})).check_shape((1, 7, 28))
    ready = get_attack(_spec("input-aware", params={"generator": _packed()}))
    assert ready.apply(random_images(2, 1, 17, 23).x).shape == (2, 1, 17, 23)  # any size
