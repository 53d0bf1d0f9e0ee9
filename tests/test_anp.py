"""ANP mechanics (Algorithm 1) and the repair pipeline around it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from backdoor_audit.export.session import make_session
from backdoor_audit.graph.model import open_model
from backdoor_audit.models import build_model
from backdoor_audit.graph.masks import optimize_masks
from backdoor_audit.inputs import fit_images
from backdoor_audit.repair.anp import prune_masks
from backdoor_audit.repair.base import RepairContext
from backdoor_audit.repair.run import repair_model

from conftest import export, randomise_bn


@pytest.fixture(scope="module")
def trained_mnist(tmp_path_factory, mnist_images):
    """A briefly trained MNIST CNN (clean), exported with the default exporter."""
    from backdoor_audit.training.train import train_classifier
    from backdoor_audit.data import demo_sample_path, load_images
    from backdoor_audit.data.sample import sample

    train = sample(load_images(demo_sample_path(), split="train"), 2000, seed=0)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10)
    train_classifier(model, train, epochs=2, lr=0.05, seed=0)
    return export(model, (1, 28, 28), tmp_path_factory.mktemp("t") / "mnist.onnx", "dynamo")


def _ctx(path, images):
    """What the mask optimiser runs on: the executor, its inventory and the fitted clean images."""
    m = open_model(path, "cpu")
    fitted = fit_images(m.proto, images, m.executor.device)
    return m, (m.executor, m.inventory, fitted.x, fitted.y)


def test_masks_in_unit_interval_and_perturbations_projected(trained_mnist, mnist_images):
    _, ctx = _ctx(trained_mnist, mnist_images)
    seen = []

    def check(it, mod):
        seen.append(it)
        mask = mod.mask.detach()
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
        assert float(mod.delta.abs().max()) <= 0.3 + 1e-6 and float(mod.xi.abs().max()) <= 0.3 + 1e-6
        # one signed step of size eps from U(-eps, eps), then projection: many entries sit at the bound
        assert float((mod.delta.abs() > 0.3 - 1e-6).float().mean()) > 0.3

    mod, log = optimize_masks(*ctx, eps=0.3, alpha=0.5, lr=0.2, momentum=0.9, iterations=15, batch_size=32,
                              callback=check)
    assert seen == list(range(15))
    assert mod.size == 560  # 48 conv + 512 FC: the head is left alone
    assert float(mod.mask.min()) < 1.0  # the masks moved
    assert log["iterations_per_second"] > 0


def test_unbounded_noise_reaches_twice_eps_as_the_authors_code(trained_mnist, mnist_images):
    """noise_bound='none': U(-eps, eps) plus one step of eps, no projection, so |delta| <= 2 eps and
    about half the entries lie beyond eps."""
    _, ctx = _ctx(trained_mnist, mnist_images)
    beyond = []

    def check(it, mod):
        d = mod.delta.detach().abs()
        assert float(d.max()) <= 0.6 + 1e-6 and float(mod.xi.detach().abs().max()) <= 0.6 + 1e-6
        beyond.append(float((d > 0.3 + 1e-6).float().mean()))

    optimize_masks(*ctx, eps=0.3, alpha=0.5, lr=0.2, momentum=0.9, iterations=5, batch_size=32,
                   noise_bound="none", callback=check)
    assert 0.3 < float(np.mean(beyond)) < 0.7


def test_same_seed_same_masks(trained_mnist, mnist_images):
    runs = []
    for _ in range(2):
        _, ctx = _ctx(trained_mnist, mnist_images)
        mod, _ = optimize_masks(*ctx, eps=0.4, alpha=0.2, lr=0.2, momentum=0.9, iterations=10, batch_size=32)
        runs.append(mod.mask.clone())
    assert torch.equal(runs[0], runs[1])


def test_no_perturbation_and_alpha_one_is_plain_mask_training(trained_mnist, mnist_images):
    """eps=0 reduces Eq. 8 to the clean loss alone (the paper's 'vanilla pruning' ablation)."""
    _, ctx = _ctx(trained_mnist, mnist_images)
    mod, log = optimize_masks(*ctx, eps=0.0, alpha=1.0, lr=0.2, momentum=0.9, iterations=5, batch_size=32)
    assert all(p["loss_rob"] == 0.0 for p in log["curve"])


def test_prune_by_threshold_and_fraction():
    scores = {"a": np.array([0.0, 0.5, 0.19, 1.0]), "b": np.array([0.3, 0.1])}
    m = prune_masks(scores, threshold=0.2)
    assert m["a"].tolist() == [0, 1, 0, 1] and m["b"].tolist() == [1, 0]
    m = prune_masks(scores, threshold=None, fraction=0.5)
    assert m["a"].tolist() == [0, 1, 0, 1] and m["b"].tolist() == [1, 0]
    m = prune_masks(scores, threshold=None, fraction=1 / 6)
    assert sum(v.size - v.sum() for v in m.values()) == 1 and m["a"][0] == 0


@pytest.mark.parametrize("exporter,kind", [("legacy17-bn", "bn"), ("dynamo", "conv")])
def test_repair_masks_bn_where_kept_and_conv_where_folded(tmp_path, cifar_images, exporter, kind):
    """BN kept: ANP masks BN scale (shift kept); BN folded: the conv's own weights (Eq. 3)."""
    torch.manual_seed(0)
    model = randomise_bn(build_model("small-resnet", (3, 32, 32), 10))
    src = export(model, (3, 32, 32), tmp_path / "r.onnx", exporter)
    out = tmp_path / "fixed.onnx"
    rep = repair_model(src, cifar_images, "anp", out, {"iterations": 5, "batch_size": 16, "fraction": 0.1})
    assert rep.pruned and rep.parity_max_abs <= 1e-4
    m = open_model(src, "cpu")
    kinds = {m.inventory[name].kind for name, _ in rep.pruned}
    assert kinds == {kind}
    new = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for name, k in rep.pruned:
        layer = m.inventory[name]
        assert np.all(np.take(new[layer.weight], k, axis=layer.weight_axis) == 0)
        if layer.bias is not None:  # keep-bias semantics: the bias (BN shift) is untouched
            assert np.array_equal(new[layer.bias], m.executor.value(layer.bias).detach().numpy())
    prov = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["backdoor_audit.provenance"])
    assert prov["method"] == "anp" and prov["source_sha256"] == m.sha256 and prov["params"]["fraction"] == 0.1


def test_repair_sees_only_the_model_and_clean_data(tmp_path, trained_mnist, mnist_images):
    """The method's whole world is a RepairContext: executor, inventory, the defender's clean images
    (model input, pixels, labels, the preprocessing between them), optional unlabeled images, seed.
    No field for test data, a trigger, an attack spec or a target. The model file here has no attack
    spec and the data no test split; repair still runs end to end (test_layering.py checks the same
    with a spec present and stripped)."""
    assert [f.name for f in dataclasses.fields(RepairContext)] == ["executor", "inventory", "x", "y", "raw",
                                                                   "preprocessing", "unlabeled", "train_x",
                                                                   "seed", "progress"]
    proto = onnx.load(str(trained_mnist))
    assert not any(p.key == "backdoor_audit.attack_spec" for p in proto.metadata_props)
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=(mnist_images.x[:, 0] * 255).astype(np.uint8), y=mnist_images.y)
    from backdoor_audit.data import load_images

    rep = repair_model(trained_mnist, load_images(clean), "anp", tmp_path / "o.onnx", {"iterations": 5})
    assert rep.parity_max_abs <= 1e-4
    out = make_session(tmp_path / "o.onnx").run(None, {"input": mnist_images.x[:4]})[0]
    assert out.shape == (4, 10)


def test_renorm_on_a_folded_file_prunes_to_the_clean_mean(tmp_path, cifar_images):
    """renorm=conv: on a BN-folded file the masks act after a normalisation estimated on the clean
    images; a pruned conv channel is written as weight 0 and bias = its clean mean, and the file still
    computes what the repaired executor computes."""
    from backdoor_audit.graph.masks import conv_statistics
    from backdoor_audit.inputs import fit_images

    torch.manual_seed(0)
    src = export(randomise_bn(build_model("small-resnet", (3, 32, 32), 10)), (3, 32, 32), tmp_path / "f.onnx",
                 "dynamo")
    m = open_model(src, "cpu")
    assert m.inventory.batchnorm_state == "absent"
    out = tmp_path / "fixed.onnx"
    rep = repair_model(src, cifar_images, "anp", out, {"iterations": 5, "batch_size": 16, "fraction": 0.05,
                                                       "renorm": "conv"})
    assert rep.pruned and rep.parity_max_abs <= 1e-4
    fitted = fit_images(m.proto, cifar_images, m.executor.device)
    convs = {name for name, _ in rep.pruned}
    stats = conv_statistics(m.executor, [m.inventory[n] for n in convs], fitted.x)
    new = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for name, k in rep.pruned:
        layer = m.inventory[name]
        assert np.all(new[layer.weight][k] == 0)
        assert np.isclose(new[layer.bias][k], float(stats[name][0][k]), atol=1e-5)
