"""Every registered architecture builds for grey and RGB inputs and any class count, exports with
both exporters (dynamo with BN folded, legacy with BN kept), runs in the executor as it runs in
onnxruntime (max abs logit difference <= 1e-4), and the neuron inventory sees every conv and
linear output channel (and every BN channel when BN is kept)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.export.session import make_session, run_logits
from backdoor_audit.graph.model import open_model
from backdoor_audit.models import build_model, list_models

from conftest import randomise_bn

ARCHS = list_models()
# the project's own export path: the default dynamo exporter (its optimiser folds Conv+BN) and
# the legacy exporter keeping BatchNormalization nodes
EXPORTS = {"dynamo": dict(dynamo=True), "legacy-bn": dict(dynamo=False, keep_batchnorm=True)}
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against each other and
    make these (tiny-batch) forward passes 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_for_rgb_and_grey_and_any_class_count(arch):
    torch.manual_seed(0)
    for shape, classes in [((3, 32, 32), 10), ((3, 32, 32), 43), ((1, 28, 28), 10)]:
        model = build_model(arch, shape, classes).eval()
        with torch.no_grad():
            assert model(torch.rand(2, *shape)).shape == (2, classes), (shape, classes)


def test_registry_lists_the_new_architectures():
    assert {"resnet-18", "preact-resnet-18", "vgg-bn", "mobilenetv2", "wrn-28-1", "mnist-fc"} <= set(ARCHS)


@pytest.fixture(scope="module", params=[(a, e) for a in ARCHS for e in EXPORTS], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    arch, exporter = request.param
    torch.manual_seed(0)
    model = randomise_bn(build_model(arch, SHAPE, 10))
    path = tmp_path_factory.mktemp("models") / f"{arch}-{exporter}.onnx"
    export_torch_model(model, SHAPE, path, {"arch": arch}, **EXPORTS[exporter])
    return arch, exporter, model, open_model(path, device="cpu")


def test_executor_matches_onnxruntime(exported):
    _, _, model, opened = exported
    x = torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = opened.executor(x).numpy()
        want = model(x).numpy()
    ref = run_logits(make_session(opened.path), x.numpy())
    assert got.shape == ref.shape == (3, 10)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(got - want).max() <= 1e-4


def test_inventory_sees_every_conv_and_linear_channel(exported):
    _, exporter, model, opened = exported
    convs = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    linears = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    bns = sum(m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    by_kind = opened.inventory.summary()["by_kind"]
    assert (by_kind["conv"], by_kind["linear"]) == (convs, linears)
    if exporter == "legacy-bn":
        assert by_kind["bn"] == bns
    else:  # folded where a BN follows a conv alone; pre-activation BNs after an Add survive
        assert by_kind["bn"] <= bns


def test_mnist_fc_has_the_appendix_2000_hidden_neurons(tmp_path):
    model = build_model("mnist-fc", (1, 28, 28), 10)
    path = export_torch_model(model, (1, 28, 28), tmp_path / "fc.onnx")
    inv = open_model(path, device="cpu").inventory
    units = inv.units()
    assert [l.size for l in units] == [500, 500, 500, 500]
    assert all(l.kind == "linear" for l in units)
    assert inv.summary()["by_kind"] == {"conv": 0, "linear": 2010, "bn": 0, "norm": 0}
