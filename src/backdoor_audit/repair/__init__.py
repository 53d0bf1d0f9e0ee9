"""Defence methods behind one contract (see base.py); one file and one import line per method."""

from .base import METHODS, RepairContext, RepairResult, register_method
from . import anp  # noqa: F401  (registers "anp")

__all__ = ["METHODS", "RepairContext", "RepairResult", "register_method"]
