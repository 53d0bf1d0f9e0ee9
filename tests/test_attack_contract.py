"""The contract every registered attack keeps, checked for each name the registry knows (a new attack
is covered by adding it): it trains on grey and on RGB data of any size and class count, exports to
ONNX with its spec in the metadata, and that spec alone rebuilds the very trigger it trained with, so
that onnxruntime's ACC/ASR of the file equal the trained model's in torch."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_audit.attacks import AttackSpec, get_attack, load_spec
from backdoor_audit.attacks import run as run_module
from backdoor_audit.attacks.registry import known_attacks
from backdoor_audit.attacks.run import run_attack
from backdoor_audit.training.train import TrainSettings
from backdoor_audit.evaluation.evaluate import evaluate
from backdoor_audit.graph.load import load_model
from backdoor_audit.inputs import model_preprocess

from conftest import random_images

# settings that keep each attack's own preparation to seconds on tiny data (all else: its defaults)
FAST = {
    "clb": {"surrogate_epochs": 1, "steps": 2},
    "input-aware": {"mask_steps": 5, "channels": 4},
    "refool": {"n_reflections": 2, "select_rounds": 1, "candidates": 3, "select_width": 2, "select_images": 20,
               "select_epochs": 1},
    "trojannn": {"candidates": 4, "trigger_steps": 10},
}
CLEAN_LABEL = {"clb", "refool", "sig"}
# (channels, height, width, classes): grey and odd-sized, RGB with few classes
DATASETS = {"grey-19x23-c7": (1, 19, 23, 7), "rgb-24x24-c3": (3, 24, 24, 3)}
CASES = [(name, "all-to-one", d) for name in known_attacks() for d in DATASETS]
CASES += [(name, "all-to-all", "grey-19x23-c7") for name in ("badnets", "input-aware")]


@pytest.mark.parametrize("name, mode, dataset", CASES, ids=[f"{n}-{m}-{d}" for n, m, d in CASES])
def test_every_attack_trains_on_any_data_and_its_spec_in_the_file_rebuilds_its_trigger(
        tmp_path, monkeypatch, name, mode, dataset):
    c, h, w, classes = DATASETS[dataset]
    train, test = random_images(140, c, h, w, classes, seed=0), random_images(60, c, h, w, classes, seed=1)
    target = None if mode == "all-to-all" else classes - 1  # the last class: any class count
    spec = AttackSpec(name, mode, target, classes, dict(FAST.get(name, {})), seed=3,
                      rate=0.8 if name in CLEAN_LABEL else 0.3)
    made = []  # the attack object run_attack trains (its trigger as learnt, not as rebuilt)

    def spy(s):
        made.append(get_attack(s))
        return made[-1]

    monkeypatch.setattr(run_module, "get_attack", spy)
    out = tmp_path / "m.onnx"
    summary = run_attack("mnist-cnn-bn", train, spec, out, TrainSettings(epochs=1, batch_size=32, lr=0.05),
                         test_data=test, dynamo=False)  # the legacy exporter: seconds faster, same metadata
    (trained,) = made
    assert summary["n_poisoned"] > 0
    if name in CLEAN_LABEL:  # only target-class images are poisoned, and they keep their label
        assert summary["n_poisoned"] <= int((train.y == target).sum())

    stored = load_spec(out)
    assert (stored.attack, stored.mode, stored.target, stored.num_classes, stored.seed, stored.rate) == (
        name, mode, target, classes, 3, spec.rate)
    rebuilt = get_attack(stored).apply(test.x)
    np.testing.assert_array_equal(rebuilt, trained.apply(test.x))
    assert rebuilt.shape == test.x.shape and 0.0 <= rebuilt.min() and rebuilt.max() <= 1.0
    assert not np.array_equal(rebuilt, test.x)

    res = evaluate(out, test, model_preprocess(load_model(out), test), stored)
    one_image = 100.0 / len(test)
    assert res.acc == pytest.approx(summary["acc"], abs=one_image + 1e-9)
    assert res.asr == pytest.approx(summary["asr"], abs=100.0 / int(stored.asr_mask(test.y).sum()) + 1e-9)
