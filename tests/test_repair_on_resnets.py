"""Every repair method on the zoo's CIFAR-10/GTSRB architecture, the small ResNet (residual adds,
global pooling, a linear head), as a vendor ships it: BatchNorm kept (legacy exporter) and BatchNorm
folded into the convolutions (torch.onnx.export's default today). At a tiny budget each method runs
end to end and the written file computes what the repaired executor computed (<= 1e-4 under
onnxruntime); a method defined on BN statistics refuses the folded file with one line and writes
nothing. Whether the methods remove backdoors on these files is the zoo benchmark's question
(docs/bench-repair.md); test_repair_methods.py checks ASR on a tiny backdoored CNN."""

from __future__ import annotations

import pytest
import torch

from backdoor_audit.errors import SpecError
from backdoor_audit.models import build_model
from backdoor_audit.repair import METHODS
from backdoor_audit.repair.run import repair_model

from conftest import export, randomise_bn

# the smallest settings that still run every stage of each method
TINY = {
    "anp": {"iterations": 3, "batch_size": 16},
    "bcu": {"epochs": 1, "batch_size": 16},
    "bnp": {},
    "clp": {},
    "ep": {},
    "fp": {"iterations": 3, "batch_size": 16},
    "fst": {"epochs": 1, "batch_size": 16},
    "ft": {"iterations": 3, "batch_size": 16},
    "ft-sam": {"epochs": 1, "batch_size": 16},
    "i-bau": {"rounds": 1},
    "mcr": {"ft_epochs": 1, "epochs": 1, "batch_size": 16},
    "nad": {"teacher_epochs": 1, "epochs": 1},
    "nc": {"re_steps": 3, "re_batch_size": 16, "iterations": 3, "batch_size": 16, "anomaly": 0.0},
    "npd": {"warm_epochs": 1, "epochs": 1, "batch_size": 16},
    "rnp": {"unlearn_epochs": 1, "recover_epochs": 1, "batch_size": 16},
    "sau": {"rounds": 1, "batch_size": 16},
    "wiper": {"epochs": 1, "batch_size": 16},
}
NEEDS_BN = {"bnp"}


def test_every_registered_method_is_here():
    assert set(TINY) == {e.name for e in METHODS}


@pytest.fixture(scope="module")
def resnets(tmp_path_factory):
    """The same randomised small ResNet exported twice: BN kept, and BN folded."""
    torch.manual_seed(0)
    model = randomise_bn(build_model("small-resnet", (3, 32, 32), 10))
    d = tmp_path_factory.mktemp("resnets")
    return {"bn": export(model, (3, 32, 32), d / "bn.onnx", "legacy17-bn"),
            "folded": export(model, (3, 32, 32), d / "folded.onnx", "dynamo")}


@pytest.mark.parametrize("variant", ["bn", "folded"])
@pytest.mark.parametrize("method", sorted(TINY))
def test_method_runs_on_the_small_resnet(tmp_path, resnets, cifar_images, method, variant):
    from backdoor_audit.graph.load import load_model
    from backdoor_audit.graph.neurons import build_inventory

    path = resnets[variant]
    state = build_inventory(load_model(path)).batchnorm_state
    assert (state == "absent") == (variant == "folded")
    needs = METHODS.get(method).needs
    data = None if "none" in needs else cifar_images
    train = cifar_images if "train" in needs else None
    out = tmp_path / "o.onnx"
    if method in NEEDS_BN and variant == "folded":
        with pytest.raises(SpecError, match="BatchNormalization"):
            repair_model(path, data, method, out, TINY[method], train=train)
        assert not out.exists()
        return
    rep = repair_model(path, data, method, out, TINY[method], train=train)
    assert out.is_file() and rep.parity_max_abs <= 1e-4, (method, variant, rep.parity_max_abs)
