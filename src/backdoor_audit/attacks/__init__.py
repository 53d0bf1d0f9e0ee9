"""Backdoor attacks: specs, triggers, poisoning, training and export of backdoored models."""

from .registry import Attack, get_attack, list_attacks, register_attack
from .spec import ATTACK_SPEC_KEY, MODES, AttackSpec, load_spec

from . import badnets  # noqa: E402,F401  registers "badnets"
from . import bn_reparam, adaptive_reg  # noqa: E402,F401  EP/BNP adaptive attacks (G.1, G.2)
from . import clb, refool, trojannn  # noqa: E402,F401
from . import wanet  # noqa: E402,F401  registers "wanet"
from . import input_aware  # noqa: E402,F401  registers "input-aware"
from . import blend  # noqa: E402,F401
from . import sig  # noqa: E402,F401

__all__ = [
    "ATTACK_SPEC_KEY",
    "MODES",
    "Attack",
    "AttackSpec",
    "get_attack",
    "list_attacks",
    "load_spec",
    "register_attack",
]
