"""Resumable training: per-epoch checkpoints, and an attack's prepared state kept beside them.

A *checkpoint* holds what a training loop needs to continue after its last finished epoch as if it
had never stopped: the state dicts of its parts (models, optimisers, schedules), its random
generators, the time spent so far and its log. ``train_classifier`` and the input-aware attack's
joint training keep one.

Attacks that compute something before their main training (Refool's reflection selection, CLB's
surrogate and hardened images, TrojanNN's clean model and trigger) keep the result as a *stage*
beside the checkpoint, in ``<checkpoint>.<name>``: a resumed run loads it instead of computing it
again, so it poisons with what the interrupted run computed, and a long preparation is not paid
twice. A nested training (CLB's surrogate, TrojanNN's clean model) keeps its own checkpoint at
``aside(checkpoint, name)``. ``claim`` ties a checkpoint to the training it is for (one left by
another is discarded), and ``discard`` removes a checkpoint with all its stages once the model is
built.

Files are written atomically with ``torch.save`` and read back with ``torch.load``: they hold
tensors, numpy arrays and plain Python values, and they are this tool's own files, never input.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..errors import DataError
from ..util import atomic_output, first_line

T = TypeVar("T")

#: the stage that records whose training a checkpoint is (see ``claim``)
OWNER = "owner"
#: log keys that the training call sets itself: not restored from a checkpoint
_CALL_KEYS = ("epochs", "steps", "resumed_at")


def save_checkpoint(path: str | os.PathLike, epochs_done: int, seconds: float, parts: dict[str, Any],
                    rng: np.random.Generator, gen: torch.Generator, log: dict[str, Any]) -> None:
    """Save ``parts`` (name -> object with ``state_dict``, or None), the generators (and torch's
    global one) and ``log`` after ``epochs_done`` epochs and ``seconds`` of training."""
    state = {
        "epochs_done": epochs_done,
        "seconds": seconds,
        **{name: None if part is None else part.state_dict() for name, part in parts.items()},
        "numpy_rng": rng.bit_generator.state,
        "torch_gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "log": {k: v for k, v in log.items() if k not in _CALL_KEYS},
    }
    _write(Path(path), state)


def load_checkpoint(path: str | os.PathLike | None, parts: dict[str, Any], rng: np.random.Generator,
                    gen: torch.Generator, log: dict[str, Any]) -> tuple[int, float] | None:
    """Restore what ``save_checkpoint`` saved into ``parts``, the generators and ``log`` (which gets
    ``resumed_at``); return (epochs done, seconds spent), or None when there is no checkpoint
    (``path`` None or no file yet). DataError for a damaged or foreign file."""
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    try:
        state = _read(path)
        for name, part in parts.items():
            if part is not None and state[name] is not None:
                part.load_state_dict(state[name])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        done, seconds, saved_log = int(state["epochs_done"]), float(state["seconds"]), dict(state["log"])
    except Exception as exc:  # torch, numpy and our own lookups raise many types for a foreign file
        raise DataError(f"cannot resume from checkpoint {path}: {first_line(exc)}") from None
    log.update(saved_log, resumed_at=done)
    return done, seconds


def aside(checkpoint: str | os.PathLike | None, name: str) -> str | None:
    """The file of stage ``name`` of ``checkpoint`` (None without a checkpoint)."""
    return None if checkpoint is None else f"{os.fspath(checkpoint)}.{name}"


def stage(checkpoint: str | os.PathLike | None, name: str, compute: Callable[[], T]) -> tuple[T, bool]:
    """``compute()``, kept as stage ``name`` of ``checkpoint``: the first run saves its result, a
    resumed one loads it instead of computing again. Returns (value, whether it was loaded).
    Without a checkpoint it only computes. DataError for a damaged stage file."""
    path = aside(checkpoint, name)
    if path is None:
        return compute(), False
    if Path(path).is_file():
        try:
            return _read(Path(path))["value"], True
        except Exception as exc:
            raise DataError(f"cannot resume the {name} stage from {path}: {first_line(exc)}") from None
    value = compute()
    _write(Path(path), {"value": value})
    return value, False


def peek(checkpoint: str | os.PathLike, name: str) -> Any:
    """The value kept as stage ``name`` of ``checkpoint``; None when there is none or it is damaged."""
    path = Path(aside(checkpoint, name))
    if not path.is_file():
        return None
    try:
        return _read(path)["value"]
    except Exception:
        return None


def claim(checkpoint: str | os.PathLike, owner: Any) -> bool:
    """Make ``checkpoint`` the training of ``owner`` (a value equal for the same training: a zoo
    entry, a command's arguments). A checkpoint left by another owner is discarded with its stages;
    one of ``owner``'s own is kept. Returns whether it was kept (a training to resume)."""
    if peek(checkpoint, OWNER) == owner:
        return True
    discard(checkpoint)
    stage(checkpoint, OWNER, lambda: owner)
    return False


def discard(checkpoint: str | os.PathLike) -> None:
    """Remove ``checkpoint`` and its stages (with their own nested checkpoints and stages)."""
    path = Path(checkpoint)
    for p in [path, *_stages(path)]:
        p.unlink(missing_ok=True)


def _stages(path: Path) -> list[Path]:
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.glob(f"{glob.escape(path.name)}.*") if p.is_file()]


def _write(path: Path, state: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _read(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a saved state")
    return state

