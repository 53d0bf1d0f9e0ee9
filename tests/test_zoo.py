"""The zoo: config expansion and its errors, a real (tiny) build, resumed after an interruption."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from backdoor_audit.cli import main
from backdoor_audit.data import demo_sample_path
from backdoor_audit.data.loading import data_digest, load_images
from backdoor_audit.errors import SpecError
from backdoor_audit.zoo import build_zoo, load_config, read_manifest
from backdoor_audit.zoo import build as build_module
from backdoor_audit.zoo.build import _changed, select, status

from conftest import Killed


CONFIG = """
[[set]]
name = "tiny"
data = "tiny.npz"
arch = "mnist-cnn"
clean_models = 2
clean_holdout = 20
train = {{ epochs = 1, lr = 0.05 }}
{extra}
[[set.attack]]
attack = "badnets"
modes = ["all-to-one", "all-to-all"]
targets = [0, 3]
train = {{ batch_size = 64 }}

[[set.attack]]
attack = "sig"
name = "sig-strong"
rate = 0.8
params = {{ delta = 60 }}
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    train = load_images(demo_sample_path(), split="train").subset(slice(0, 400))
    test = load_images(demo_sample_path(), split="test").subset(slice(0, 100))
    u8 = lambda x: np.rint(x * 255).astype(np.uint8)  # noqa: E731
    np.savez(d / "tiny.npz", x_train=u8(train.x), y_train=train.y, x_test=u8(test.x), y_test=test.y)
    return d


def _write(d, extra="", text=CONFIG):
    path = d / "zoo.toml"
    path.write_text(text.format(extra=extra))
    return path


def test_config_expands_modes_targets_seeds_and_overrides(tiny_data):
    entries = load_config(_write(tiny_data))
    ids = [e.id for e in entries]
    assert ids == ["tiny/clean-s0", "tiny/clean-s1", "tiny/badnets-t0-s0", "tiny/badnets-t3-s0",
                   "tiny/badnets-a2a-s0", "tiny/sig-strong-t0-s0"]
    by_id = {e.id: e for e in entries}
    assert by_id["tiny/clean-s1"].train == {"epochs": 1, "lr": 0.05, "seed": 1}
    assert by_id["tiny/clean-s1"].attack is None
    assert by_id["tiny/badnets-a2a-s0"].target is None and by_id["tiny/badnets-t3-s0"].target == 3
    assert by_id["tiny/badnets-t0-s0"].train["batch_size"] == 64
    assert by_id["tiny/sig-strong-t0-s0"].params == {"delta": 60} and by_id["tiny/sig-strong-t0-s0"].rate == 0.8
    assert by_id["tiny/clean-s0"].data == str(tiny_data / "tiny.npz")  # relative to the config file
    assert [e.id for e in select(entries, ["tiny/badnets-*"])] == ids[2:5]
    with pytest.raises(SpecError, match="no zoo model matches"):
        select(entries, ["cifar/*"])


def test_config_resolves_file_params_next_to_it_and_they_do_not_make_a_model_stale(tiny_data):
    text = CONFIG + """
[[set.attack]]
attack = "refool"
rate = 0.8
params = {{ source = "tiny.npz", n_reflections = 4 }}

[[set.attack]]
attack = "blend"
params = {{ pattern = "random" }}
"""
    by_id = {e.id: e for e in load_config(_write(tiny_data, text=text))}
    refool = by_id["tiny/refool-t0-s0"]
    assert refool.params == {"source": str(tiny_data / "tiny.npz"), "n_reflections": 4}
    assert by_id["tiny/blend-t0-s0"].params == {"pattern": "random"}  # a keyword, not a file
    row = {"arch": refool.arch, "attack": "refool", "mode": refool.mode, "target": refool.target,
           "rate": refool.rate, "train": dict(refool.train),
           "spec": {"params": {"source": "/elsewhere/tiny.npz", "n_reflections": 4}}}
    assert not _changed(refool, row)  # another checkout's absolute path
    row["spec"]["params"]["source"] = "/elsewhere/other.npz"
    assert _changed(refool, row)
    del row["spec"]["params"]["source"]  # built without a source
    assert _changed(refool, row)


def test_config_clean_seeds_name_the_clean_models_instead_of_a_count(tiny_data):
    text = CONFIG.replace("clean_models = 2", "clean_seeds = [3, 7]")
    ids = [e.id for e in load_config(_write(tiny_data, text=text)) if e.attack is None]
    assert ids == ["tiny/clean-s3", "tiny/clean-s7"]
    with pytest.raises(SpecError, match="clean_models .* or clean_seeds, not both"):
        load_config(_write(tiny_data, "clean_seeds = [1]"))


@pytest.mark.parametrize("extra, message", [
    ("colour = 1", "unknown key\\(s\\) colour"),
    ("exporter = 'tf'", "exporter must be dynamo or legacy"),
    ("[set.train]\nepochs = 1\nlearning_rate = 2", "unknown training setting\\(s\\) learning_rate"),
])
def test_config_errors_name_file_set_and_key(tiny_data, extra, message):
    text = CONFIG.replace("train = {{ epochs = 1, lr = 0.05 }}\n", "") if "set.train" in extra else CONFIG
    with pytest.raises(SpecError, match=message) as info:
        load_config(_write(tiny_data, extra, text))
    assert "zoo.toml" in str(info.value) and "'tiny'" in str(info.value)


def test_config_errors_for_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[[set]\n")
    with pytest.raises(SpecError, match="not readable TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "twice.toml").write_text('[[set]]\nname="a"\ndata="d"\narch="mnist-cnn"\nclean_models=1\n' * 2)
    with pytest.raises(SpecError, match="a/clean-s0 appear twice"):
        load_config(tmp_path / "twice.toml")


def test_build_trains_measures_and_resumes(tiny_data, tmp_path):
    entries = select(load_config(_write(tiny_data)), ["tiny/clean-s0", "tiny/badnets-t0-s0", "tiny/sig-*"])
    events = []
    rows = build_zoo(entries, tmp_path, on_event=lambda kind, e, info: events.append((kind, e.id)))
    assert [r["id"] for r in rows] == [e.id for e in entries]
    assert [k for k, _ in events] == ["start", "done"] * 3
    clean, badnets, sig = rows
    assert clean["attack"] == "clean" and clean["asr"] is None and clean["spec"] is None and clean["n_poisoned"] == 0
    assert badnets["spec"]["params"]["size"] == 3 and badnets["n_train"] == 360
    assert 0.08 * 360 <= badnets["n_poisoned"] <= 0.1 * 360  # 10% of the non-target images
    assert sig["n_poisoned"] > 0 and sig["spec"]["params"]["delta"] == 60
    for r in rows:
        assert (tmp_path / r["file"]).is_file() and 0 <= r["acc"] <= 100 and r["provider"]
        assert r["acc"] == pytest.approx(r["acc_torch"], abs=0.5)  # onnxruntime agrees with torch
    assert (tmp_path / "tiny" / "clean.npz").is_file() and not list((tmp_path / ".ckpt").rglob("*.*"))
    assert [s for _, s in status(entries, tmp_path)] == ["built"] * 3
    events.clear()
    build_zoo(entries, tmp_path, on_event=lambda kind, e, info: events.append(kind))
    assert events == ["skip"] * 3
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 3
    changed = [dataclasses.replace(entries[0], train={**entries[0].train, "epochs": 2}), *entries[1:]]
    assert [s for _, s in status(changed, tmp_path)] == ["stale", "built", "built"]
    events.clear()
    rows = build_zoo(changed, tmp_path, on_event=lambda kind, e, info: events.append(kind))
    assert events == ["start", "done", "skip", "skip"] and rows[0]["train"]["epochs"] == 2
    assert [s for _, s in status(changed, tmp_path)] == ["built"] * 3
    events.clear()
    build_zoo(changed, tmp_path, rebuild=["tiny/sig*"], on_event=lambda kind, e, info: events.append(kind))
    assert events == ["skip", "skip", "start", "done"]
    ids = [json.loads(line)["id"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(e.id for e in entries)  # rebuilt models replace their line
    with open(tmp_path / "manifest.jsonl", "a") as fh:  # a torn last line (killed mid-write) is ignored
        fh.write('{"id": "tiny/x", "fi')
    assert set(read_manifest(tmp_path)) == {e.id for e in entries}


def test_cli_zoo_build_status_table_and_errors(tiny_data, tmp_path):
    config = _write(tiny_data)
    runner = CliRunner()
    res = runner.invoke(main, ["zoo", "build", str(config), "--out", str(tmp_path), "--only", "tiny/clean-s1"])
    assert res.exit_code == 0, res.output
    assert "tiny/clean-s1: ACC" in res.output and "1 of 1 models built" in res.output
    res = runner.invoke(main, ["zoo", "status", str(config), "--out", str(tmp_path)])
    assert "built    tiny/clean-s1" in res.output and "todo     tiny/clean-s0" in res.output
    res = runner.invoke(main, ["zoo", "table", "--out", str(tmp_path)])
    assert res.exit_code == 0 and "| tiny/clean-s1 | tiny.npz | mnist-cnn | clean | - |" in res.output
    fewer = tiny_data / "fewer.toml"  # the built model's entry taken out of the config: named, not deleted
    fewer.write_text(CONFIG.format(extra="").replace("clean_models = 2", "clean_models = 1"))
    res = runner.invoke(main, ["zoo", "status", str(fewer), "--out", str(tmp_path)])
    assert res.exit_code == 0 and "unlisted tiny/clean-s1" in res.output and "0 of 5 built; 1 unlisted" in res.output
    assert (tmp_path / "tiny" / "clean-s1.onnx").is_file()
    res = runner.invoke(main, ["zoo", "status", str(fewer), "--out", str(tmp_path), "--only", "tiny/clean-*"])
    assert "unlisted" not in res.output
    bad = tiny_data / "bad.toml"
    bad.write_text(CONFIG.format(extra="").replace('attack = "sig"', 'attack = "nope"'))
    res = runner.invoke(main, ["zoo", "build", str(bad), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown attack 'nope'" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "manifest.jsonl").exists()
    res = runner.invoke(main, ["zoo", "table", "--out", str(tmp_path / "empty")])
    assert res.exit_code == 2


def test_an_interrupted_build_resumes_and_a_changed_entry_starts_over(tiny_data, tmp_path, kill_after):
    (entry,) = select(load_config(_write(tiny_data)), ["tiny/clean-s0"])
    entry = dataclasses.replace(entry, train={**entry.train, "epochs": 2})
    kill_after("clean-s0.pt", 1)
    with pytest.raises(Killed):
        build_zoo([entry], tmp_path)
    assert [s for _, s in status([entry], tmp_path)] == ["partial"]
    changed = dataclasses.replace(entry, train={**entry.train, "lr": 0.02})
    assert [s for _, s in status([changed], tmp_path)] == ["todo"]  # that checkpoint is not its training
    events = []
    (row,) = build_zoo([entry], tmp_path, on_event=lambda kind, e, info: events.append((kind, info.get("resume"))))
    assert events[0] == ("start", True) and row["resumed_at"] == 1 and not list((tmp_path / ".ckpt").rglob("*.*"))
    kill_after("clean-s0.pt", 1)
    with pytest.raises(Killed):  # interrupted again, then built from another version of the entry
        build_zoo([entry], tmp_path, rebuild=["*"])
    (row,) = build_zoo([changed], tmp_path)
    assert "resumed_at" not in row and row["train"]["lr"] == 0.02 and not list((tmp_path / ".ckpt").rglob("*.*"))


def test_a_checkpoint_made_on_other_data_under_the_same_path_is_not_resumed(
        tiny_data, tmp_path, kill_after, monkeypatch):
    data = tmp_path / "d.npz"
    data.write_bytes((tiny_data / "tiny.npz").read_bytes())
    (entry,) = select(load_config(_write(tiny_data)), ["tiny/clean-s0"])
    entry = dataclasses.replace(entry, data=str(data), train={**entry.train, "epochs": 2})
    kill_after("clean-s0.pt", 1)
    with pytest.raises(Killed):
        build_zoo([entry], tmp_path / "z")
    assert [s for _, s in status([entry], tmp_path / "z")] == ["partial"]
    with np.load(data) as d:
        arrays = dict(d)
    arrays["y_train"][:10] = (arrays["y_train"][:10] + 1) % 10
    np.savez(data, **arrays)
    assert [s for _, s in status([entry], tmp_path / "z")] == ["todo"]
    hashed = []
    monkeypatch.setattr(build_module, "data_digest", lambda path: hashed.append(path) or data_digest(path))
    (row,) = build_zoo([entry], tmp_path / "z")
    assert "resumed_at" not in row and hashed == [str(data)]  # once per build, by status and claim together
