"""First scan: report shape, the graph check for hidden trigger branches, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from backdoor_audit.audit.scan import graph_findings, scan_model
from backdoor_audit.cli import main
from backdoor_audit.models import build_model

from conftest import export


class HiddenBranch(torch.nn.Module):
    """A classifier with an architectural backdoor: a bright bottom-right corner switches the
    logits to class 0 through Greater/Where, no weights involved."""

    def __init__(self):
        super().__init__()
        self.net = build_model("mnist-cnn", (1, 28, 28), 10)

    def forward(self, x):
        logits = self.net(x)
        fire = x[:, :, -4:, -4:].amax(dim=(1, 2, 3)) > 0.9
        forced = torch.zeros_like(logits)
        forced[:, 0] = 100.0
        return torch.where(fire[:, None], forced, logits)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    torch.manual_seed(0)
    return export(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28),
                  tmp_path_factory.mktemp("s") / "plain.onnx", "dynamo")


def test_hidden_branch_is_flagged_without_data(tmp_path):
    path = export(HiddenBranch().eval(), (1, 28, 28), tmp_path / "hidden.onnx", "dynamo")
    found = graph_findings(onnx.load(str(path)))
    assert found and found[0].severity == "high"
    assert {"Greater", "Where"} <= set(found[0].evidence["ops"])


def test_plain_model_has_no_graph_findings(plain_model):
    assert graph_findings(onnx.load(str(plain_model))) == []


def test_scan_report(plain_model, mnist_images):
    rep = scan_model(plain_model, mnist_images, eps_list=(0.1, 0.4), probe_steps=2, mask_iterations=5)
    assert [p.eps for p in rep.probe] == [0.1, 0.4]
    for p in rep.probe:
        assert 0 <= p.error_rate <= 1 and 0 <= p.top_share <= 1
        assert abs(sum(p.class_share) - 1) < 1e-3
    assert rep.units == 560 and len(rep.lowest_masks) == 10
    assert rep.verdict in ("backdoor suspected", "no backdoor found", "inconclusive")
    json.dumps(rep.to_dict(), default=str)


def test_scan_cli_json_and_too_few_images(tmp_path, plain_model, mnist_images):
    few = tmp_path / "few.npz"
    np.savez(few, x=(mnist_images.x[:5, 0] * 255).astype(np.uint8), y=np.arange(5) * 2)
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--data", str(few)])
    assert res.exit_code == 2 and "5 clean images for 9 classes" in res.stderr
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=(mnist_images.x[:, 0] * 255).astype(np.uint8), y=mnist_images.y)
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--data", str(ok), "--json",
                                    "--mask-iterations", "3", "--probe-steps", "1"])
    assert res.exit_code in (0, 1), res.stderr
    out = json.loads(res.stdout)
    assert out["verdict"] and len(out["probe"]) == 4
