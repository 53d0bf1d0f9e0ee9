"""Checked attack parameters: numbers from a spec or the command line, SpecError naming the parameter."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError


def int_param(attack: str, name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (integral floats accepted), else SpecError naming the parameter."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        as_float = float("nan")
    if isinstance(value, bool) or not as_float.is_integer():
        raise SpecError(f"{attack} {name} must be an integer, got {value!r}")
    if minimum is not None and as_float < minimum:
        raise SpecError(f"{attack} {name} must be >= {minimum}, got {int(as_float)}")
    return int(as_float)


def float_param(attack: str, name: str, value: Any, minimum: float | None = None,
                maximum: float | None = None) -> float:
    """``value`` as a finite float within [minimum, maximum], else SpecError naming the parameter."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(value, bool) or not np.isfinite(out):
        raise SpecError(f"{attack} {name} must be a number, got {value!r}")
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        raise SpecError(f"{attack} {name} must be in [{lo}, {hi}], got {out:g}")
    return out
