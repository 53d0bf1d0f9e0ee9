"""The training set a zoo model was trained on, rebuilt from what its file records.

A zoo model's metadata names its defender split (seed, attacker share, defender images) and carries
its attack spec with the resolved trigger. The attacker's share of the dataset's train split,
poisoned by that spec (``Attack.poison``: the same seeded images, the same trigger, the target
label for dirty-label attacks), is the set it was trained on. For attacks whose training draws
more at random per batch (WaNet's noise images, Input-aware's cross-trigger images), the rebuilt
set holds the poisoned images only, as a defender holding the dataset a vendor trained on would.

It is for the one repair method whose threat model gives the defender the training data (EP);
`audit bench repair` passes it as ``--train-data``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..attacks.registry import get_attack
from ..attacks.run import TRAINING_KEY
from ..attacks.spec import ATTACK_SPEC_KEY, AttackSpec
from ..data import ImageSet, defender_split
from ..errors import SpecError
from ..graph.load import load_model


def training_record(path: str | os.PathLike) -> tuple[dict[str, Any], AttackSpec | None]:
    """A zoo model's training metadata and its attack spec (None for a clean model)."""
    props = {p.key: p.value for p in load_model(path).metadata_props}
    if TRAINING_KEY not in props:
        raise SpecError(f"{path} records no training metadata ({TRAINING_KEY}): not a model this tool trained")
    spec = AttackSpec.from_json(props[ATTACK_SPEC_KEY]) if ATTACK_SPEC_KEY in props else None
    return json.loads(props[TRAINING_KEY]), spec


def rebuild_training_set(path: str | os.PathLike, train: ImageSet) -> ImageSet:
    """The (poisoned) set the model at ``path`` was trained on, from ``train``, the train split of
    the dataset its metadata names."""
    training, spec = training_record(path)
    if len(train) != training["n_total"]:
        raise SpecError(f"{path} was trained on a split of {training['n_total']} images, "
                        f"{train.source} has {len(train)}")
    d = training["defender"]
    attacker_idx, _ = defender_split(len(train), d["n_clean"], d["split_seed"], d["attacker_share"])
    attacker = train.subset(attacker_idx)
    if spec is None:
        return attacker
    poisoned, _ = get_attack(spec).poison(attacker)
    return poisoned
