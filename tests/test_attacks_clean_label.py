"""CLB, Refool and TrojanNN: triggers where the papers put them, the right images poisoned, learnt
triggers recorded in the spec and reproduced from it (JSON and ONNX metadata)."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import onnx
import pytest
import torch

from backdoor_audit.attacks import ATTACK_SPEC_KEY, AttackSpec, get_attack, list_attacks, load_spec
from backdoor_audit.attacks.registry import Attack
from backdoor_audit.attacks.run import TRAINING_KEY, run_attack
from backdoor_audit.training.train import TrainSettings, predict
from backdoor_audit.data import ImageSet, demo_sample_path, load_images
from backdoor_audit.data.sample import sample
from backdoor_audit.errors import DataError, SpecError
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model

from conftest import make_spec


_spec = functools.partial(make_spec, target=1, rate=0.8)


def _images(n=40, c=1, h=28, w=28, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, c, h, w)) * 0.5 + 0.25).astype(np.float32)  # never pure black or white
    return ImageSet(x=x, y=np.arange(n, dtype=np.int64) % 10, source="synthetic")


def _reloaded(spec: AttackSpec, params: dict) -> object:
    """The attack as evaluation rebuilds it: from the spec's JSON."""
    return get_attack(AttackSpec.from_json(json.dumps(json.loads(dataclasses.replace(spec, params=params).to_json()))))


@pytest.fixture(scope="module")
def mnist_train():
    return sample(load_images(demo_sample_path(), split="train"), 300, seed=0)


SHAPES = [(1, 28, 28), (3, 32, 32)]


# --------------------------------------------------------------------------- CLB


@pytest.mark.parametrize("shape", SHAPES)
def test_clb_stamps_checkerboards_at_the_four_corners(shape):
    c, h, w = shape
    x = _images(3, *shape).x
    out = get_attack(_spec("clb")).apply(x)
    board = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
    expected = x.copy()
    for rows in (slice(0, 3), slice(h - 3, h)):
        for cols in (slice(0, 3), slice(w - 3, w)):
            expected[:, :, rows, cols] = board
    np.testing.assert_array_equal(out, expected)
    assert (out != x).sum() == 3 * c * 4 * 9  # nothing else changes
    np.testing.assert_array_equal(get_attack(_spec("clb")).apply(x), out)  # deterministic


def test_clb_size_margin_and_mirrored_patterns():
    x = _images(1, 3, 32, 32).x
    out = get_attack(_spec("clb", params={"size": 4, "margin": 1})).apply(x)
    board = (np.indices((4, 4)).sum(0) % 2 == 0).astype(np.float32)
    np.testing.assert_array_equal(out[0, :, 1:5, 1:5], np.broadcast_to(board, (3, 4, 4)))  # top-left
    np.testing.assert_array_equal(out[0, 0, 27:31, 27:31], board[:, ::-1])  # right-hand: mirrored
    np.testing.assert_array_equal(out[0, :, 0, :], x[0, :, 0, :])  # the margin row is untouched
    turner = get_attack(_spec("clb", params={"pattern": "turner"})).apply(x)
    np.testing.assert_array_equal(turner[0, 0, 29:, :3], [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(turner[0, 0, :3, 29:], [[0, 0, 1], [0, 1, 0], [1, 0, 1]])


@pytest.mark.parametrize("kw, message", [
    ({"params": {"size": 15}}, "do not fit in the 28x28"),
    ({"params": {"size": 4, "pattern": "turner"}}, "'turner' is 3x3"),
    ({"params": {"pattern": "stripes"}}, "pattern 'stripes'"),
    ({"params": {"eps": -1}}, "eps must be in"),
    ({"params": {"steps": 2.5}}, "steps must be an integer"),
    ({"params": {"step": 0}}, "needs step > 0"),
    ({"params": {"colour": 1}}, "no parameter"),
    ({"mode": "all-to-all", "target": None}, "clean-label"),
])
def test_clb_bad_params(kw, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("clb", **kw)).apply(_images(1).x)


def test_clb_poisons_only_target_images_keeps_labels_and_is_seeded():
    images = _images(200, 3, 32, 32)
    attack = get_attack(_spec("clb", target=3, rate=0.5, seed=4))
    poisoned, idx = attack.poison(images)
    assert len(idx) == 10 and (images.y[idx] == 3).all()
    np.testing.assert_array_equal(poisoned.y, images.y)
    np.testing.assert_array_equal(poisoned.x[idx], attack.apply(images.x[idx]))
    rest = np.setdiff1d(np.arange(200), idx)
    np.testing.assert_array_equal(poisoned.x[rest], images.x[rest])
    np.testing.assert_array_equal(attack.poison(images)[1], idx)
    assert not np.array_equal(get_attack(_spec("clb", target=3, rate=0.5, seed=5)).poison(images)[1], idx)


def test_clb_pgd_stays_in_the_eps_ball_and_raises_the_loss(mnist_images):
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10)
    x, y = mnist_images.x[:16], mnist_images.y[:16]
    adv = get_attack(_spec("clb", params={"steps": 5})).harden(model, x, y)
    assert np.abs(adv - x).max() <= 16 / 255 + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0
    def loss(z):
        return torch.nn.functional.cross_entropy(torch.from_numpy(predict(model, z)), torch.from_numpy(y))

    assert loss(adv) > loss(x)
    assert all(p.requires_grad for p in model.parameters())


def test_clb_train_hardens_against_a_surrogate_then_trains(mnist_train):
    spec = _spec("clb", target=3, params={"steps": 3, "surrogate_epochs": 1})
    attack = get_attack(spec)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", mnist_train.shape, 10)
    before = [p.detach().clone() for p in model.parameters()]
    log = attack.train(model, mnist_train, TrainSettings(epochs=1, batch_size=64))
    assert log["n_poisoned"] == round(0.8 * int((mnist_train.y == 3).sum()))
    assert log["attack_notes"]["surrogate"]["epochs"] == 1 and attack._surrogate is None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # evaluation's trigger is the corners only, reproduced from the recorded params
    x = mnist_train.x[:5]
    np.testing.assert_array_equal(_reloaded(spec, attack.params).apply(x), attack.apply(x))


# --------------------------------------------------------------------------- Refool


@pytest.mark.parametrize("shape", SHAPES)
def test_refool_takes_reflections_from_other_classes_and_keeps_labels(shape):
    images = _images(60, *shape)
    spec = _spec("refool", params={"n_reflections": 5})
    attack = get_attack(spec)
    with pytest.raises(SpecError, match="no reflection images yet"):
        attack.apply(images.x[:1])
    poisoned, idx = attack.poison(images)
    assert len(idx) == round(0.8 * 6) and (images.y[idx] == 1).all()
    np.testing.assert_array_equal(poisoned.y, images.y)
    refl = attack.reflections()
    assert refl.shape == (5, *shape)
    u8 = np.rint(images.x * 255) / 255
    sources = [int(np.flatnonzero((np.abs(u8 - r).max(axis=(1, 2, 3)) < 1e-6))[0]) for r in refl]
    assert (images.y[sources] != 1).all()
    rest = np.setdiff1d(np.arange(60), idx)
    np.testing.assert_array_equal(poisoned.x[rest], images.x[rest])
    delta = poisoned.x[idx] - images.x[idx]
    assert delta.min() >= 0.0 and delta.max() <= 0.4 + 1e-6 and delta.max() > 0.05  # x + alpha * blur(r)
    # seeded, and evaluation reproduces the trigger from the recorded params alone
    again = get_attack(spec)
    np.testing.assert_array_equal(again.poison(images)[0].x, poisoned.x)
    test_x = _images(10, *shape, seed=1).x
    np.testing.assert_array_equal(_reloaded(spec, attack.params).apply(test_x), attack.apply(test_x))


@pytest.mark.parametrize("src_shape, shape", [((3, 16, 16), (1, 28, 28)), ((1, 40, 40), (3, 32, 32)),
                                               ((3, 32, 32), (3, 32, 32))])
def test_refool_draws_reflections_from_another_dataset(tmp_path, src_shape, shape):
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, size=(50, *src_shape), dtype=np.uint8)
    path = tmp_path / "scenes.npz"
    np.savez(path, x_train=src, y_train=np.zeros(50, dtype=np.int64), x_test=src[:5], y_test=np.zeros(5))
    spec = _spec("refool", params={"n_reflections": 4, "source": str(path)})
    attack = get_attack(spec)
    images = _images(30, *shape)
    poisoned, idx = attack.poison(images)
    refl = attack.reflections()
    assert refl.shape == (4, *shape)  # resized and converted to the victim's channels
    u8 = np.rint(images.x * 255) / 255
    assert all(np.abs(u8 - r).max(axis=(1, 2, 3)).min() > 1e-3 for r in refl)  # none is a training image
    if src_shape == shape:  # same size: the reflections are source images themselves
        flat = src.reshape(50, -1).astype(np.float32) / 255
        assert all(np.abs(flat - r.reshape(1, -1)).max(1).min() < 1e-6 for r in refl)
    np.testing.assert_array_equal(get_attack(spec).poison(images)[0].x, poisoned.x)  # seeded
    test_x = _images(6, *shape, seed=1).x  # evaluation needs only the recorded params, not the source
    reloaded = dict(attack.params, source=str(tmp_path / "gone.npz"))
    np.testing.assert_array_equal(_reloaded(spec, reloaded).apply(test_x), attack.apply(test_x))


def test_refool_reflection_choice_depends_on_the_image_not_the_batch():
    images = _images(30)
    attack = get_attack(_spec("refool"))
    attack.poison(images)
    out = attack.apply(images.x)
    np.testing.assert_array_equal(attack.apply(images.x[7:9]), out[7:9])
    np.testing.assert_array_equal(attack.apply(images.x[::-1]), out[::-1])
    index, _ = attack.choose(images.x)
    assert len(set(index.tolist())) > 3  # images get different reflections


def test_refool_reflection_models():
    images = _images(20)
    blur = get_attack(_spec("refool", params={"sigma": 0, "alpha": 0.3}))
    blur.poison(images)
    x = images.x[:4]
    index, ghost = blur.choose(x)
    assert not ghost.any()
    np.testing.assert_allclose(blur.apply(x), np.clip(x + 0.3 * blur.reflections()[index], 0, 1), atol=1e-6)
    ghosted = get_attack(_spec("refool", params={"ghost_rate": 1.0, "ghost_offset": 3,
                                                 "reflections": blur.params["reflections"]}))
    r = ghosted.reflections()[ghosted.choose(x)[0]]
    layer = 0.5 * r
    layer[:, :, 3:, 3:] += 0.5 * r[:, :, :-3, :-3]
    np.testing.assert_allclose(ghosted.apply(x), np.clip(x + 0.4 * layer, 0, 1), atol=1e-6)
    soft = get_attack(_spec("refool", params={"sigma": 2.0, "reflections": blur.params["reflections"]}))
    assert soft.layers()[0].std() < blur.reflections().std()  # blurred


def test_refool_dirty_label_variant_relabels_non_target_images():
    images = _images(100)
    poisoned, idx = get_attack(_spec("refool", rate=0.1, params={"labels": "dirty"})).poison(images)
    assert len(idx) == 9 and (images.y[idx] != 1).all() and (poisoned.y[idx] == 1).all()
    _, idx = get_attack(_spec("refool", mode="all-to-all", target=None, rate=0.1,
                              params={"labels": "dirty"})).poison(images)
    assert len(idx) == 10


@pytest.mark.parametrize("kw, message", [
    ({"params": {"alpha": 0}}, "alpha must be in"),
    ({"params": {"alpha": 2}}, "alpha must be in"),
    ({"params": {"n_reflections": 0}}, "n_reflections must be >= 1"),
    ({"params": {"ghost_offset": 28}}, "ghost_offset 28"),
    ({"params": {"labels": "maybe"}}, "labels must be"),
    ({"params": {"source": 3}}, "source must be a string"),
    ({"params": {"reflections": "bm90IGFuIG5weg=="}}, "not a valid base64 .npz"),
    ({"mode": "all-to-all", "target": None}, "clean labels needs mode all-to-one"),
    ({"params": {"select_rounds": 1, "n_reflections": 4, "candidates": 3}}, "candidates >= n_reflections"),
    ({"mode": "all-to-all", "target": None, "params": {"labels": "dirty", "select_rounds": 1}},
     "selection .* needs mode all-to-one"),
    ({"params": {"select_rounds": -1}}, "select_rounds must be >= 0"),
    ({"params": {"select_rounds": 1, "n_reflections": 1, "candidates": 4, "select_width": 5}},
     r"select_width must lie in \[n_reflections, candidates\] = \[1, 4\], got 5"),
])
def test_refool_bad_params(kw, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("refool", **kw)).apply(_images(1).x)


def test_refool_scores_a_reflection_by_the_target_probability_it_causes():
    """A linear model whose target logit is the image's mean pixel: brighter reflections score higher,
    and each score is the mean softmax probability of the target over the probe images."""
    attack = get_attack(_spec("refool", target=1, params={"sigma": 0, "alpha": 0.5}))
    levels = np.array([0.1, 0.6, 0.3], dtype=np.float32)
    attack._store(np.rint(levels[:, None, None, None] * np.ones((3, 1, 28, 28)) * 255).astype(np.uint8))
    head = torch.nn.Linear(28 * 28, 10)
    with torch.no_grad():
        head.weight.zero_(), head.bias.zero_()
        head.weight[1] = 8.0 / (28 * 28)
    model = torch.nn.Sequential(torch.nn.Flatten(), head)
    x = _images(12).x
    scores = attack.reflection_scores(model, x)
    assert list(np.argsort(scores)) == [0, 2, 1]
    seen = np.clip(x + 0.5 * attack.reflections()[1], 0, 1)
    p = torch.softmax(torch.from_numpy(predict(model, seen)), 1)[:, 1].mean().item()
    assert scores[1] == pytest.approx(p, rel=1e-5)


def test_refool_adversarial_selection_keeps_the_best_scored_candidates(mnist_train):
    params = {"n_reflections": 2, "candidates": 6, "select_rounds": 2, "select_images": 50, "sigma": 0}
    attack = get_attack(_spec("refool", params=params))
    torch.manual_seed(0)
    model = build_model("mnist-cnn", mnist_train.shape, 10)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=1, batch_size=64)
    info = attack.select_reflections(model, mnist_train, settings)
    pool = attack._draw(mnist_train, 6)
    first, second = info["rounds"]
    assert first["candidates"] == [0, 1]  # equal weights: the first two
    median = float(np.median(first["scores"]))
    weight = np.full(6, median)
    weight[first["candidates"]] = first["scores"]
    assert second["candidates"] == list(np.argsort(-weight, kind="stable")[:2])
    weight[:] = np.median(second["scores"])
    weight[second["candidates"]] = second["scores"]
    assert info["kept"] == sorted(np.argsort(-weight, kind="stable")[:2])
    assert np.array_equal(np.rint(attack.reflections() * 255).astype(np.uint8), pool[info["kept"]])
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())  # reset for the real training
    again = get_attack(_spec("refool", params=params))
    torch.manual_seed(0)
    assert again.select_reflections(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train,
                                    settings)["kept"] == info["kept"]


def test_refool_selection_width_scores_many_candidates_in_one_round_and_keeps_the_best(mnist_train):
    params = {"n_reflections": 1, "candidates": 4, "select_width": 4, "select_rounds": 1, "select_images": 50}
    attack = get_attack(_spec("refool", params=params))
    info = attack.select_reflections(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train,
                                     TrainSettings(epochs=1, batch_size=64))
    (only,) = info["rounds"]
    assert only["candidates"] == [0, 1, 2, 3] and len(only["scores"]) == 4
    assert info["kept"] == [int(np.argmax(only["scores"]))]
    assert np.array_equal(np.rint(attack.reflections() * 255).astype(np.uint8),
                          attack._draw(mnist_train, 4)[info["kept"]])


def test_refool_train_selects_first_then_trains_once_more(mnist_train):
    params = {"n_reflections": 2, "candidates": 4, "select_rounds": 1, "select_images": 50}
    attack = get_attack(_spec("refool", params=params))
    log = attack.train(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train, TrainSettings(epochs=1))
    assert len(log["attack_notes"]["refool_selection"]["rounds"]) == 1 and len(attack.reflections()) == 2
    assert log["seconds"] >= log["attack_notes"]["refool_selection"]["seconds"]
    stored = attack.params["reflections"]  # a spec with reflections (e.g. reloaded) does not select again
    log = attack.train(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train, TrainSettings(epochs=1))
    assert "attack_notes" not in log and attack.params["reflections"] == stored


def test_refool_resumed_training_keeps_its_selection_instead_of_selecting_again(mnist_train, tmp_path, monkeypatch):
    params = {"n_reflections": 1, "candidates": 3, "select_width": 3, "select_rounds": 1, "select_images": 20}
    settings = TrainSettings(epochs=1, batch_size=64, checkpoint=str(tmp_path / "m.pt"))
    first = get_attack(_spec("refool", params=params))

    def interrupted(self, model, clean, settings):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped after the selection, during the final training
        m.setattr(Attack, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            first.train(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train, settings)
    saved = tmp_path / "m.pt.refool-selection"
    assert saved.is_file()

    def no_second_selection(*args):
        raise AssertionError("selected again")

    again = get_attack(_spec("refool", params=params))
    monkeypatch.setattr(again, "select_reflections", no_second_selection)
    log = again.train(build_model("mnist-cnn", mnist_train.shape, 10), mnist_train, settings)
    assert again.params["reflections"] == first.params["reflections"]
    assert log["attack_notes"]["refool_selection"]["resumed"] is True
    saved.write_text("{not a saved state")
    with pytest.raises(DataError, match="cannot resume the refool-selection stage from .*m.pt.refool-selection:"):
        get_attack(_spec("refool", params=params)).train(build_model("mnist-cnn", mnist_train.shape, 10),
                                                         mnist_train, settings)


def test_refool_selection_is_recorded_in_the_model_and_its_summary(mnist_train, tmp_path):
    params = {"n_reflections": 1, "candidates": 2, "select_width": 2, "select_rounds": 1, "select_images": 20}
    summary = run_attack("mnist-cnn", mnist_train, _spec("refool", params=params), tmp_path / "r.onnx",
                         TrainSettings(epochs=1, batch_size=64), dynamo=False)
    selection = summary["attack_notes"]["refool_selection"]
    assert len(selection["rounds"][0]["scores"]) == 2 and len(selection["kept"]) == 1
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "r.onnx")).metadata_props}
    assert json.loads(meta[TRAINING_KEY])["attack_notes"]["refool_selection"]["kept"] == selection["kept"]


def test_refool_reflections_must_fit_the_images():
    attack = get_attack(_spec("refool"))
    attack.poison(_images(20))
    with pytest.raises(SpecError, match="reflections are 28x28x1 images, the data 32x32x3"):
        attack.apply(_images(2, 3, 32, 32).x)


# --------------------------------------------------------------------------- TrojanNN


@pytest.mark.parametrize("shape", SHAPES)
def test_trojannn_stamps_the_recorded_patch(shape):
    c, h, w = shape
    patch = np.linspace(0, 1, c * 9).reshape(c, 3, 3).round(4)
    x = _images(3, *shape).x
    out = get_attack(_spec("trojannn", params={"trigger": patch.tolist()})).apply(x)
    expected = x.copy()
    expected[:, :, h - 4 : h - 1, w - 4 : w - 1] = patch
    np.testing.assert_allclose(out, expected, atol=1e-7)
    top = get_attack(_spec("trojannn", params={"trigger": patch.tolist(), "position": "top-left", "margin": 0}))
    np.testing.assert_allclose(top.apply(x)[:, :, :3, :3], np.broadcast_to(patch, (3, c, 3, 3)), atol=1e-7)


def test_trojannn_poisoning_relabels_to_the_target():
    images = _images(100)
    trigger = [[[0.5] * 3] * 3]
    poisoned, idx = get_attack(_spec("trojannn", rate=0.1, params={"trigger": trigger})).poison(images)
    assert len(idx) == 9 and (images.y[idx] != 1).all() and (poisoned.y[idx] == 1).all()
    poisoned, idx = get_attack(_spec("trojannn", mode="all-to-all", target=None, rate=0.2,
                                     params={"trigger": trigger})).poison(images)
    np.testing.assert_array_equal(poisoned.y[idx], (images.y[idx] + 1) % 10)


@pytest.mark.parametrize("params, message", [
    ({}, "no trigger yet"),
    ({"size": 28}, "does not fit in the 28x28"),
    ({"position": "middle"}, "position 'middle'"),
    ({"neurons": 0}, "neurons must be >= 1"),
    ({"trigger": [[1, 2], [3, 4]]}, "C x 3 x 3"),
    ({"trigger": [[[2.0] * 3] * 3]}, r"values must be in \[0, 1\]"),
    ({"trigger": [[[0.5] * 3] * 3] * 3}, "3 channels, the images 1"),
    ({"trigger_lr": 0}, r"trigger_lr must be in \(0, inf\)"),
])
def test_trojannn_bad_params(params, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("trojannn", params=params)).apply(_images(1).x)


def test_trojannn_learns_a_patch_that_excites_neurons_and_records_it(mnist_train, tmp_path):
    spec = _spec("trojannn", target=3, rate=0.1,
                 params={"size": 5, "trigger_steps": 40, "candidates": 8, "finetune_epochs": 1})
    attack = get_attack(spec)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", mnist_train.shape, 10)
    log = attack.train(model, mnist_train, TrainSettings(epochs=1, batch_size=64))
    trigger = np.asarray(attack.params["trigger"])
    assert trigger.shape == (1, 5, 5) and 0.0 <= trigger.min() and trigger.max() <= 1.0
    np.testing.assert_allclose(trigger * 255, np.rint(trigger * 255), atol=1e-3)  # 8-bit grid
    assert len(attack.params["neuron_idx"]) == 2 and min(log["attack_notes"]["trojan"]["activation"]) > 0.0
    assert log["n_poisoned"] == round(0.1 * int((mnist_train.y != 3).sum())) and log["epochs"] == 2
    assert len(log["loss"]) == 2
    # the learnt patch is what evaluation stamps, after JSON and after the ONNX metadata
    recorded = dataclasses.replace(spec, params=dict(attack.params))
    x = mnist_train.x[:6]
    np.testing.assert_array_equal(_reloaded(spec, attack.params).apply(x), attack.apply(x))
    path = export_torch_model(model, mnist_train.shape, tmp_path / "t.onnx", {ATTACK_SPEC_KEY: recorded.to_json()},
                              dynamo=False)
    loaded = load_spec(path)
    assert loaded == recorded
    np.testing.assert_array_equal(get_attack(loaded).apply(x), attack.apply(x))


def test_refool_spec_round_trips_through_onnx_metadata(tmp_path):
    images = _images(40)
    spec = _spec("refool", params={"ghost_rate": 0.5})
    attack = get_attack(spec)
    attack.poison(images)
    recorded = dataclasses.replace(spec, params=dict(attack.params))
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10)
    path = export_torch_model(model, (1, 28, 28), tmp_path / "r.onnx", {ATTACK_SPEC_KEY: recorded.to_json()},
                              dynamo=False)
    loaded = load_spec(path)
    assert loaded == recorded
    test_x = _images(12, seed=3).x
    np.testing.assert_array_equal(get_attack(loaded).apply(test_x), attack.apply(test_x))


def test_listing_shows_the_clean_label_rate():
    listed = dict(list_attacks())
    for name in ("clb", "refool"):
        assert "[clean-label]" in listed[name] and "--rate 0.8" in listed[name]
    assert "[dirty-label]" in listed["trojannn"]
