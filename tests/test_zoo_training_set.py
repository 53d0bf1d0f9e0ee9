"""A zoo model's training set, rebuilt from its metadata (for EP, whose threat model gives the
defender the training data): the attacker's share, poisoned exactly as the model saw it."""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest

from backdoor_audit.data import demo_sample_path, load_images
from backdoor_audit.errors import SpecError
from backdoor_audit.zoo.training_set import rebuild_training_set, training_record


def test_the_rebuilt_set_holds_the_poisoned_images_the_model_learnt(tiny_backdoor):
    path, clean, _, spec = tiny_backdoor
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 3000))  # the fixture's data
    training, _ = training_record(path)
    rebuilt = rebuild_training_set(path, train)
    assert len(rebuilt) == training["n_train"] == 2700
    # the poisoned images are the attacker-share images no clean image equals
    pool = {bytes(np.rint(x * 255).astype(np.uint8)) for x in train.x}
    changed = np.array([bytes(np.rint(x * 255).astype(np.uint8)) not in pool for x in rebuilt.x])
    assert changed.sum() == training["n_poisoned"] > 0
    assert (rebuilt.y[changed] == spec.target).all()
    # none of the defender's clean images is in the attacker's share
    share = {bytes(np.rint(x * 255).astype(np.uint8)) for x in rebuilt.x}
    assert not any(bytes(np.rint(x * 255).astype(np.uint8)) in share for x in clean.x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: rebuilt.x[changed].astype(np.float32)})[0]
    assert (logits.argmax(1) == spec.target).mean() > 0.9  # the model learnt these as the target


def test_a_set_of_another_size_is_refused_with_both_counts(tiny_backdoor):
    path = tiny_backdoor[0]
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 2000))
    with pytest.raises(SpecError, match="3000 images.*has 2000"):
        rebuild_training_set(path, train)


def test_a_file_without_training_metadata_is_refused(tmp_path, tiny_backdoor):
    import onnx

    m = onnx.load(str(tiny_backdoor[0]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(SpecError, match="no training metadata"):
        training_record(tmp_path / "m.onnx")
