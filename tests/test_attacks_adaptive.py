"""Adaptive attacks against EP/BNP: BN re-parameterisation (G.1) and the pre-activation penalty (G.2)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from backdoor_audit.attacks import AttackSpec, get_attack, list_attacks, load_spec
from backdoor_audit.attacks.adaptive_reg import preactivation_gap, preactivation_sites
from backdoor_audit.attacks.bn_reparam import benign_bn_statistics, reparameterize_batchnorm
from backdoor_audit.attacks.run import run_attack
from backdoor_audit.training.train import TrainSettings, augment_batch
from backdoor_audit.data import ImageSet, demo_sample_path, load_images
from backdoor_audit.errors import SpecError
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model

from conftest import make_spec, randomise_bn


def _spec(attack: str, **params) -> AttackSpec:
    return make_spec(attack, params=params)


@pytest.fixture(scope="module")
def mnist_train() -> ImageSet:
    """320 real MNIST digits (the package's demo sample)."""
    return load_images(demo_sample_path(), split="train").subset(np.arange(320))


@pytest.fixture(scope="module")
def badnets_bn_model(mnist_train):
    """An mnist-cnn-bn BadNets model after a short real training (bn-reparam's train, before finalize)."""
    torch.manual_seed(0)
    model = build_model("mnist-cnn-bn", (1, 28, 28), 10)
    attack = get_attack(_spec("bn-reparam"))
    attack.train(model, mnist_train, TrainSettings(epochs=1, batch_size=32))
    return attack, model


def _logits(model, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _bn_inputs(model, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Each BatchNorm layer's input on ``x`` as (channels, samples), float64 (independent of the attack code)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, inp[0].detach()))
             for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    _logits(model, x)
    for h in hooks:
        h.remove()
    return {k: v.double().transpose(0, 1).reshape(v.shape[1], -1) for k, v in seen.items()}


# --------------------------------------------------------------------------- bn-reparam (G.1)


def test_bn_reparam_keeps_function_and_stores_benign_statistics(badnets_bn_model, mnist_train):
    attack, trained = badnets_bn_model
    model = copy.deepcopy(trained)
    x = np.concatenate([mnist_train.x[:100], attack.apply(mnist_train.x[:100])])
    before = _logits(model, x)
    benign = _bn_inputs(model, mnist_train.x)
    old = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in model.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)}
    assert len(old) == 3

    out = attack.finalize(model, mnist_train, TrainSettings(epochs=1))
    assert out is model
    np.testing.assert_allclose(_logits(model, x), before, atol=1e-4, rtol=0)
    for name, m in model.named_modules():
        if name in old:
            acts = benign[name]
            np.testing.assert_allclose(m.running_mean.double(), acts.mean(1), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(m.running_var.double(), acts.var(1, unbiased=True), rtol=1e-5, atol=1e-6)
            assert not torch.allclose(m.running_mean, old[name][0], atol=1e-3)  # the poisoned stats really changed
    # the re-parameterisation itself: gamma' = gamma s'/s, beta' = beta + gamma (mu' - mu) / s
    bn, bn_old = model.features[1], trained.features[1]
    s_old = torch.sqrt(bn_old.running_var + bn_old.eps)
    s_new = torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(bn.weight, bn_old.weight * s_new / s_old)
    torch.testing.assert_close(bn.bias, bn_old.bias + bn_old.weight * (bn.running_mean - bn_old.running_mean) / s_old)
    torch.testing.assert_close(model.features[0].weight, trained.features[0].weight, rtol=0, atol=0)  # conv untouched


def test_bn_reparam_any_batchnorm_architecture():
    torch.manual_seed(0)
    model = randomise_bn(build_model("small-resnet", (3, 32, 32), 10))
    x = np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)
    before = _logits(model, x)
    stats = benign_bn_statistics(model, x, batch_size=10)  # several batches merged
    assert len(stats) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    reference = _bn_inputs(model, x)
    reparameterize_batchnorm(model, stats)
    np.testing.assert_allclose(_logits(model, x), before, atol=1e-4, rtol=0)
    for name, m in model.named_modules():
        if name in reference:
            np.testing.assert_allclose(m.running_var.double(), reference[name].var(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dynamo", [True, False])
def test_bn_reparam_onnx_matches_torch(badnets_bn_model, mnist_train, tmp_path, dynamo):
    attack, trained = badnets_bn_model
    model = attack.finalize(copy.deepcopy(trained), mnist_train, TrainSettings(epochs=1))
    path = export_torch_model(model, (1, 28, 28), tmp_path / "m.onnx", {}, dynamo=dynamo, keep_batchnorm=True)
    proto = onnx.load(path)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 3
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    if dynamo:  # PyTorch names are kept: the exported statistics are the benign ones
        np.testing.assert_array_equal(inits["features.1.running_mean"], model.features[1].running_mean.numpy())
        np.testing.assert_array_equal(inits["classifier.2.running_var"], model.classifier[2].running_var.numpy())
    x = np.concatenate([mnist_train.x[:64], attack.apply(mnist_train.x[:64])])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _logits(trained, x), atol=1e-4, rtol=0)


def test_bn_reparam_run_attack_keeps_batchnorm(mnist_train, tmp_path):
    spec = _spec("bn-reparam", size=4)
    settings = TrainSettings(epochs=1, batch_size=64)
    summary = run_attack("mnist-cnn-bn", mnist_train, spec, tmp_path / "m.onnx", settings, dynamo=False)
    assert load_spec(summary["model"]) == summary["spec"] and summary["spec"].params["size"] == 4
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(summary["model"]).graph.node)


def test_bn_reparam_needs_batchnorm(mnist_train, tmp_path):
    with pytest.raises(SpecError, match="needs an architecture with BatchNorm layers; MnistCNN has none") as err:
        run_attack("mnist-cnn", mnist_train, _spec("bn-reparam"), tmp_path / "m.onnx", TrainSettings(epochs=1))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SpecError, match="no parameter"):
        get_attack(_spec("bn-reparam", lam=1))


# --------------------------------------------------------------------------- adaptive-reg (G.2)


@pytest.mark.parametrize(
    "value, message",
    [(-0.1, r"must be in \[0, inf\)"), (float("nan"), "must be a number"), ("much", "must be a number"),
     (True, "must be a number")],
)
def test_adaptive_reg_bad_lambda(value, message):
    with pytest.raises(SpecError, match=message):
        get_attack(_spec("adaptive-reg", **{"lambda": value}))


def test_adaptive_reg_listed_with_default_lambda():
    listed = dict(list_attacks())
    assert "lambda=0.01" in listed["adaptive-reg"] and "G.2" in listed["adaptive-reg"]
    assert "G.1" in listed["bn-reparam"]
    assert get_attack(_spec("adaptive-reg")).lam == 0.01


def _train(arch, images, attack_name, augment=None, **params):
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28), 10)
    attack = get_attack(_spec(attack_name, **params))
    log = attack.train(model, images, TrainSettings(epochs=1, batch_size=16, augment=augment))  # 20 steps
    return attack, model, log


def test_adaptive_reg_penalty_is_trained(mnist_train):
    _, plain, plain_log = _train("mnist-cnn-bn", mnist_train, "badnets")
    attack0, zero, zero_log = _train("mnist-cnn-bn", mnist_train, "adaptive-reg", **{"lambda": 0})
    attack, reg, reg_log = _train("mnist-cnn-bn", mnist_train, "adaptive-reg", **{"lambda": 0.1})
    # lambda 0 is exactly BadNets: the loop is train_classifier's
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert zero_log["loss"] == plain_log["loss"] and "reg" not in zero_log  # no pairs computed
    # lambda > 0: the penalty enters the loss and changes the weights
    assert reg_log["reg"][0] > 0 and reg_log["n_poisoned"] == zero_log["n_poisoned"] > 0
    np.testing.assert_allclose(reg_log["loss"][0], reg_log["ce"][0] + 0.1 * reg_log["reg"][0], rtol=1e-6)
    assert not torch.allclose(reg.features[0].weight, zero.features[0].weight)
    # ... and shrinks the gap between poisoned and clean pre-activations it is defined on
    kind, sites = preactivation_sites(reg, torch.zeros(1, 1, 28, 28))
    assert kind == "bn-input" and len(sites) == 3
    clean = mnist_train.x[mnist_train.y != 0][:64]
    gap_reg = preactivation_gap(reg, attack.apply(clean), clean)
    gap_zero = preactivation_gap(zero, attack0.apply(clean), clean)
    assert gap_reg < 0.7 * gap_zero


def test_adaptive_reg_without_batchnorm_uses_hidden_layer_outputs(mnist_train):
    attack, model, log = _train("mnist-cnn", mnist_train, "adaptive-reg", augment="crop-flip", **{"lambda": 0.01})
    kind, sites = preactivation_sites(model, torch.zeros(1, 1, 28, 28))
    assert kind == "output" and [n for n, _ in sites] == ["features.0", "features.4", "classifier.1"]  # not the logits
    assert log["reg"][0] > 0 and np.isfinite(log["loss"][0])
    clean = mnist_train.x[:8]
    assert preactivation_gap(model, clean, clean) == 0.0


def test_paired_augmentation_is_identical_per_image():
    x = torch.rand(6, 1, 28, 28)
    both = augment_batch(torch.cat([x, x], dim=1), "crop-flip", torch.Generator().manual_seed(0))
    torch.testing.assert_close(both[:, :1], both[:, 1:], rtol=0, atol=0)
    single = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    torch.testing.assert_close(both[:, :1], single, rtol=0, atol=0)  # same draws as train_classifier's


def test_adaptive_reg_run_attack_round_trip(mnist_train, tmp_path):
    spec = _spec("adaptive-reg", patch="checkerboard")
    settings = TrainSettings(epochs=1, batch_size=32, checkpoint=str(tmp_path / "ckpt.pt"))
    summary = run_attack("mnist-cnn-bn", mnist_train, spec, tmp_path / "m.onnx", settings,
                         test_data=mnist_train.subset(np.arange(64)), dynamo=False)
    loaded = load_spec(summary["model"])
    assert loaded == summary["spec"] and loaded.params["lambda"] == 0.01 and loaded.params["patch"] == "checkerboard"
    attack = get_attack(loaded)
    x = np.concatenate([mnist_train.x[:32], attack.apply(mnist_train.x[:32])])
    sess = ort.InferenceSession(summary["model"], providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": x})[0].shape == (64, 10)
    assert summary["acc"] is not None and 0 < summary["n_poisoned"] < 0.15 * summary["n_train"]
    assert not (tmp_path / "ckpt.pt").exists()  # one epoch: nothing to resume, no checkpoint written
