"""Defence methods behind one contract (see base.py); one file and one import line per method."""

from .base import METHODS, RepairContext, RepairResult, register_method
from . import anp, bcu, bnp, clp, ep, fp, fst, ft, ftsam, ibau, mcr, nad, nc, npd, rnp, sau, wiper  # noqa: F401  (each registers its method)

__all__ = ["METHODS", "RepairContext", "RepairResult", "register_method"]
