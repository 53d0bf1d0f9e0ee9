"""CLP (data-free): the UCLC of the authors' code, on BN-kept and folded files, with no --data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from backdoor_audit.cli import main
from backdoor_audit.graph.model import open_model
from backdoor_audit.models import build_model
from backdoor_audit.repair.clp import channel_lipschitz

from conftest import export, randomise_bn

BOOSTED = 5  # the channel made an outlier, as a backdoor's amplifying channel is


def _model():
    torch.manual_seed(0)
    model = randomise_bn(build_model("small-resnet", (3, 32, 32), 10))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[2].weight[BOOSTED] *= 40.0
    return model, convs[2]


def _authors_uclc(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> np.ndarray:
    """The authors' expression, written out here to check ours against: largest singular value of
    conv.weight[k] reshaped to (in, -1), times |gamma_k / sqrt(running_var_k)|."""
    with torch.no_grad():
        std = bn.running_var.sqrt()
        return np.array([float(torch.linalg.svdvals(conv.weight[k].reshape(conv.weight.shape[1], -1)).max()
                               * (bn.weight[k] / std[k]).abs()) for k in range(conv.out_channels)])


@pytest.mark.parametrize("exporter, kind", [("legacy17-bn", "bn"), ("dynamo", "conv")])
def test_clp_prunes_the_outlier_channel_without_data(tmp_path, exporter, kind):
    model, conv = _model()
    src = export(model, (3, 32, 32), tmp_path / "m.onnx", exporter)
    out = tmp_path / "clp.onnx"
    res = CliRunner().invoke(main, ["repair", str(src), "--method", "clp", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    rep = json.loads(res.stdout)
    assert rep["parity_max_abs"] <= 1e-4 and rep["n_clean"] == 0
    m = open_model(src, "cpu")
    pruned = {tuple(p) for p in rep["pruned"]}
    assert {m.inventory[name].kind for name, _ in pruned} == {kind}
    # the boosted channel is among the pruned ones, in the layer that holds it
    boosted_layers = [name for name, k in pruned if k == BOOSTED]
    assert boosted_layers, pruned
    written = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for name, k in pruned:  # zero-bias semantics: the channel's scale and shift (or weight and bias) are 0
        layer = m.inventory[name]
        assert np.all(np.take(written[layer.weight], k, axis=layer.weight_axis) == 0)
        if layer.bias is not None:
            assert written[layer.bias][k] == 0
    assert len(pruned) < 0.05 * rep["units"]  # an outlier rule, not a sweep


def test_our_uclc_is_the_authors_on_a_bn_file(tmp_path):
    model, conv = _model()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][2]
    src = export(model, (3, 32, 32), tmp_path / "m.onnx", "legacy17-bn")
    m = open_model(src, "cpu")
    layer = [l for l in m.inventory.layers if l.kind == "conv" and l.bn][2]
    unit = m.inventory[layer.bn]
    ex = m.executor
    ours = channel_lipschitz(ex.value(layer.weight).detach().numpy(),
                             (ex.value(unit.weight) / ex.value(unit.var).sqrt()).detach().numpy())
    assert np.allclose(ours, _authors_uclc(conv, bn), rtol=1e-5)
    assert int(np.argmax(ours)) == BOOSTED


def test_clp_with_clean_data_raises_u_until_the_accuracy_holds(tmp_path, cifar_images):
    """max_acc_drop: u goes up from 3 in steps of 0.25 until the clean accuracy falls at most that much
    (or u_max); without it CLP stays data-free at u = 3."""
    from backdoor_audit.repair.run import repair_model

    model, _ = _model()
    src = export(model, (3, 32, 32), tmp_path / "m.onnx", "dynamo")
    plain = repair_model(src, None, "clp", tmp_path / "a.onnx")
    searched = repair_model(src, cifar_images, "clp", tmp_path / "b.onnx", {"max_acc_drop": 0.0, "u_max": 5.0})
    tried = searched.log["u_search"]
    assert tried[0]["u"] == 3.0 and all(b["u"] == a["u"] + 0.25 for a, b in zip(tried, tried[1:]))
    assert tried[-1]["acc_drop"] <= 0.0 or tried[-1]["u"] == 5.0
    assert all(t["acc_drop"] > 0.0 for t in tried[:-1])
    assert len(searched.pruned) <= len(plain.pruned)
    assert searched.clean_acc_before - searched.clean_acc_after == pytest.approx(tried[-1]["acc_drop"], abs=0.01)
