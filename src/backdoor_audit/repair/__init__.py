"""Defence methods behind one contract (see base.py); one file and one import line per method."""

from .base import METHODS, RepairContext, RepairResult, register_method
from . import anp, bnp, clp, ep, fp, fst, ft, ftsam, nad, nc, rnp, wiper  # noqa: F401  (each registers its method)

__all__ = ["METHODS", "RepairContext", "RepairResult", "register_method"]
