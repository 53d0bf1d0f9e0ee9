"""Backdoor attacks: specs, triggers, poisoning, training and export of backdoored models."""

from .registry import Attack, get_attack, list_attacks, register_attack
from .spec import ATTACK_SPEC_KEY, MODES, AttackSpec, load_spec

from . import badnets  # noqa: E402,F401  registers "badnets"

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
