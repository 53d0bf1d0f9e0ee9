"""Unlabeled clean data: an image folder without class subfolders loads as an unlabeled set; the
methods that need no labels (BCU, BNP) repair from it, the others, the scan and evaluation refuse
it in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backdoor_audit.data import load_images
from backdoor_audit.errors import DataError, SpecError
from backdoor_audit.evaluation.evaluate import evaluate
from backdoor_audit.graph.load import load_model
from backdoor_audit.inputs import model_preprocess
from backdoor_audit.repair.run import repair_model


@pytest.fixture(scope="module")
def unlabeled_folder(tmp_path_factory, tiny_backdoor):
    """The tiny model's 300 defender digits as a flat folder of PNGs, labels dropped."""
    clean = tiny_backdoor[1]
    root = tmp_path_factory.mktemp("unlabeled") / "clean"
    root.mkdir()
    for i, img in enumerate((clean.x[:, 0] * 255).round().astype(np.uint8)):
        Image.fromarray(img).save(root / f"{i:04d}.png")
    return root


def test_flat_folder_loads_unlabeled(unlabeled_folder, tiny_backdoor):
    images = load_images(unlabeled_folder)
    assert not images.labeled and images.classes is None and len(images) == 300
    assert np.abs(images.x - tiny_backdoor[1].x).max() <= 1 / 255
    assert len(load_images(unlabeled_folder, limit=7)) == 7
    cached = load_images(unlabeled_folder, cache_dir=unlabeled_folder.parent / "cache")
    again = load_images(unlabeled_folder, cache_dir=unlabeled_folder.parent / "cache")
    assert not again.labeled and again.classes is None and np.array_equal(cached.x, again.x)
    with pytest.raises(DataError, match="no split 'train'"):
        load_images(unlabeled_folder, split="train")


def test_bcu_repairs_from_unlabeled_images(tmp_path, unlabeled_folder, tiny_backdoor):
    path, _, test, spec = tiny_backdoor
    images = load_images(unlabeled_folder)
    before = evaluate(path, test, model_preprocess(load_model(path), test), spec)
    out = tmp_path / "bcu.onnx"
    rep = repair_model(path, images, "bcu", out, {"epochs": 20, "batch_size": 64})
    assert rep.parity_max_abs <= 1e-4 and np.isnan(rep.clean_acc_before)
    after = evaluate(out, test, model_preprocess(load_model(out), test), spec)
    assert after.acc >= before.acc - 15, (before.acc, after.acc)
    assert rep.log["redrawn"] > 0


def test_labeled_methods_refuse_unlabeled_images(tmp_path, unlabeled_folder, tiny_backdoor):
    path = tiny_backdoor[0]
    images = load_images(unlabeled_folder)
    with pytest.raises(DataError, match="repair method 'ft' needs labeled images .* and these have none; "
                       "methods that take unlabeled images: .*bcu"):
        repair_model(path, images, "ft", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(DataError, match="evaluation needs labeled images"):
        evaluate(path, images, model_preprocess(load_model(path), images))
    from backdoor_audit.audit.scan import scan_model

    with pytest.raises(DataError, match=r"the scan needs labeled images .* \(without --data it runs its data-free"):
        scan_model(path, images)


def test_unlabeled_set_reaches_a_method_without_labels(tmp_path, unlabeled_folder, tiny_backdoor):
    """BNP needs no labels either: on the BN-free tiny model it gets as far as its own refusal."""
    with pytest.raises(SpecError, match="BatchNormalization"):
        repair_model(tiny_backdoor[0], load_images(unlabeled_folder), "bnp", tmp_path / "o.onnx")
