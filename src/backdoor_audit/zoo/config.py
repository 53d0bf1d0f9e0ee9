"""The zoo config: a TOML file of model sets, expanded into one entry per model to train.

```toml
[[set]]
name = "mnist"                           # models go to OUT/mnist/
data = "../../shared/data/mnist.npz"     # relative to this file (or absolute)
arch = "mnist-cnn"
clean_models = 3                         # clean models, training seeds 0, 1, 2
clean_seeds = [3, 4]                     # or: clean models of these training seeds
clean_holdout = 500                      # defender images kept out of training (written once per set)
train = { epochs = 10, lr = 0.01 }       # TrainSettings fields

[[set.attack]]
attack = "badnets"
modes = ["all-to-one", "all-to-all"]     # default ["all-to-one"]
targets = [0]                            # all-to-one targets (default [0])
seeds = [0]                              # training seeds (the attack seed follows it)
rate = 0.1
params = { patch = "checkerboard" }
train = { epochs = 12 }                  # overrides the set's settings for this attack
```
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..attacks.registry import file_params
from ..attacks.spec import MODES
from ..training.train import TrainSettings
from ..errors import SpecError

SET_KEYS = {"name", "data", "arch", "clean_models", "clean_seeds", "clean_holdout", "train", "attack", "exporter",
            "keep_batchnorm"}
ATTACK_KEYS = {"attack", "modes", "targets", "seeds", "rate", "params", "train", "arch", "name"}
TRAIN_FIELDS = {f.name for f in fields(TrainSettings)} - {"device", "progress", "checkpoint"}


@dataclass(frozen=True)
class ZooEntry:
    """One model of a zoo: where it goes, what data and architecture, which attack (None: clean)."""

    id: str  # "<set>/<name>", also the file name under the output folder (+ ".onnx")
    set: str
    data: str
    arch: str
    attack: str | None
    mode: str | None
    target: int | None
    rate: float | None
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    clean_holdout: int = 500
    dynamo: bool = True
    keep_batchnorm: bool = False

    def settings(self, **run: Any) -> TrainSettings:
        """The entry's training settings plus run options (device, progress, checkpoint)."""
        return TrainSettings(**self.train, **run)


def load_config(path: str | os.PathLike) -> list[ZooEntry]:
    """Read and expand a zoo config; SpecError naming the file and the bad key or value."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"zoo config {p} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"zoo config {p} is not readable TOML: {exc}") from None
    unknown = set(raw) - {"set"}
    if unknown:
        raise SpecError(f"zoo config {p}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                        "expected [[set]] tables")
    sets = raw.get("set", [])
    if not isinstance(sets, list) or not sets:
        raise SpecError(f"zoo config {p} defines no [[set]]")
    entries: list[ZooEntry] = []
    for i, s in enumerate(sets):
        entries += _expand_set(s, p, i)
    ids = [e.id for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SpecError(f"zoo config {p}: model id(s) {', '.join(dupes)} appear twice")
    return entries


def _expand_set(s: dict[str, Any], p: Path, i: int) -> list[ZooEntry]:
    where = f"zoo config {p}, set {s.get('name', i)!r}"
    _check_keys(s, SET_KEYS, where)
    for key in ("name", "data", "arch"):
        if not isinstance(s.get(key), str) or not s[key]:
            raise SpecError(f"{where}: '{key}' must be a non-empty string")
    data = s["data"] if os.path.isabs(s["data"]) else str((p.parent / s["data"]).resolve())
    base_train = _train(s.get("train", {}), where)
    exporter = s.get("exporter", "dynamo")
    if exporter not in ("dynamo", "legacy"):
        raise SpecError(f"{where}: exporter must be dynamo or legacy, got {exporter!r}")
    common = dict(set=s["name"], data=data, clean_holdout=_int(s.get("clean_holdout", 500), "clean_holdout", where),
                  dynamo=exporter == "dynamo", keep_batchnorm=bool(s.get("keep_batchnorm", False)))
    out = []
    if "clean_models" in s and "clean_seeds" in s:
        raise SpecError(f"{where}: give clean_models (seeds 0, 1, ...) or clean_seeds, not both")
    seeds = s.get("clean_seeds", range(_int(s.get("clean_models", 0), "clean_models", where)))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seeds):
        raise SpecError(f"{where}: clean_seeds must be a list of non-negative integers")
    for seed in seeds:
        out.append(ZooEntry(id=f"{s['name']}/clean-s{seed}", arch=s["arch"], attack=None, mode=None, target=None,
                            rate=None, train={**base_train, "seed": seed}, **common))
    for a in s.get("attack", []):
        awhere = f"{where}, attack {a.get('name', a.get('attack'))!r}"
        _check_keys(a, ATTACK_KEYS, awhere)
        if not isinstance(a.get("attack"), str):
            raise SpecError(f"{awhere}: 'attack' must name an attack")
        modes = a.get("modes", ["all-to-one"])
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise SpecError(f"{awhere}: mode(s) {', '.join(map(str, bad))} not one of {', '.join(MODES)}")
        train = {**base_train, **_train(a.get("train", {}), awhere)}
        params = _resolve_files(a["attack"], a.get("params", {}), p.parent, awhere)
        name = a.get("name", a["attack"])
        for mode in modes:
            targets = a.get("targets", [0]) if mode == "all-to-one" else [None]
            for target in targets:
                for seed in a.get("seeds", [0]):
                    suffix = "a2a" if mode == "all-to-all" else f"t{target}"
                    out.append(ZooEntry(
                        id=f"{s['name']}/{name}-{suffix}-s{seed}", arch=a.get("arch", s["arch"]), attack=a["attack"],
                        mode=mode, target=target, rate=float(a.get("rate", 0.1)), params=dict(params),
                        train={**train, "seed": int(seed)}, **common,
                    ))  # fmt: skip
    return out


def _resolve_files(attack: str, params: Any, base: Path, where: str) -> dict[str, Any]:
    """The attack's params, with those that name an existing file made absolute (relative to the
    config file, as the set's data)."""
    if not isinstance(params, dict):
        raise SpecError(f"{where}: 'params' must be a table")
    out = dict(params)
    for key in file_params(attack):
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and (base / value).exists():
            out[key] = str((base / value).resolve())
    return out


def _train(t: Any, where: str) -> dict[str, Any]:
    if not isinstance(t, dict):
        raise SpecError(f"{where}: 'train' must be a table of {', '.join(sorted(TRAIN_FIELDS))}")
    unknown = set(t) - TRAIN_FIELDS
    if unknown:
        raise SpecError(f"{where}: unknown training setting(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(TRAIN_FIELDS))}")
    return dict(t)


def _check_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def _int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{where}: '{name}' must be a non-negative integer, got {value!r}")
    return value
