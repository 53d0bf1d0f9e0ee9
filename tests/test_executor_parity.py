"""The executor computes what onnxruntime computes (max abs logit difference <= 1e-4) on models
from both exporters, BN kept and folded, dynamic and static batch, on real images; gradients
reach the input and every float initializer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from backdoor_audit.export.session import make_session, run_logits
from backdoor_audit.graph.executor import load_executor
from backdoor_audit.graph.neurons import build_inventory
from backdoor_audit.models import build_model

from conftest import OpZoo, export, randomise_bn

CASES = [
    ("mnist-cnn", "dynamo", True), ("mnist-cnn", "legacy13", False), ("mnist-cnn", "dynamo", False),
    ("small-resnet", "dynamo", True), ("small-resnet", "dynamo-raw", False),
    ("small-resnet", "legacy13", True), ("small-resnet", "legacy17-bn", True),
    ("opzoo", "dynamo", True), ("opzoo", "dynamo-raw", True), ("opzoo", "legacy13", False),
    ("opzoo", "legacy17-bn", True), ("mnist-cnn-bn", "dynamo-raw", True),
]


def _model(arch: str):
    torch.manual_seed(0)
    if arch == "mnist-cnn":
        return build_model("mnist-cnn", (1, 28, 28), 10).eval(), (1, 28, 28)
    if arch == "small-resnet":
        return randomise_bn(build_model("small-resnet", (3, 32, 32), 10)), (3, 32, 32)
    if arch == "mnist-cnn-bn":
        return randomise_bn(build_model("mnist-cnn-bn", (1, 28, 28), 10)), (1, 28, 28)
    return randomise_bn(OpZoo()), (3, 32, 32)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'dyn' if c[2] else 'static'}")
def exported(request, tmp_path_factory):
    arch, exporter, dynamic = request.param
    model, shape = _model(arch)
    path = export(model, shape, tmp_path_factory.mktemp("exp") / f"{arch}-{exporter}.onnx", exporter, dynamic)
    return path, shape, exporter


def _images(shape, mnist_images, cifar_images):
    return (mnist_images if shape[0] == 1 else cifar_images).x[:16].astype(np.float32)


def test_logits_match_onnxruntime(exported, mnist_images, cifar_images):
    path, shape, _ = exported
    x = _images(shape, mnist_images, cifar_images)
    ex = load_executor(path, device="cpu")
    sess = make_session(path)
    ref = run_logits(sess, x[:15])  # 15: a fixed-batch export (2) gets a padded last batch
    x = x[:15]
    with torch.no_grad():
        got = ex(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4


def test_bn_state_is_what_the_exporter_did(exported):
    path, _, exporter = exported
    proto = onnx.load(str(path))
    inv = build_inventory(proto)
    has_bn = any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert inv.has_batchnorm == has_bn
    if has_bn:
        bns = [l for l in inv.layers if l.kind == "bn"]
        assert all(l.normalises is not None for l in bns)
        assert all(inv[l.normalises].bn == l.name for l in bns)


def test_gradients_reach_input_and_every_initializer(exported, mnist_images, cifar_images):
    path, shape, _ = exported
    ex = load_executor(path, device="cpu").requires_grad_weights(True)
    x = torch.from_numpy(_images(shape, mnist_images, cifar_images)[:4]).requires_grad_(True)
    ex(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    inv = build_inventory(onnx.load(str(path)))
    for layer in inv.layers:
        w = ex.value(layer.weight)
        assert w.grad is not None and w.grad.abs().sum() > 0, layer.name


def test_mnist_cnn_has_the_appendix_neuron_count(tmp_path):
    model, shape = _model("mnist-cnn")
    inv = build_inventory(onnx.load(str(export(model, shape, tmp_path / "m.onnx", "dynamo"))))
    assert inv.summary()["by_kind"] == {"conv": 48, "linear": 522, "bn": 0, "norm": 0}
    assert sum(l.size for l in inv.units()) == 560  # ANP Table 6: 48 conv + 512 FC, head excluded


def test_mnist_cnn_bn_units_are_the_560_bn_channels(tmp_path):
    """The form the ANP authors' code prunes: BN2d after the convs, BN1d after the FC layer."""
    model, shape = _model("mnist-cnn-bn")
    inv = build_inventory(onnx.load(str(export(model, shape, tmp_path / "b.onnx", "legacy17-bn"))))
    units = inv.units()
    assert all(l.kind == "bn" for l in units) and sum(l.size for l in units) == 560
    assert [l.size for l in inv.select_units("linear")] == [512]
    assert sum(l.size for l in inv.select_units("conv")) == 48


def test_residual_add_couples_channels(tmp_path):
    model, shape = _model("small-resnet")
    inv = build_inventory(onnx.load(str(export(model, shape, tmp_path / "r.onnx", "legacy17-bn"))))
    adds = [c for c in inv.couplings if c.kind == "add"]
    assert len(adds) >= 6  # one per basic block
    assert all(len(c.layers) >= 2 for c in adds)
    assert all(inv[name].kind == "bn" for c in adds for name in c.layers)


def test_concat_records_channel_offsets(tmp_path):
    model, shape = _model("opzoo")
    inv = build_inventory(onnx.load(str(export(model, shape, tmp_path / "z.onnx", "legacy13"))))
    cat = [c for c in inv.couplings if c.kind == "concat"]
    assert len(cat) == 1 and cat[0].offsets == (0, 12)


def test_batch_statistics_mode_matches_torch_training_mode(tmp_path, cifar_images):
    """ANP's authors optimise masks with BN in training mode; the executor can normalise with
    batch statistics too, without touching the stored ones, and switches back cleanly."""
    model, shape = _model("small-resnet")
    path = export(model, shape, tmp_path / "bn.onnx", "legacy17-bn")
    ex = load_executor(path, device="cpu")
    x = torch.from_numpy(cifar_images.x[:16].astype(np.float32))
    train_model = model.train()
    with torch.no_grad():
        expected = train_model(x).numpy()
    model.eval()
    before = {n: t.detach().clone() for n, t in ex.named_initializers()}
    previous = ex.batchnorm_mode("batch")
    with torch.no_grad():
        got = ex(x).numpy()
    ex.batchnorm_mode(previous)
    assert np.abs(got - expected).max() <= 1e-4
    assert all(torch.equal(before[n], t) for n, t in ex.named_initializers())
    with torch.no_grad():
        ref = make_session(path).run(None, {"input": x.numpy()})[0]
        assert np.abs(ex(x).numpy() - ref).max() <= 1e-4
