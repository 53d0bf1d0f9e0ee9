"""The bn-kl detector on the committed zoo's GTSRB files (small ResNet, BN kept): the BadNets
model's most outlying BN channel sits far beyond the clean models'; a folded copy has no BN
statistics and the detector says so instead of scoring. BNP's pruning reads the same statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from backdoor_audit.audit.scan import scan_model
from backdoor_audit.bench.repair import fold_copy
from backdoor_audit.data import load_images

GTSRB = Path(__file__).resolve().parents[1] / "zoo" / "gtsrb"
pytestmark = pytest.mark.skipif(not (GTSRB / "clean.npz").is_file(), reason="the zoo is not in this checkout")


@pytest.fixture(scope="module")
def clean():
    return load_images(GTSRB / "clean.npz")


def _bnkl(path, clean):
    rep = scan_model(path, clean, detectors=("bn-kl",), calibrated=False)
    return rep.detection("bn-kl")


def test_bn_kl_separates_a_backdoored_gtsrb_model_from_clean_ones(clean):
    bad = _bnkl(GTSRB / "badnets-t0-s0.onnx", clean)
    goods = [_bnkl(GTSRB / f"clean-s{s}.onnx", clean) for s in (0, 1)]
    assert bad.score > 5 * max(g.score for g in goods)  # measured: 246 against 17 and 12
    assert bad.flagged and bad.findings[0].id == "bnkl.outlier-channel" and len(bad.neurons) == 10
    layer, channel, z = bad.neurons[0]
    assert z == pytest.approx(bad.score, abs=1e-3) and layer in bad.evidence["layers"]


def test_bn_kl_on_a_folded_copy_says_it_has_no_statistics(tmp_path, clean):
    folded = fold_copy(GTSRB / "badnets-t0-s0.onnx", tmp_path / "folded.onnx")
    d = _bnkl(folded, clean)
    assert d.score is None and d.flagged is None and "no BatchNormalization" in d.evidence["reason"]
