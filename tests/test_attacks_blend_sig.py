"""Blend and SIG: the trigger is what the papers specify, reproducible, and poisons the right images."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from backdoor_audit.attacks import get_attack
from backdoor_audit.data import ImageSet
from backdoor_audit.errors import SpecError

from conftest import make_spec


_spec = functools.partial(make_spec, target=1)


def _images(n=60, c=3, h=32, w=32, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(x=rng.random((n, c, h, w), dtype=np.float32), y=np.arange(n, dtype=np.int64) % 10)


def test_blend_random_pattern_is_seeded_and_alpha_weighted():
    x = _images().x
    attack = get_attack(_spec("blend"))
    out = attack.apply(x)
    pattern = (out - 0.8 * x) / 0.2
    np.testing.assert_allclose(pattern, pattern[:1].repeat(len(x), 0), atol=1e-5)  # one pattern for all images
    assert 0.0 <= pattern.min() and pattern.max() <= 1.0 and pattern.std() > 0.2  # uniform noise
    np.testing.assert_array_equal(get_attack(_spec("blend")).apply(x), out)
    other = get_attack(_spec("blend", params={"pattern_seed": 1})).apply(x)
    assert np.abs(other - out).max() > 0.1
    half = get_attack(_spec("blend", params={"alpha": 0.5})).apply(x)
    np.testing.assert_allclose(half, 0.5 * x + 0.5 * pattern[:1], atol=1e-5)


def test_blend_image_pattern_is_recorded_for_evaluation(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, :4] = 255
    Image.fromarray(img).save(tmp_path / "p.png")
    images = _images(c=3, h=16, w=16)
    attack = get_attack(_spec("blend", params={"pattern": str(tmp_path / "p.png")}))
    poisoned, idx = attack.poison(images)
    assert len(idx) == 5  # 10% of the 54 non-target images
    stored = dict(attack.params)
    (tmp_path / "p.png").unlink()  # evaluation must not need the file any more
    again = get_attack(_spec("blend", params=stored))
    np.testing.assert_allclose(again.apply(images.x[idx]), poisoned.x[idx], atol=1e-6)
    resized = again.pattern((3, 16, 16))  # the 8x8 image, bilinearly resized: white left half
    assert resized[:, :, :6].min() == 1.0 and resized[:, :, 10:].max() == 0.0
    with pytest.raises(SpecError, match="fitted to 16x16"):
        again.apply(_images(c=3, h=32, w=32).x)


@pytest.mark.parametrize("params, message", [
    ({"alpha": 0}, "alpha must be in"), ({"alpha": "x"}, "must be a number"),
    ({"pattern": "/no/such.png"}, "neither 'random' nor an image file"),
])
def test_blend_bad_params(params, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("blend", params=params))


def test_sig_adds_a_horizontal_sinusoid():
    x = np.full((2, 3, 8, 32), 0.5, dtype=np.float32)
    out = get_attack(_spec("sig")).apply(x)
    expected = 0.5 + 20 / 255 * np.sin(2 * np.pi * np.arange(32) * 6 / 32)
    for row in out.reshape(-1, 32):  # the same in every channel and row
        np.testing.assert_allclose(row, expected, atol=1e-6)
    gtsrb = get_attack(_spec("sig", params={"delta": 60})).apply(x)
    assert np.isclose(np.abs(gtsrb - 0.5).max(), 60 / 255, atol=2e-3)
    assert get_attack(_spec("sig")).apply(np.ones((1, 1, 4, 32), np.float32)).max() == 1.0  # clipped


def test_sig_ramp_rises_from_zero_to_delta_left_to_right():
    x = np.zeros((1, 1, 4, 28), dtype=np.float32)
    out = get_attack(_spec("sig", params={"signal": "ramp", "delta": 30})).apply(x)
    for row in out.reshape(-1, 28):  # never negative, so visible on a black background
        np.testing.assert_allclose(row, 30 / 255 * np.arange(28) / 28, atol=1e-6)


def test_sig_is_clean_label_on_the_target_class():
    images = _images(n=100)
    attack = get_attack(_spec("sig", rate=0.8, seed=3))
    poisoned, idx = attack.poison(images)
    assert set(images.y[idx]) == {1} and len(idx) == 8  # 80% of the 10 target-class images
    np.testing.assert_array_equal(poisoned.y, images.y)  # labels untouched
    untouched = np.setdiff1d(np.arange(100), idx)
    np.testing.assert_array_equal(poisoned.x[untouched], images.x[untouched])
    _, idx_again = get_attack(_spec("sig", rate=0.8, seed=3)).poison(images)
    np.testing.assert_array_equal(idx, idx_again)


@pytest.mark.parametrize("kw, message", [
    ({"params": {"delta": 0}}, "delta must be in"), ({"params": {"frequency": -1}}, r"frequency must be in \(0, inf\)"),
    ({"mode": "all-to-all", "target": None}, "clean-label"),
    ({"params": {"signal": "square"}}, "sig signal must be 'sine' or 'ramp', got 'square'"),
])
def test_sig_bad_params(kw, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("sig", **kw))
