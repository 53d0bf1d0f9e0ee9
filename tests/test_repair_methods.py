"""Every repair method on a real (tiny) backdoored model: it runs end to end from the defender's
clean images alone, the written ONNX matches the repaired executor within 1e-4 under onnxruntime,
and, for the methods that remove this backdoor, ASR falls."""

from __future__ import annotations

import pytest

from backdoor_audit.evaluation.evaluate import evaluate
from backdoor_audit.inputs import model_preprocess
from backdoor_audit.graph.load import load_model
from backdoor_audit.repair import METHODS
from backdoor_audit.repair.run import repair_model

# small settings so each case runs in seconds; (options, ASR after at most)
CASES = {
    "anp": ({"iterations": 30, "batch_size": 64}, None),
    "clp": ({}, None),
    "fp": ({"iterations": 60, "batch_size": 64}, None),
    "ft": ({"iterations": 60, "batch_size": 64}, None),
    "nc": ({"re_steps": 120, "re_batch_size": 32, "iterations": 80, "batch_size": 64}, 10.0),
}


def test_every_registered_method_has_a_case():
    assert set(CASES) == {e.name for e in METHODS}


@pytest.fixture(scope="module")
def before(tiny_backdoor):
    path, _, test, spec = tiny_backdoor
    res = evaluate(path, test, model_preprocess(load_model(path), test), spec)
    assert res.asr > 90, res  # the fixture really is backdoored
    return res


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_end_to_end_on_a_backdoored_model(tmp_path, tiny_backdoor, before, method):
    path, clean, test, spec = tiny_backdoor
    options, asr_at_most = CASES[method]
    needs_data = "none" not in METHODS.get(method).needs
    out = tmp_path / f"{method}.onnx"
    rep = repair_model(path, clean if needs_data else None, method, out, options)
    assert rep.parity_max_abs <= 1e-4
    after = evaluate(out, test, model_preprocess(load_model(out), test), spec)
    assert after.acc >= before.acc - 15, (method, before.acc, after.acc)
    if asr_at_most is not None:
        assert after.asr <= asr_at_most and after.asr < before.asr - 50, (method, before.asr, after.asr)
