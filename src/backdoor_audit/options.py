"""Checked options: one schema for every registered method and detector, and checked numbers.

An :class:`Option` says what a method's (or detector's) parameter is: name, type, default, allowed
range or choices, help, and the source of the default (paper and section). A :class:`Registry`
holds :class:`Entry` objects (name, summary, source, what data the entry needs, options, and the
function that runs it): ``audit repair --list`` prints one, ``--param k=v`` is parsed and checked
by it, so every method gets the same errors and the same listing. ``int_param`` and
``float_param`` check single numbers for code that has no schema (the attacks' own parameters).

Only real numbers pass the numeric checks (ints, floats, numpy scalars; not bools, not strings);
text from the command line is converted by the option's type first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SpecError


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


# ------------------------------------------------------------------------------------ the schema
#: what an entry needs to run, as ``audit repair --list`` says it
DATA_NEEDS = {
    "labeled": "labeled clean images (--data)",
    "unlabeled": "clean images, labels not used (--data may be an unlabeled image folder)",
    "train": "the (possibly poisoned) training data (--train-data)",
    "none": "no data: data-free",
}
_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One parameter: ``type`` is int, float, bool or str; ``minimum``/``maximum`` bound numbers
    (closed, or open with ``open_min``/``open_max``); ``choices`` restrict a str; ``optional``
    lets the value be None (written ``none`` on the command line). ``source`` names where the
    default comes from (a paper and its section, or the authors' code)."""

    name: str
    type: type
    default: Any
    help: str
    source: str = ""
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"option {self.name}: type must be one of int, float, bool, str")
        if not (self.default is None and self.optional):
            self.check(self.default, "default")

    def check(self, value: Any, owner: str) -> Any:
        """``value`` (text from the command line, or a Python value) as this option's type, within
        its range or choices; SpecError naming ``owner`` and the option otherwise."""
        what = f"{owner} option {self.name}"
        if isinstance(value, str):
            value = self._from_text(value.strip(), what)
        if value is None:
            if self.optional:
                return None
            raise SpecError(f"{what} needs a value")
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise SpecError(f"{what} must be true or false, got {value!r}")
            return bool(value)
        if self.type is str:
            if self.choices is not None and value not in self.choices:
                raise SpecError(f"{what} must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if self.type is int:
            return int_param(owner, f"option {self.name}", value, _int_bound(self.minimum), _int_bound(self.maximum))
        return float_param(owner, f"option {self.name}", value, self.minimum, self.maximum,
                           open_min=self.open_min, open_max=self.open_max)

    def _from_text(self, text: str, what: str) -> Any:
        if self.optional and text.lower() in ("none", "null", ""):
            return None
        if self.type is str:
            return text
        if self.type is bool:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise SpecError(f"{what} must be true or false, got {text!r}")
        try:
            return float(text) if self.type is float or not text.lstrip("+-").isdigit() else int(text)
        except ValueError:
            raise SpecError(f"{what} must be a number, got {text!r}") from None

    def describe(self) -> str:
        """Type, range or choices, and default, as one short phrase for listings."""
        if self.choices:
            kind = "|".join(self.choices)
        else:
            kind = _TYPES[self.type]
            if self.minimum is not None or self.maximum is not None:
                lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
                hi = "inf" if self.maximum is None else f"{self.maximum:g}"
                lb = "(" if self.open_min or self.minimum is None else "["
                rb = ")" if self.open_max or self.maximum is None else "]"
                kind += f" in {lb}{lo}, {hi}{rb}"
        if self.optional:
            kind += " or none"
        default = "none" if self.default is None else str(self.default).lower() if self.type is bool else self.default
        return f"{kind}, default {default}"


def _int_bound(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


@dataclass(frozen=True)
class Entry:
    """A registered method or detector: what it is, where it comes from, what data it needs, its
    options, and ``run``."""

    kind: str  # "repair method", "detector", ...
    name: str
    summary: str
    source: str
    needs: tuple[str, ...]
    options: tuple[Option, ...]
    run: Callable[..., Any]

    @property
    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        known = ", ".join(o.name for o in self.options) or "none"
        raise SpecError(f"{self.kind} '{self.name}' has no option {name} (options: {known})")

    def resolve(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults overridden by ``given`` (text or Python values), every value checked.
        A None in ``given`` means "not given" and keeps the default."""
        out = self.defaults
        for key, value in (given or {}).items():
            if value is not None:
                out[key] = self.option(key).check(value, f"{self.kind} '{self.name}'")
        return out

    def describe(self) -> list[str]:
        """Lines for a listing: name and summary, source, data needs, one line per option."""
        needs = [DATA_NEEDS[n] for n in self.needs if n != "none"]
        if "none" in self.needs:
            needs = [DATA_NEEDS["none"]] + [f"optionally {n}" for n in needs]
        lines = [f"{self.name}: {self.summary}", f"  source: {self.source}", "  needs: " + "; ".join(needs)]
        width = max((len(o.name) for o in self.options), default=0)
        for o in self.options:
            src = f" [{o.source}]" if o.source else ""
            lines.append(f"  {o.name:<{width}}  {o.describe()}: {o.help}{src}")
        return lines


@dataclass
class Registry:
    """Named entries of one kind, registered by decorator: ``@REGISTRY.register("name", ...)``."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def register(self, name: str, *, summary: str, source: str, needs: tuple[str, ...] | str,
                 options: list[Option] | tuple[Option, ...] = ()) -> Callable[[Callable], Callable]:
        needs = (needs,) if isinstance(needs, str) else tuple(needs)
        unknown = [n for n in needs if n not in DATA_NEEDS]
        if unknown or not needs:
            raise ValueError(f"{self.kind} {name}: needs must be some of {', '.join(DATA_NEEDS)}")

        def deco(fn: Callable) -> Callable:
            if name in self.entries and self.entries[name].run is not fn:
                raise SpecError(f"{self.kind} name {name!r} is registered twice")
            self.entries[name] = Entry(self.kind, name, summary, source, needs, tuple(options), fn)
            return fn

        return deco

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise SpecError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self.entries))})")
        return self.entries[name]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries[name] for name in sorted(self.entries))

    def __contains__(self, name: str) -> bool:
        return name in self.entries


def parse_assignments(texts: list[str] | tuple[str, ...], flag: str = "--param") -> dict[str, str]:
    """``["k=v", ...]`` as ``{"k": "v"}`` (text; the schema converts it); SpecError for an item
    without ``=`` or a key given twice."""
    out: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"{flag} expects key=value, got {text!r}")
        if key in out:
            raise SpecError(f"{flag} {key} is given twice")
        out[key] = value
    return out
