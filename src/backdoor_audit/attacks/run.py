"""Train a backdoored model end to end: split, poison, train, export to ONNX with its metadata.

The ANP protocol: the attacker trains on a seeded 90% share of the training split; the rest is
the defender's pool. The split is recorded in the model's ``backdoor_audit.training`` metadata,
so ``defender_split(n_total, n_clean, split_seed, attacker_share)`` gives the defender images the
model never saw.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import torch

from .. import __version__
from ..data.images import ImageSet
from ..data.loading import data_digest, list_splits, load_images
from ..data.preprocess import PREPROCESS_KEY, Preprocess
from ..data.splits import defender_split
from ..errors import SpecError
from ..export.from_torch import export_torch_model
from ..models import build_model
from ..training import resume
from .registry import Attack, get_attack
from .spec import ATTACK_SPEC_KEY, AttackSpec
from ..training.train import TrainSettings, predict, train_classifier

TRAINING_KEY = "backdoor_audit.training"
CLEAN = "clean"  # the name that trains a model without an attack


def run_attack(
    arch: str,
    data: str | os.PathLike | ImageSet,
    spec: AttackSpec | None,
    out_path: str | os.PathLike,
    settings: TrainSettings,
    *,
    test_data: str | os.PathLike | ImageSet | None = None,
    clean_holdout: int = 0,
    clean_out: str | os.PathLike | None = None,
    split_seed: int = 0,
    attacker_share: float = 0.9,
    dynamo: bool = True,
    keep_batchnorm: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``arch`` on the attacker's share of ``data`` (poisoned by ``spec``) and export it to ``out_path``.

    ``spec`` None trains a clean model (no attack spec in its metadata). ``data`` is a path (its
    "train" split is used when it has splits) or an ImageSet; the test split (or ``test_data``)
    gives the in-torch ACC/ASR of the summary. ``clean_holdout`` is the number of defender images
    drawn from the pool the attacker never saw; ``clean_out`` writes them to an .npz (keys x uint8
    NCHW, y). ``settings.seed`` seeds weight init and training, ``split_seed`` the
    attacker/defender split, ``spec.seed`` the poisoned images. Returns a summary dict (paths,
    counts, acc/asr in %, seconds, defender indices).
    """
    train_set, test_set = _load_sets(data, test_data, cache_dir)
    attack = None
    if spec is not None:
        if spec.num_classes != train_set.num_classes:
            raise SpecError(
                f"attack spec says {spec.num_classes} classes but data {train_set.source} has {train_set.num_classes}"
            )
        attack = get_attack(spec)
        attack.check_shape(train_set.shape)
        keep_batchnorm = keep_batchnorm or attack.needs_batchnorm
    attacker_idx, defender_idx = defender_split(len(train_set), clean_holdout, split_seed, attacker_share)
    attacker_set = train_set.subset(attacker_idx)

    torch.manual_seed(settings.seed)
    model = build_model(arch, train_set.shape, train_set.num_classes)
    if attack is None:
        log = train_classifier(model, attacker_set, **settings.kwargs())
        log["n_poisoned"] = 0
    else:
        log = attack.train(model, attacker_set, settings)
        model = attack.finalize(model, attacker_set, settings)
        spec = dataclasses.replace(spec, params=dict(attack.params))  # resolved defaults and learnt triggers
    acc, asr = (None, None)
    if test_set is not None:
        acc, asr = torch_acc_asr(model, test_set, attack)

    training = {
        "tool": f"backdoor-audit {__version__}",
        "arch": arch,
        "dataset": train_set.source,
        "in_shape": list(train_set.shape),
        "n_total": len(train_set),
        "n_train": len(attacker_idx),
        "n_poisoned": log["n_poisoned"],
        "defender": {"split_seed": split_seed, "attacker_share": attacker_share, "n_clean": clean_holdout},
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "optimizer": {"name": "sgd", "lr": settings.lr, "momentum": settings.momentum,
                      "weight_decay": settings.weight_decay},
        "schedule": settings.schedule,
        "augment": settings.augment,
        "seed": settings.seed,
        "seconds": round(log["seconds"], 1),
        "final_loss": round(log["loss"][-1], 5),
        "torch": torch.__version__,
    }
    if log.get("resumed_at"):  # an interrupted training, continued from this epoch's checkpoint
        training["resumed_at"] = int(log["resumed_at"])
    notes = log.get("attack_notes") or {}  # what an attack did besides training, e.g. Refool's selection
    if notes:
        training["attack_notes"] = notes
    metadata = {
        PREPROCESS_KEY: Preprocess(layout="NCHW").to_json(),
        TRAINING_KEY: json.dumps(training, sort_keys=True),
    }
    if spec is not None:
        metadata[ATTACK_SPEC_KEY] = spec.to_json()
    t0 = time.perf_counter()
    path = export_torch_model(model, train_set.shape, out_path, metadata, dynamo=dynamo, keep_batchnorm=keep_batchnorm)
    export_seconds = time.perf_counter() - t0
    if clean_out is not None:
        train_set.subset(defender_idx).save(clean_out)
    return {
        "model": str(path),
        "arch": arch,
        "attack": None if spec is None else spec.attack,
        "spec": spec,
        "n_train": len(attacker_idx),
        "n_poisoned": int(log["n_poisoned"]),
        "n_clean": int(len(defender_idx)),
        "defender_idx": defender_idx,
        "clean_out": None if clean_out is None else str(clean_out),
        "acc": acc,
        "asr": asr,
        "n_test": None if test_set is None else len(test_set),
        "train_seconds": log["seconds"],
        "resumed_at": int(log.get("resumed_at") or 0),
        "export_seconds": export_seconds,
        "loss": log["loss"],
        "device": log["device"],
        "attack_notes": notes,
    }


def torch_acc_asr(model: torch.nn.Module, images: ImageSet, attack: Attack | None) -> tuple[float, float | None]:
    """Clean accuracy and attack success rate (both in %, ASR None without an attack) on ``images``."""
    acc = float((predict(model, images.x).argmax(1) == images.y).mean() * 100.0)
    if attack is None:
        return acc, None
    spec = attack.spec
    mask = spec.asr_mask(images.y)
    if not mask.any():
        return acc, None
    triggered = predict(model, attack.apply(images.x[mask])).argmax(1)
    asr = float((triggered == spec.target_labels(images.y[mask])).mean() * 100.0)
    return acc, asr


def _load_sets(
    data: str | os.PathLike | ImageSet, test_data: str | os.PathLike | ImageSet | None, cache_dir: Any
) -> tuple[ImageSet, ImageSet | None]:
    splits = [] if isinstance(data, ImageSet) else list_splits(data)
    if isinstance(data, ImageSet):
        train_set = data
    else:
        train_set = load_images(data, split="train" if "train" in splits else None, cache_dir=cache_dir)
    if isinstance(test_data, ImageSet):
        return train_set, test_data
    if test_data is not None:
        test_splits = list_splits(test_data)
        split = "test" if "test" in test_splits else None
        return train_set, load_images(test_data, split=split, cache_dir=cache_dir)
    if "test" in splits:
        return train_set, load_images(data, split="test", cache_dir=cache_dir)
    return train_set, None


def run_named_attack(
    name: str,
    arch: str,
    data: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    mode: str = "all-to-one",
    target: int | None = 0,
    rate: float = 0.1,
    params: dict[str, Any] | None = None,
    attack_seed: int = 0,
    test_data: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build the spec from the data's class count and run ``run_attack`` (what `audit attack` does).

    ``name`` "clean" trains a model without an attack. ``options`` are ``run_attack``'s keyword
    options plus the fields of :class:`TrainSettings`. With ``checkpoint`` (a TrainSettings field)
    the run keeps its checkpoint there and resumes one left by an interrupted run of the same
    arguments on the same data (by content; one from other arguments or data is discarded); it is
    removed once the model is written.
    """
    from ..models import list_models

    if arch not in list_models():
        raise SpecError(f"unknown architecture {arch!r}; known: {', '.join(list_models())}")
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{k: options.pop(k) for k in list(options) if k in fields})
    train_set, test_set = _load_sets(data, test_data, cache_dir)
    spec = None
    if name != CLEAN:
        spec = AttackSpec(name, mode, None if mode == "all-to-all" else target, train_set.num_classes,
                          dict(params or {}), attack_seed, rate)
        get_attack(spec).check_shape(train_set.shape)
    if settings.checkpoint is not None:
        run = {"arch": arch, "data": data_digest(data), "spec": None if spec is None else spec.to_json(),
               "train": {k: v for k, v in dataclasses.asdict(settings).items()
                         if k not in ("device", "progress", "checkpoint")},
               **{k: v for k, v in options.items() if k != "clean_out"}}
        resume.claim(settings.checkpoint, run)
    summary = run_attack(arch, train_set, spec, out_path, settings, test_data=test_set, **options)
    if settings.checkpoint is not None:
        resume.discard(settings.checkpoint)
    return summary
