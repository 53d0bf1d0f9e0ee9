"""Resumable training: checkpoints and stages, and every attack with its own preparation or its own
training loop, killed at each of its checkpoints and resumed to the model an uninterrupted run makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from backdoor_audit.attacks import get_attack
from backdoor_audit.training import resume
from backdoor_audit.training.train import TrainSettings, train_classifier
from backdoor_audit.cli import main
from backdoor_audit.data import demo_sample_path, load_images
from backdoor_audit.errors import DataError
from backdoor_audit.models import build_model

from conftest import Killed, make_spec


@pytest.fixture(scope="module")
def digits():
    return load_images(demo_sample_path(), split="train").subset(slice(0, 256))


def test_stage_computes_once_and_a_resumed_run_loads_it(tmp_path):
    ckpt = tmp_path / "m.pt"
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls), "x": torch.arange(3)}

    assert resume.stage(None, "s", compute)[0]["n"] == 1 and not list(tmp_path.iterdir())  # no checkpoint: no file
    first, loaded = resume.stage(ckpt, "s", compute)
    again, reloaded = resume.stage(ckpt, "s", compute)
    assert (first["n"], loaded, again["n"], reloaded) == (2, False, 2, True)
    assert torch.equal(again["x"], torch.arange(3))
    assert (tmp_path / "m.pt.s").is_file() and not ckpt.exists() and resume.peek(ckpt, "s")["n"] == 2
    assert resume.peek(ckpt, "other") is None
    (tmp_path / "m.pt.s").write_bytes(b"damaged")
    assert resume.peek(ckpt, "s") is None
    with pytest.raises(DataError, match=r"cannot resume the s stage from .*m\.pt\.s: "):
        resume.stage(ckpt, "s", compute)
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.pt.clean.pt.t").write_bytes(b"x")  # a nested checkpoint's stage
    (tmp_path / "m.ptx").write_bytes(b"another model's")
    resume.discard(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ptx"]


def test_training_resumes_from_checkpoint_bit_exactly(digits, tmp_path, kill_after):
    torch.set_num_threads(1)

    def run(ckpt):
        torch.manual_seed(0)
        model = build_model("mnist-cnn", digits.shape, 10)
        log = train_classifier(model, digits, epochs=3, lr=0.05, seed=3, checkpoint=ckpt)
        return model, log

    whole, whole_log = run(None)
    ckpt = tmp_path / "m.pt"
    kill_after("m.pt", 2)
    with pytest.raises(Killed):
        run(ckpt)
    resumed, log = run(ckpt)
    assert log["resumed_at"] == 2 and log["loss"] == whole_log["loss"]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot resume from checkpoint"):
        run(ckpt)


def test_a_checkpoint_resumes_under_another_thread_count(digits, tmp_path, kill_after):
    def run(threads, ckpt):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model("mnist-cnn", digits.shape, 10)
        return model, train_classifier(model, digits, epochs=3, lr=0.05, seed=3, checkpoint=ckpt)

    whole, whole_log = run(1, None)
    kill_after("m.pt", 1)
    with pytest.raises(Killed):
        run(1, tmp_path / "m.pt")
    try:
        model, log = run(2, tmp_path / "m.pt")  # continued on more threads: the same steps, not bit for bit
    finally:
        torch.set_num_threads(1)
    assert log["resumed_at"] == 1
    np.testing.assert_allclose(log["loss"], whole_log["loss"], rtol=1e-4)
    for a, b in zip(whole.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# attack, params, the checkpoint file it dies after, epochs done then, the method that prepares
# (run again on resume only when the death came before the preparation was kept), and the epoch the
# log says it resumed at, counted over every epoch the log reports (TrojanNN's: clean, then fine-tune)
CASES = [
    ("input-aware", {"mask_steps": 4}, "m.pt", 0, "_pretrain_mask", 0),
    ("input-aware", {"mask_steps": 4}, "m.pt", 1, "_pretrain_mask", 1),
    ("clb", {"surrogate_epochs": 2, "steps": 2}, "m.pt.surrogate.pt", 1, "_prepare", 0),
    ("clb", {"surrogate_epochs": 2, "steps": 2}, "m.pt", 1, "_prepare", 1),
    ("trojannn", {"candidates": 4, "trigger_steps": 10}, "m.pt.clean.pt", 1, "_prepare", 1),
    ("trojannn", {"candidates": 4, "trigger_steps": 10}, "m.pt", 1, "_prepare", 3),
    ("refool", {"n_reflections": 1, "select_rounds": 1, "candidates": 2, "select_width": 2, "select_images": 20,
                "select_epochs": 1}, "m.pt", 1, "select_reflections", 1),
]


@pytest.mark.parametrize("name, params, dies_after, epochs_done, prepare, resumed_at", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_an_interrupted_attack_resumes_to_the_model_of_an_uninterrupted_run(
        digits, tmp_path, kill_after, monkeypatch, name, params, dies_after, epochs_done, prepare, resumed_at):
    torch.set_num_threads(1)
    rate = 0.8 if name in ("clb", "refool") else 0.1
    settings = TrainSettings(epochs=2, batch_size=64, lr=0.05)

    def run(ckpt):
        attack = get_attack(make_spec(name, target=1, rate=rate, params=params))
        torch.manual_seed(0)
        model = build_model("mnist-cnn", digits.shape, 10)
        log = attack.train(model, digits, settings if ckpt is None else
                           TrainSettings(**settings.kwargs(checkpoint=str(ckpt))))
        return attack, model, log

    whole_attack, whole, whole_log = run(None)
    ckpt = tmp_path / "m.pt"
    kill_after(dies_after, epochs_done)
    with pytest.raises(Killed):
        run(ckpt)
    cls = type(whole_attack)
    real, calls = getattr(cls, prepare), []
    monkeypatch.setattr(cls, prepare, lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    attack, resumed, log = run(ckpt)
    assert bool(calls) == (dies_after != "m.pt")  # kept preparations are not made again
    assert attack.params == whole_attack.params  # the same trigger (pattern, generator, reflections)
    assert log["loss"] == whole_log["loss"] and log["n_poisoned"] == whole_log["n_poisoned"]
    assert log["resumed_at"] == resumed_at and whole_log["resumed_at"] == 0
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert list(tmp_path.iterdir())  # the caller discards the checkpoint and its stages when the model is kept
    resume.discard(ckpt)
    assert not list(tmp_path.iterdir())


def test_audit_attack_resume_continues_the_same_command_and_only_that(digits, tmp_path, kill_after):
    data, out = tmp_path / "d.npz", tmp_path / "m.onnx"
    np.savez(data, x=np.rint(digits.x * 255).astype(np.uint8), y=digits.y)
    args = ["attack", "badnets", "--data", str(data), "--epochs", "2", "--batch-size", "64", "--clean-holdout", "0",
            "--out", str(out), "--resume"]
    runner = CliRunner()
    kill_after("m.onnx.ckpt", 1, KeyboardInterrupt)  # Ctrl-C after the first epoch
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "interrupted" in res.output
    assert not out.exists() and (tmp_path / "m.onnx.ckpt").is_file()
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and "(resumed after epoch 1)" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]  # checkpoint and stages gone
    kill_after("m.onnx.ckpt", 1, KeyboardInterrupt)
    assert runner.invoke(main, args).exit_code == 2
    res = runner.invoke(main, [*args, "--lr", "0.02"])  # other arguments: that checkpoint is not theirs
    assert res.exit_code == 0 and "resumed" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]
    kill_after("m.onnx.ckpt", 1, KeyboardInterrupt)
    assert runner.invoke(main, args).exit_code == 2
    y = digits.y.copy()
    y[:10] = (y[:10] + 1) % 10  # the same command on other data under the same name: not its training
    np.savez(data, x=np.rint(digits.x * 255).astype(np.uint8), y=y)
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and "resumed" not in res.output


def test_a_stage_made_for_another_training_is_refused_with_one_line(digits, tmp_path):
    ckpt = str(tmp_path / "m.pt")
    resume.stage(ckpt, "clb-poison", lambda: {"idx": np.array([0, 1]), "x": np.zeros((2, 1, 28, 28), np.float32),
                                              "surrogate": None, "seconds": 0.0})
    resume.stage(ckpt, "trojan", lambda: {"model": {}, "trigger": [[[0.5] * 3] * 3], "info": {"neurons": [0]},
                                          "clean_log": {}, "seconds": 0.0})
    for name, message in (("clb", r"clb-poison stage of .*m\.pt was made for other training images"),
                          ("trojannn", r"trojan stage of .*m\.pt does not fit this model: ")):
        with pytest.raises(DataError, match=message):
            get_attack(make_spec(name, target=1, rate=0.8)).train(build_model("mnist-cnn", digits.shape, 10), digits,
                                                                   TrainSettings(epochs=1, checkpoint=ckpt))
