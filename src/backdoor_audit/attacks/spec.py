"""The attack spec: which trigger, which labels, which seeds. It travels in spec files and model metadata.

Evaluation reads it (to trigger test images and know the target); defences and detectors never do.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, SpecError
from ..jsonobj import parse_json_object
from ..util import first_line

ATTACK_SPEC_KEY = "backdoor_audit.attack_spec"
MODES = ("all-to-one", "all-to-all")


@dataclass
class AttackSpec:
    """A backdoor attack.

    ``mode`` "all-to-one" relabels triggered images to ``target``; "all-to-all" relabels label
    ``y`` to ``(y + 1) % num_classes`` (``target`` is None). ``rate`` is the share of the
    eligible training images that are poisoned (non-target images for all-to-one, all images
    for all-to-all); ``seed`` drives which ones. ``params`` are the attack's own settings.
    """

    attack: str
    mode: str
    target: int | None
    num_classes: int
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    rate: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.attack, str) or not self.attack:
            raise SpecError(f"attack must be a non-empty name, got {self.attack!r}")
        if self.mode not in MODES:
            raise SpecError(f"attack mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise SpecError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.mode == "all-to-one":
            if not _is_int(self.target) or not 0 <= self.target < self.num_classes:
                raise SpecError(f"target {self.target!r} is not a class in [0, {self.num_classes})")
        elif self.target is not None:
            raise SpecError(f"all-to-all attacks relabel y to (y + 1) % C and take no target, got {self.target!r}")
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) or not 0.0 < self.rate <= 1.0:
            raise SpecError(f"poisoning rate must be in (0, 1], got {self.rate!r}")
        if not _is_int(self.seed):
            raise SpecError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.params, dict):
            raise SpecError(f"params must be a JSON object, got {self.params!r}")
        # plain Python numbers, so the spec always serialises to JSON
        self.num_classes, self.seed, self.rate = int(self.num_classes), int(self.seed), float(self.rate)
        self.target = None if self.target is None else int(self.target)

    def to_json(self) -> str:
        """Compact JSON with sorted keys, as stored in metadata and spec files."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AttackSpec":
        """Parse a spec; SpecError naming the missing or unknown key."""
        raw = parse_json_object(text, "attack spec", SpecError,
                                {"attack", "mode", "target", "num_classes", "params", "seed", "rate"})
        for key in ("attack", "mode", "num_classes"):
            if key not in raw:
                raise SpecError(f"attack spec lacks the key {key!r}")
        if raw["mode"] == "all-to-one" and "target" not in raw:
            raise SpecError("attack spec lacks the key 'target' (required for all-to-one)")
        return cls(
            attack=raw["attack"],
            mode=raw["mode"],
            target=raw.get("target"),
            num_classes=raw["num_classes"],
            params=raw.get("params", {}),
            seed=raw.get("seed", 0),
            rate=raw.get("rate", 0.1),
        )

    def target_labels(self, y: np.ndarray) -> np.ndarray:
        """The labels the backdoor maps images of true label ``y`` to."""
        y = np.asarray(y, dtype=np.int64)
        if self.mode == "all-to-all":
            return (y + 1) % self.num_classes
        return np.full_like(y, self.target)

    def asr_mask(self, y: np.ndarray) -> np.ndarray:
        """Which images count for ASR (and may be poisoned): all-to-one leaves out the target class."""
        y = np.asarray(y)
        if self.mode == "all-to-all":
            return np.ones(y.shape, dtype=bool)
        return y != self.target


def load_spec(path: str | os.PathLike) -> AttackSpec:
    """Read a spec from a ``.json`` file or from the metadata of an ``.onnx`` model."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".onnx"):
        raise SpecError(f"attack spec source {p} must be a .json spec file or an .onnx model")
    if not p.is_file():
        raise SpecError(f"attack spec source {p} does not exist")
    if suffix == ".json":
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec file {p}: {exc}") from None
        try:
            return AttackSpec.from_json(text)
        except SpecError as exc:
            raise SpecError(f"{p}: {exc}") from None
    return AttackSpec.from_json(_spec_text_from_onnx(p))


def _spec_text_from_onnx(p: Path) -> str:
    import onnx

    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{p} is not a readable ONNX model: {first_line(exc)}") from None
    for prop in model.metadata_props:
        if prop.key == ATTACK_SPEC_KEY:
            return prop.value
    raise SpecError(f"model {p} carries no attack spec (metadata key {ATTACK_SPEC_KEY!r}); pass a spec file")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
