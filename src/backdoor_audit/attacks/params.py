"""Checked attack parameters: numbers from a spec or the command line, SpecError naming the parameter.

Only real numbers pass (ints, floats, numpy scalars; not bools, not strings): the CLI's
``--param`` and the TOML config already give numbers, so a string here is a malformed spec."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return float("nan")
    return float(value)


def int_param(attack: str, name: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """``value`` as an int (integral floats accepted) within [minimum, maximum], else SpecError."""
    as_float = _real(value)
    if not as_float.is_integer():
        raise SpecError(f"{attack} {name} must be an integer, got {value!r}")
    out = int(as_float)
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        if maximum is None:
            raise SpecError(f"{attack} {name} must be >= {minimum}, got {out}")
        if minimum is None:
            raise SpecError(f"{attack} {name} must be <= {maximum}, got {out}")
        raise SpecError(f"{attack} {name} must be an integer in [{minimum}, {maximum}], got {out}")
    return out


def float_param(attack: str, name: str, value: Any, minimum: float | None = None,
                maximum: float | None = None, *, open_min: bool = False, open_max: bool = False) -> float:
    """``value`` as a finite float within the interval from ``minimum`` to ``maximum`` (each bound
    closed, or open with ``open_min`` / ``open_max``), else SpecError naming the parameter."""
    out = _real(value)
    if not np.isfinite(out):
        raise SpecError(f"{attack} {name} must be a number, got {value!r}")
    low = minimum is not None and (out <= minimum if open_min else out < minimum)
    high = maximum is not None and (out >= maximum if open_max else out > maximum)
    if low or high:
        lo = "(-inf" if minimum is None else f"{'(' if open_min else '['}{minimum:g}"
        hi = "inf)" if maximum is None else f"{maximum:g}{')' if open_max else ']'}"
        raise SpecError(f"{attack} {name} must be in {lo}, {hi}, got {out:g}")
    return out
