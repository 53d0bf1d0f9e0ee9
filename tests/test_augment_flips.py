"""augment="auto" flips the defender's images only when the suspect model is flip-invariant on
them: a sign or digit classifier learnt without flips (a flipped "keep left" is "keep right") is
fine-tuned on crops alone (docs/repair.md: flips cost GTSRB BadNets 4.3 points under NC)."""

from __future__ import annotations

import torch
from torch import nn

from backdoor_audit.graph.model import open_model
from backdoor_audit.repair.base import RepairContext
from backdoor_audit.repair.finetune import FLIP_AGREEMENT, flip_agreement, resolve_augment
from backdoor_audit.training.train import augment_batch

from conftest import export


class Halves(nn.Module):
    """Class 0 when the left half of the image is brighter, class 1 when the right half is, and
    with ``symmetric`` the same score for both (a flip changes nothing)."""

    def __init__(self, symmetric: bool):
        super().__init__()
        self.symmetric = symmetric

    def forward(self, x):
        w = x.shape[3] // 2
        left, right = x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))
        if self.symmetric:
            return torch.stack([left + right, (left - right).abs()], dim=1)
        return torch.stack([left - right, right - left], dim=1)


def _ctx(tmp_path, symmetric: bool, raw: torch.Tensor) -> RepairContext:
    path = export(Halves(symmetric), (3, 8, 8), tmp_path / f"halves-{symmetric}.onnx", "dynamo")
    m = open_model(path, "cpu")
    ctx = RepairContext(m.executor, m.inventory)
    ctx.raw = ctx.x = raw
    return ctx


def test_auto_flips_only_a_model_that_keeps_its_predictions_when_flipped(tmp_path):
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(64, 3, 8, 8, generator=g)
    lopsided = _ctx(tmp_path, False, raw)
    assert flip_agreement(lopsided, raw) < 0.1 < FLIP_AGREEMENT  # a flip swaps its answer
    assert resolve_augment("auto", lopsided, raw) == "crop"
    invariant = _ctx(tmp_path, True, raw)
    assert flip_agreement(invariant, raw) == 1.0
    assert resolve_augment("auto", invariant, raw) == "crop-flip"
    assert resolve_augment("auto", invariant, raw[:, :1]) is None  # grey images: none, as before
    assert resolve_augment("crop-flip", lopsided, raw) == "crop-flip"  # what the user asks for stands


def test_crop_shifts_without_flipping():
    x = torch.zeros(32, 1, 8, 8)
    x[:, :, 3:5, 0:2] = 1.0  # a bar at the left edge
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    assert (out[..., 6:].sum((1, 2, 3)) == 0).all()  # never moved to the right edge: no flip
    assert not torch.equal(out, x)  # but shifted
    flipped = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    assert (flipped[..., 6:].sum((1, 2, 3)) > 0).any()
