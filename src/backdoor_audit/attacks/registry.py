"""Attack registry and the base class every attack implements.

An attack turns clean images into triggered ones (``apply``) and builds a poisoned training set
(``poison``). Register one with ``@register_attack("name")`` on an :class:`Attack` subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..data.images import ImageSet
from ..errors import SpecError
from .spec import AttackSpec

_ATTACKS: dict[str, type["Attack"]] = {}


class Attack:
    """Base class. Subclasses set ``PARAMS`` (name -> (default, help)) and implement ``apply``.

    ``self.params`` holds the spec's params merged over the defaults; unknown params raise
    SpecError. Dirty-label attacks (the default) relabel the poisoned images to the target.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, tuple[Any, str]]] = {}
    dirty_label: ClassVar[bool] = True

    def __init__(self, spec: AttackSpec) -> None:
        unknown = sorted(set(spec.params) - set(self.PARAMS))
        if unknown:
            known = ", ".join(self.PARAMS) or "none"
            raise SpecError(f"attack {spec.attack!r} has no parameter(s) {', '.join(unknown)}; known: {known}")
        self.spec = spec
        self.params: dict[str, Any] = {k: spec.params.get(k, default) for k, (default, _) in self.PARAMS.items()}

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise SpecError if the trigger cannot be applied to images of shape (C, H, W)."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return triggered copies of float32 NCHW images in [0, 1] (deterministic given the spec)."""
        raise NotImplementedError

    def poison(self, images: ImageSet, spec: AttackSpec | None = None) -> tuple[ImageSet, np.ndarray]:
        """Poison ``round(rate * n_eligible)`` seeded-random eligible images; return (set, indices).

        Eligible images are the non-target ones (all-to-one) or all (all-to-all). The returned
        set is a copy; poisoned images carry the trigger and, for dirty-label attacks, the
        target label. Indices are sorted positions in ``images``.
        """
        spec = spec or self.spec
        self.check_shape(images.shape)
        eligible = np.flatnonzero(spec.asr_mask(images.y))
        n_poison = int(round(spec.rate * len(eligible)))
        rng = np.random.default_rng(spec.seed)
        idx = np.sort(rng.choice(eligible, size=n_poison, replace=False)) if n_poison else eligible[:0]
        x = images.x.copy()
        y = images.y.copy()
        if n_poison:
            x[idx] = self.apply(x[idx])
            if self.dirty_label:
                y[idx] = spec.target_labels(y[idx])
        return ImageSet(x=x, y=y, classes=images.classes, source=images.source), idx


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
        raise SpecError(f"unknown attack {spec.attack!r}; known attacks: {', '.join(sorted(_ATTACKS))}")
    return _ATTACKS[spec.attack](spec)


def list_attacks() -> list[tuple[str, str]]:
    """(name, description of params with their defaults) for every registered attack."""
    out = []
    for name in sorted(_ATTACKS):
        params = _ATTACKS[name].PARAMS
        desc = "; ".join(f"{k}={default} ({help_})" for k, (default, help_) in params.items())
        out.append((name, desc or "no parameters"))
    return out
