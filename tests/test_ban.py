"""BAN (adversarial neuron noise with the benign features masked out) as a scan detector."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_audit.audit.scan import scan_model
from backdoor_audit.errors import DataError

SMALL = {"mask_steps": 20, "noise_steps": 3}


def test_ban_masks_the_heads_input_and_scores_the_share_sent_to_one_class(tiny_backdoor):
    path, clean, _, _ = tiny_backdoor
    rep = scan_model(path, clean, detectors=("ban",), options={"ban": SMALL})
    ban = rep.detection("ban")
    ev = ban.evidence
    assert ev["features"] and len(ev["feature_shape"]) == 1  # the tiny CNN's head is a Gemm on a vector
    assert 0 <= ev["mask_mean"] <= 1 and ev["units"] > 0 and len(ban.neurons) == 10
    assert ban.score == pytest.approx(max(ev["class_share"]), abs=1e-4)
    assert ev["top_class"] == int(np.argmax(ev["class_share"]))
    assert ban.flagged == (ban.score >= ban.threshold)


def test_ban_without_noise_measures_the_model_as_it_is_and_leaves_the_executor_clean(tiny_backdoor):
    path, clean, _, _ = tiny_backdoor
    # a budget of 1e-9 is no noise at all: the noisy model is the model, so its accuracy is the clean one
    both = scan_model(path, clean, detectors=("ban", "mm-bd"), options={"ban": {**SMALL, "eps": 1e-9},
                                                                       "mm-bd": {"steps": 5}})
    assert both.detection("ban").evidence["accuracy_noise"] == pytest.approx(both.clean_accuracy / 100, abs=1e-4)
    alone = scan_model(path, detectors=("mm-bd",), options={"mm-bd": {"steps": 5}})
    # nothing of BAN's feature mask or noise is left in the executor for the next detector
    assert both.detection("mm-bd").evidence["margins"] == alone.detection("mm-bd").evidence["margins"]


def test_ban_needs_labeled_data(tiny_backdoor):
    with pytest.raises(DataError, match="ban needs labeled clean images"):
        scan_model(tiny_backdoor[0], detectors=("ban",))
