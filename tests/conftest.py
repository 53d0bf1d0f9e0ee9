"""Shared fixtures: real exports of small CNNs, real images, a tiny backdoored model."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class OpZoo(nn.Module):
    """A CNN that exercises many operators exporters emit: BN, depthwise and strided conv,
    padded max/avg pooling, concat, residual add, assorted activations, dropout, flatten."""

    def __init__(self, c: int = 3, n: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(c, 12, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bn1 = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 12, 1)
        self.branch = nn.Conv2d(12, 8, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2, ceil_mode=True)
        self.fc1 = nn.Linear(20, 16, bias=False)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, n)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        r = nn.functional.hardswish(self.bn1(self.dw(h)))
        h = nn.functional.leaky_relu(self.pw(r) + h, 0.1)
        h = torch.cat([self.pool(h), torch.sigmoid(self.branch(h))], dim=1)
        h = self.avg(h)
        h = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc2(self.drop(nn.functional.elu(self.fc1(h))))


def random_images(n: int = 40, c: int = 1, h: int = 28, w: int = 28, classes: int = 10, seed: int = 0):
    """``n`` seeded uniform-noise images of ``c``x``h``x``w`` in [0, 1) with every one of ``classes``
    labels present, in shuffled order."""
    from backdoor_audit.data import ImageSet

    rng = np.random.default_rng(seed)
    x = rng.random((n, c, h, w), dtype=np.float32)
    y = np.arange(n) % classes  # every class present
    return ImageSet(x=x, y=rng.permutation(y).astype(np.int64), source="synthetic")


def make_spec(attack: str = "badnets", **fields):
    """An attack spec for tests: all-to-one, target 0 of 10 classes, no params, seed 0, rate 0.1,
    unless ``fields`` say otherwise (all-to-all gets no target unless one is given)."""
    from backdoor_audit.attacks import AttackSpec

    spec = dict(attack=attack, mode="all-to-one", target=0, num_classes=10, params={}, seed=0, rate=0.1)
    if fields.get("mode") == "all-to-all":
        spec["target"] = None
    spec.update(fields)
    spec["params"] = dict(spec["params"] or {})
    return AttackSpec(**spec)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean = torch.randn(n, generator=g) * 0.2
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


EXPORTERS = {
    # the default exporter (dynamo, opset 18+, BN folded by its optimiser)
    "dynamo": dict(dynamo=True),
    # dynamo without the optimiser: BN kept, Shape/Expand/CastLike left in
    "dynamo-raw": dict(dynamo=True, optimize=False),
    # legacy TorchScript exporter, constant folding (BN folded into Conv in eval mode)
    "legacy13": dict(dynamo=False, opset_version=13),
    # legacy exporter keeping BN
    "legacy17-bn": dict(dynamo=False, opset_version=17, do_constant_folding=False),
}


def export(model: nn.Module, shape, path: Path, exporter: str, dynamic: bool = True) -> Path:
    kw = dict(EXPORTERS[exporter])
    x = torch.rand(2, *shape)
    if dynamic:
        if kw.get("dynamo"):
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        else:
            kw["dynamic_axes"] = {"input": {0: "batch"}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["input"], output_names=["logits"], **kw)
    return path


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.fixture()
def kill_after(monkeypatch):
    """``kill_after(name, epochs)``: the next write of checkpoint file ``name`` after ``epochs``
    epochs raises Killed (or ``death``) once the file is on disk."""
    from backdoor_audit.training import resume

    def arm(name: str, epochs: int, death: type[BaseException] = Killed) -> None:
        write = resume._write

        def write_then_die(path, state):
            write(path, state)
            if path.name == name and state.get("epochs_done") == epochs:
                monkeypatch.setattr(resume, "_write", write)
                raise death

        monkeypatch.setattr(resume, "_write", write_then_die)

    return arm


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory):
    """An untrained MNIST CNN exported with the default exporter (BN-free, dynamic batch)."""
    from backdoor_audit.models import build_model

    torch.manual_seed(0)
    return export(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28),
                  tmp_path_factory.mktemp("m") / "mnist.onnx", "dynamo")


@pytest.fixture(scope="session")
def clean_npz(tmp_path_factory, mnist_images):
    """The MNIST test digits of ``mnist_images`` as an x/y .npz, as a defender would hold them."""
    p = tmp_path_factory.mktemp("d") / "clean.npz"
    np.savez(p, x=(mnist_images.x[:, 0] * 255).astype(np.uint8), y=mnist_images.y)
    return p


@pytest.fixture(scope="session")
def tiny_backdoor(tmp_path_factory):
    """A real backdoored model to repair: BadNets (3x3 square, target 0, 10%) on a mnist-cnn trained
    4 epochs on 3000 sample digits (test ACC 96.8, ASR 98.6). Returns (model path, 300 defender
    images, 500 test images, spec)."""
    from backdoor_audit.attacks.run import run_attack
    from backdoor_audit.data import demo_sample_path, load_images
    from backdoor_audit.training.train import TrainSettings

    out = tmp_path_factory.mktemp("tiny-backdoor")
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 3000))
    test = load_images(demo_sample_path(), split="test").subset(slice(0, 500))
    summary = run_attack("mnist-cnn", train, make_spec(), out / "m.onnx",
                         TrainSettings(epochs=4, batch_size=32, lr=0.05, seed=1), test_data=test, clean_holdout=300,
                         clean_out=out / "clean.npz")
    return Path(summary["model"]), load_images(out / "clean.npz"), test, summary["spec"]


@pytest.fixture(scope="session")
def tiny_clean(tmp_path_factory):
    """The tiny backdoored model's clean twin: the same CNN, digits, epochs and seed, no attack.
    Returns (model path, 300 defender images)."""
    from backdoor_audit.attacks.run import run_attack
    from backdoor_audit.data import demo_sample_path, load_images
    from backdoor_audit.training.train import TrainSettings

    out = tmp_path_factory.mktemp("tiny-clean")
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 3000))
    summary = run_attack("mnist-cnn", train, None, out / "m.onnx", TrainSettings(epochs=4, batch_size=32, lr=0.05,
                         seed=1), clean_holdout=300, clean_out=out / "clean.npz")
    return Path(summary["model"]), load_images(out / "clean.npz")


@pytest.fixture(scope="session")
def mnist_images():
    """Real MNIST digits from the sample the package ships."""
    from backdoor_audit.data import demo_sample_path, load_images
    from backdoor_audit.data.sample import sample

    return sample(load_images(demo_sample_path(), split="test"), 64, seed=1)


@pytest.fixture(scope="session")
def cifar_images():
    """Real CIFAR-10 test images (from ../shared/data when present, else MNIST in 3 channels)."""
    from backdoor_audit.data import ImageSet, load_images
    from backdoor_audit.data import demo_sample_path

    z = SHARED / "cifar10-jpeg.zip"
    if z.exists():
        return load_images(z, split="test", limit=48)
    m = load_images(demo_sample_path(), split="test", limit=48)
    x = np.pad(np.repeat(m.x, 3, axis=1), ((0, 0), (0, 0), (2, 2), (2, 2)))
    return ImageSet(x=x, y=m.y, classes=None, source="mnist-as-rgb")
