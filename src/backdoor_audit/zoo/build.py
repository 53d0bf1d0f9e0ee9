"""Build a zoo: train each entry that is not yet in the manifest, export it, measure it under
onnxruntime, record its manifest line (one per model). Interrupted builds resume: finished models are skipped and
the model in training continues from its last finished epoch (a checkpoint under ``.ckpt/``, with
its attack's prepared stages beside it, see ``training.resume``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..training import resume
from ..attacks.registry import file_params
from ..attacks.run import run_attack
from ..attacks.spec import AttackSpec
from ..evaluation.evaluate import evaluate
from ..data.images import ImageSet
from ..data.loading import data_digest, list_splits, load_images
from ..errors import DataError, SpecError
from ..graph.load import load_model
from ..util import atomic_write_bytes, sha256_file
from ..inputs import model_preprocess
from .config import ZooEntry

MANIFEST = "manifest.jsonl"
Event = Callable[[str, ZooEntry, dict[str, Any]], None]


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Manifest lines of a zoo folder by model id (the last line wins; a torn last line is ignored)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
    return rows


def record(out_dir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Put ``row`` in the manifest in place of any earlier line for its id, atomically: a rebuilt
    model keeps one line, and an interrupted write leaves the old manifest whole."""
    rows = read_manifest(out_dir)
    rows.pop(row["id"], None)
    rows[row["id"]] = row
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values())
    atomic_write_bytes(Path(out_dir) / MANIFEST, text.encode("utf-8"))


def select(entries: list[ZooEntry], only: list[str] | None) -> list[ZooEntry]:
    """Entries whose id matches any of the glob patterns (all when ``only`` is empty)."""
    if not only:
        return list(entries)
    chosen = [e for e in entries if any(fnmatch.fnmatch(e.id, pat) for pat in only)]
    if not chosen:
        raise SpecError(f"no zoo model matches {', '.join(only)}")
    return chosen


def check_entries(entries: list[ZooEntry]) -> None:
    """Fail before any training when an entry names an unknown attack or architecture."""
    from ..attacks.registry import known_attacks
    from ..models import list_models

    for e in entries:
        if e.arch not in list_models():
            raise SpecError(f"zoo model {e.id}: unknown architecture {e.arch!r}; known: {', '.join(list_models())}")
        if e.attack is not None and e.attack not in known_attacks():
            raise SpecError(f"zoo model {e.id}: unknown attack {e.attack!r}; known: {', '.join(known_attacks())}")


def status(
    entries: list[ZooEntry], out_dir: str | os.PathLike, digests: dict[str, str] | None = None
) -> list[tuple[ZooEntry, str]]:
    """(entry, "built" | "stale" | "partial" | "todo") for each entry.

    "stale": built, but the config has changed what the model should be (architecture, attack,
    mode, target, rate, params or training settings) since; a build trains it again.
    "partial": its training was interrupted, for the entry as the config gives it now and on the
    same data (by content; a checkpoint left by another version of the entry, or made on other
    data, does not count and is discarded by a build). ``digests``: data digests by path, filled
    as needed (a build passes its own, so that no dataset is hashed twice).
    """
    out, rows = Path(out_dir), read_manifest(out_dir)
    digests = {} if digests is None else digests
    result = []
    for e in entries:
        if e.id in rows and (out / rows[e.id]["file"]).is_file():
            result.append((e, "stale" if _changed(e, rows[e.id]) else "built"))
        elif (owner := resume.peek(_checkpoint(out, e), resume.OWNER)) is not None and owner == _owner(e, digests):
            result.append((e, "partial"))
        else:
            result.append((e, "todo"))
    return result


def unlisted(entries: list[ZooEntry], out_dir: str | os.PathLike) -> list[str]:
    """Ids of the models in the manifest that ``entries`` no longer describe (an entry taken out of
    the config): left in place, never deleted by a build, so that status can name them."""
    listed = {e.id for e in entries}
    return [i for i in read_manifest(out_dir) if i not in listed]


def _owner(entry: ZooEntry, digests: dict[str, str]) -> dict[str, Any]:
    """Whose training a checkpoint is: the entry as the config gives it, on its data by content
    (a dataset replaced under the same path does not resume; ``digests`` caches one per path)."""
    if entry.data not in digests:
        digests[entry.data] = data_digest(entry.data) if Path(entry.data).exists() else ""
    return {**asdict(entry), "data_sha256": digests[entry.data]}


def _checkpoint(out: Path, entry: ZooEntry) -> Path:
    """Where the training of ``entry`` keeps its checkpoint (and, beside it, its attack's stages)."""
    return out / ".ckpt" / f"{entry.id}.pt"


def _changed(entry: ZooEntry, row: dict[str, Any]) -> bool:
    asked = {"arch": entry.arch, "attack": entry.attack or "clean", "mode": entry.mode, "target": entry.target,
             "rate": entry.rate, "train": dict(entry.train)}
    if any(row.get(k) != v for k, v in asked.items()):
        return True
    given = (row.get("spec") or {}).get("params", {})
    files = file_params(entry.attack or "")  # absolute paths differ between checkouts: compare file names

    def same(key: str, value: Any) -> bool:
        if key in files and isinstance(value, str) and isinstance(given.get(key), str):
            return Path(given[key]).name == Path(value).name
        return given.get(key) == value

    return not all(same(k, v) for k, v in entry.params.items())


def build_zoo(
    entries: list[ZooEntry],
    out_dir: str | os.PathLike,
    *,
    device: str | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
    on_event: Event | None = None,
    rebuild: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Train, export and measure every entry not yet built; return the manifest rows of ``entries``.

    ``rebuild``: glob patterns of ids to train again even when built (after a change to an
    attack's code, which the config cannot show)."""
    check_entries(entries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = _DataCache(cache_dir)
    emit = on_event or (lambda *_: None)
    for entry, state in status(entries, out, sets.digests):
        if state == "built" and any(fnmatch.fnmatch(entry.id, pat) for pat in rebuild or []):
            state = "stale"
        if state == "built":
            emit("skip", entry, {})
            continue
        emit("start", entry, {"resume": state == "partial", "stale": state == "stale"})
        if state != "partial":  # stale or rebuilt: start over even from a checkpoint of this entry
            resume.discard(_checkpoint(out, entry))
        row = _build_one(entry, out, sets, device, progress)
        record(out, row)
        emit("done", entry, row)
    rows = read_manifest(out)
    return [rows[e.id] for e in entries if e.id in rows]


def _build_one(entry: ZooEntry, out: Path, sets: "_DataCache", device: str | None, progress: bool) -> dict[str, Any]:
    train_set, test_set = sets.get(entry.data)
    spec = None
    if entry.attack is not None:
        seed = int(entry.train.get("seed", 0))
        spec = AttackSpec(entry.attack, entry.mode or "all-to-one", entry.target, train_set.num_classes,
                          dict(entry.params), seed, entry.rate if entry.rate is not None else 0.1)
    model_path = out / f"{entry.id}.onnx"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    clean_path = out / entry.set / "clean.npz"
    ckpt = _checkpoint(out, entry)
    resume.claim(ckpt, _owner(entry, sets.digests))
    settings = entry.settings(device=device, progress=progress, checkpoint=str(ckpt))
    t0 = time.perf_counter()
    summary = run_attack(entry.arch, train_set, spec, model_path, settings, test_data=test_set,
                         clean_holdout=entry.clean_holdout, clean_out=None if clean_path.is_file() else clean_path,
                         dynamo=entry.dynamo, keep_batchnorm=entry.keep_batchnorm)
    wall = time.perf_counter() - t0
    resume.discard(ckpt)
    spec = summary["spec"]
    acc = asr = None
    provider = None
    if test_set is not None:
        res = evaluate(model_path, test_set, model_preprocess(load_model(model_path), test_set), spec)
        acc, asr, provider = res.acc, res.asr, res.provider
    return {
        "id": entry.id,
        "set": entry.set,
        "file": f"{entry.id}.onnx",
        "sha256": sha256_file(model_path),
        "bytes": model_path.stat().st_size,
        "dataset": Path(entry.data).name,
        "arch": entry.arch,
        "attack": entry.attack or "clean",
        "mode": entry.mode,
        "target": entry.target,
        "rate": entry.rate,
        "spec": None if spec is None else json.loads(spec.to_json()),
        "train": dict(entry.train),
        "n_train": summary["n_train"],
        "n_poisoned": summary["n_poisoned"],
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "acc": None if acc is None else round(acc, 2),
        "asr": None if asr is None else round(asr, 2),
        "acc_torch": None if summary["acc"] is None else round(summary["acc"], 2),
        "n_test": summary["n_test"],
        "provider": provider,
        "device": summary["device"],
        "tool": f"backdoor-audit {__version__}",
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"attack_notes": summary["attack_notes"]} if summary["attack_notes"] else {}),
        **({"resumed_at": summary["resumed_at"]} if summary["resumed_at"] else {}),
    }


class _DataCache:
    """Each dataset is decoded once per build (train and test splits)."""

    def __init__(self, cache_dir: str | os.PathLike | None) -> None:
        self.cache_dir = cache_dir
        self.sets: dict[str, tuple[ImageSet, ImageSet | None]] = {}
        self.digests: dict[str, str] = {}  # data_digest by path, for the checkpoints' owners

    def get(self, data: str) -> tuple[ImageSet, ImageSet | None]:
        if data not in self.sets:
            if not Path(data).exists():
                raise DataError(f"zoo data {data} does not exist")
            splits = list_splits(data)
            train = load_images(data, split="train" if "train" in splits else None, cache_dir=self.cache_dir)
            test = load_images(data, split="test", cache_dir=self.cache_dir) if "test" in splits else None
            self.sets[data] = (train, test)
        return self.sets[data]
