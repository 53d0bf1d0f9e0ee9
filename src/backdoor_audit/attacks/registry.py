"""Attack registry and the base class every attack implements.

An attack turns clean images into triggered ones (``apply``), builds a poisoned training set
(``poison``) and trains a model on it (``train``). Register one with ``@register_attack("name")``
on an :class:`Attack` subclass; import its module in ``attacks/__init__.py``.

Attacks that learn their trigger (TrojanNN, input-aware) or need a surrogate model (label-consistent)
override ``train``; whatever ``apply`` needs at test time must end up in ``self.params``, which
``run_attack`` records in the model's attack spec. Attacks that change the trained model without
changing its function (BN re-parameterisation) override ``finalize``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ..data.images import ImageSet
from ..errors import SpecError
from .spec import AttackSpec
from ..training.train import TrainSettings, train_classifier

_ATTACKS: dict[str, type["Attack"]] = {}


class Attack:
    """Base class. Subclasses set ``PARAMS`` (name -> (default, help)) and implement ``apply``.

    ``self.params`` holds the spec's params merged over the defaults; unknown params raise
    SpecError. Dirty-label attacks (the default) relabel the poisoned images to the target.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, tuple[Any, str]]] = {}
    #: params that name a file: a zoo config gives them relative to itself
    FILE_PARAMS: ClassVar[tuple[str, ...]] = ()
    dirty_label: ClassVar[bool] = True
    #: the model must be exported with its BatchNormalization nodes kept (the attack lives in them)
    needs_batchnorm: ClassVar[bool] = False
    #: one line for ``audit attack --list``
    summary: ClassVar[str] = ""

    def __init__(self, spec: AttackSpec) -> None:
        unknown = sorted(set(spec.params) - set(self.PARAMS))
        if unknown:
            known = ", ".join(self.PARAMS) or "none"
            raise SpecError(f"attack {spec.attack!r} has no parameter(s) {', '.join(unknown)}; known: {known}")
        self.spec = spec
        self.params: dict[str, Any] = {k: spec.params.get(k, default) for k, (default, _) in self.PARAMS.items()}

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise SpecError if the trigger cannot be applied to images of shape (C, H, W)."""

    def batch(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a float32 NCHW batch; SpecError naming the attack for anything else."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise SpecError(f"{self.spec.attack} expects NCHW images, got an array of shape {tuple(x.shape)}")
        return x

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return triggered copies of float32 NCHW images in [0, 1] (deterministic given the spec)."""
        raise NotImplementedError

    def eligible(self, y: np.ndarray) -> np.ndarray:
        """Which training images may be poisoned: non-target ones (all-to-one), all (all-to-all),
        or, for clean-label attacks, the target class's own images."""
        if not self.dirty_label:
            if self.spec.mode != "all-to-one":
                raise SpecError(f"{self.spec.attack} is a clean-label attack and needs mode all-to-one")
            return np.asarray(y) == self.spec.target
        return self.spec.asr_mask(y)

    def poison_indices(self, y: np.ndarray) -> np.ndarray:
        """Sorted positions of the ``round(rate * n_eligible)`` seeded-random images to poison."""
        eligible = np.flatnonzero(self.eligible(y))
        n_poison = int(round(self.spec.rate * len(eligible)))
        rng = np.random.default_rng(self.spec.seed)
        return np.sort(rng.choice(eligible, size=n_poison, replace=False)) if n_poison else eligible[:0]

    def poison(self, images: ImageSet) -> tuple[ImageSet, np.ndarray]:
        """Poison ``round(rate * n_eligible)`` seeded-random eligible images; return (set, indices).

        The returned set is a copy; poisoned images carry the trigger and, for dirty-label
        attacks, the target label. Indices are sorted positions in ``images``.
        """
        self.check_shape(images.shape)
        idx = self.poison_indices(images.y)
        x = images.x.copy()
        y = images.y.copy()
        if len(idx):
            x[idx] = self.apply(x[idx])
            if self.dirty_label:
                y[idx] = self.spec.target_labels(y[idx])
        return ImageSet(x=x, y=y, classes=images.classes, source=images.source), idx

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """Poison the attacker's clean training set and train ``model`` on it, in place.

        Returns the training log (see ``train_classifier``) with ``n_poisoned`` added.
        """
        poisoned, idx = self.poison(clean)
        log = train_classifier(model, poisoned, **settings.kwargs())
        log["n_poisoned"] = int(len(idx))
        return log

    def finalize(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> nn.Module:
        """Last change to the trained model before export (default: none)."""
        return model


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator registering an :class:`Attack` subclass under ``name``."""

    def decorate(cls: type[Attack]) -> type[Attack]:
        if name in _ATTACKS and _ATTACKS[name] is not cls:
            raise SpecError(f"attack name {name!r} is registered twice")
        cls.name = name
        _ATTACKS[name] = cls
        return cls

    return decorate


def get_attack(spec: AttackSpec) -> Attack:
    """Instantiate the attack named by ``spec`` (validating its params)."""
    if spec.attack not in _ATTACKS:
        raise SpecError(f"unknown attack {spec.attack!r}; known attacks: {', '.join(known_attacks())}")
    return _ATTACKS[spec.attack](spec)


def file_params(name: str) -> tuple[str, ...]:
    """The params of attack ``name`` that name a file (none for an unknown name)."""
    cls = _ATTACKS.get(name)
    return cls.FILE_PARAMS if cls is not None else ()


def known_attacks() -> list[str]:
    """Names of the registered attacks, sorted."""
    return sorted(_ATTACKS)


def list_attacks() -> list[tuple[str, str]]:
    """(name, description) for every registered attack: its summary and kind on the first line,
    then one indented line per parameter with its default."""
    out = []
    for name in sorted(_ATTACKS):
        cls = _ATTACKS[name]
        kind = "dirty-label" if cls.dirty_label else "clean-label"
        lines = [f"{cls.summary} [{kind}]" if cls.summary else f"[{kind}]"]
        width = max((len(f"{k}={d}") for k, (d, _) in cls.PARAMS.items()), default=0)
        lines += [f"    {f'{k}={d}':<{width}}  {help_}" for k, (d, help_) in cls.PARAMS.items()]
        out.append((name, "\n".join(lines)))
    return out
