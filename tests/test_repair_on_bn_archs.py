"""Every repair method on each zoo architecture that has BatchNorm, as a vendor ships it: BN kept
(exported as the zoo's files are) and BN folded by onnxruntime's basic optimiser (how the
benchmark makes its folded copies). The small ResNet (CIFAR-10 and GTSRB: residual adds, global
pooling) loses every BN; the MNIST CNN with BN keeps the one behind its fully connected layer, as
the zoo's folded BN-reparam copy does (other exports fold that one too: a file may have none).
At a tiny budget each method runs end to end and the written file computes what the repaired
executor computed (<= 1e-4 under onnxruntime), or it refuses with one line and writes nothing:
bnp on a file without BN statistics, nad on a CNN with two spatial stages (it needs three). Whether
the methods remove backdoors is the zoo benchmark's question (docs/bench-repair.md);
test_repair_methods.py covers the BN-free MNIST CNN and checks ASR on a tiny backdoored one."""

from __future__ import annotations

import pytest
import torch

from backdoor_audit.bench.repair import fold_copy
from backdoor_audit.errors import SpecError
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model
from backdoor_audit.repair import METHODS
from backdoor_audit.repair.run import repair_model

from conftest import randomise_bn

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
ARCHS = {"small-resnet": (3, 32, 32), "mnist-cnn-bn": (1, 28, 28)}
# (method, arch, variant) -> what the one-line refusal says; "*" is any variant
REFUSED = {("bnp", "small-resnet", "folded"): "BatchNormalization", ("nad", "mnist-cnn-bn", "*"): "spatial stages"}


def test_every_registered_method_is_here():
    assert set(TINY) == {e.name for e in METHODS}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each architecture, randomised once, exported with BN kept, and that file with BN folded by
    onnxruntime's basic optimiser (how the benchmark makes its folded copies)."""
    d = tmp_path_factory.mktemp("archs")
    out = {}
    for arch, shape in ARCHS.items():
        torch.manual_seed(0)
        model = randomise_bn(build_model(arch, shape, 10))
        bn = export_torch_model(model, shape, d / f"{arch}-bn.onnx", keep_batchnorm=True)  # as the zoo's files
        out[arch] = {"bn": bn, "folded": fold_copy(bn, d / f"{arch}-folded.onnx")}  # as the zoo's folded copies
    return out


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_folding_removes_every_bn_but_the_cnn_s_fc_one(exported, arch):
    from backdoor_audit.graph.load import load_model
    from backdoor_audit.graph.neurons import build_inventory

    bns = {v: sum(l.kind == "bn" for l in build_inventory(load_model(p)).layers) for v, p in exported[arch].items()}
    assert bns["folded"] < bns["bn"] and (bns["folded"] == 0) == (arch == "small-resnet"), bns


@pytest.mark.parametrize("variant", ["bn", "folded"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", sorted(TINY))
def test_method_runs_on_a_bn_architecture(tmp_path, exported, cifar_images, mnist_images, method, arch, variant):
    path = exported[arch][variant]
    images = cifar_images if ARCHS[arch][0] == 3 else mnist_images
    needs = METHODS.get(method).needs
    data = None if "none" in needs else images
    train = images if "train" in needs else None
    out = tmp_path / "o.onnx"
    refusal = REFUSED.get((method, arch, variant)) or REFUSED.get((method, arch, "*"))
    if refusal:
        with pytest.raises(SpecError, match=refusal):
            repair_model(path, data, method, out, TINY[method], train=train)
        assert not out.exists()
        return
    rep = repair_model(path, data, method, out, TINY[method], train=train)
    assert out.is_file() and rep.parity_max_abs <= 1e-4, (method, variant, rep.parity_max_abs)
