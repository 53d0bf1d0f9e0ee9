"""A benchmark's results file: one JSON line per finished job, keyed, appended as each finishes,
so a stopped run continues where it was (a later line for the same key wins)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_results(results: Path) -> dict[str, dict]:
    """Every row of a results file by job key."""
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    return done


def append_result(results: Path, row: dict) -> None:
    with open(results, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def fmt(v, digits: int = 2) -> str:
    """A table cell: the number, or "-" for None or a non-finite value."""
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"
