"""The operator table: (domain, op type, op version range) -> a PyTorch implementation
(onnx2torch's idea, our code).

Each implementation takes the node context (name, decoded attributes, opset of the model) and
the list of input tensors (None for an omitted optional input) and returns one tensor or a
tuple of tensors. Where semantics changed between opsets (Reshape ``allowzero``, Reduce* axes
as attribute or input, Squeeze/Unsqueeze, Clip, Pad, Split, Slice, Softmax) the implementation
reads ``ctx.opset``.

Every registration says which attributes it understands and, where some attribute values are
not implemented, a ``check`` that names them. ``node_problems`` applies both before anything
runs, so a file's every unsupported op, op version and attribute is known in one pass
(``audit inspect``), not one at a time as execution reaches them.

An op's *version* is the ``since_version`` of its schema at the model's opset (Conv in an
opset-17 file is Conv-11). A registration covers versions ``since``..``until``; ``until``
defaults to the op's version at ``VERIFIED_OPSET``, the newest opset the parity tests run, so a
file from a future opset whose op changed is refused with the versions we do implement rather
than run with old semantics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import onnx

OpFn = Callable[["NodeCtx", list], Any]
Check = Callable[["NodeCtx"], "str | None"]
VERIFIED_OPSET = 23
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class NodeCtx:
    name: str
    op_type: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    n_outputs: int = 1

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    fn: OpFn
    domain: str = ""
    since: int = 1
    until: int | None = None
    attrs: frozenset[str] = frozenset()
    check: Check | None = None

    def last_version(self) -> int:
        if self.until is not None:
            return self.until
        return schema_version(self.op_type, VERIFIED_OPSET, self.domain) or 10 ** 6

    def covers(self, version: int) -> bool:
        return self.since <= version <= self.last_version()


TABLE: dict[tuple[str, str], list[OpSpec]] = {}


def register(*op_types: str, attrs: Iterable[str] = (), since: int = 1, until: int | None = None,
             check: Check | None = None, domain: str = "") -> Callable[[OpFn], OpFn]:
    """Add an implementation for ``op_types`` at op versions ``since``..``until`` that reads the
    attributes ``attrs`` (any other attribute on a node is reported as unsupported)."""
    def deco(fn: OpFn) -> OpFn:
        for t in op_types:
            TABLE.setdefault((domain, t), []).append(
                OpSpec(t, fn, domain, since, until, frozenset(attrs), check))
        return fn

    return deco


@functools.lru_cache(maxsize=None)
def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The op's version (its schema's since_version) in a model of this opset, None if the ONNX
    standard defines no such op there. Cached: every node of every file asks, twice (its own
    version and the end of the registration's range)."""
    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except Exception:  # onnx.defs.SchemaError: unknown op or opset
        return None


def supported_ops() -> list[OpSpec]:
    return [spec for specs in TABLE.values() for spec in specs]


def lookup(op_type: str, domain: str, opset: int) -> tuple[OpSpec | None, str | None]:
    """The implementation for this op in a model of this opset, or None and the reason."""
    domain = "" if domain == "ai.onnx" else domain
    specs = TABLE.get((domain, op_type))
    if not specs:
        if domain:
            return None, f"operator {domain}::{op_type} is not supported (custom operator domain)"
        return None, f"operator {op_type} is not supported by the executor"
    version = schema_version(op_type, opset, domain)
    if version is None:
        return None, f"operator {op_type} does not exist at opset {opset}"
    for spec in specs:
        if spec.covers(version):
            return spec, None
    have = ", ".join(f"{s.since}-{s.last_version()}" for s in specs)
    return None, f"operator {op_type} version {version} (opset {opset}) is not supported (versions {have} are)"


def node_problems(ctx: NodeCtx, domain: str = "", opset: int | None = None) -> tuple[OpSpec | None, list[str]]:
    """The implementation of a node and everything about it the executor cannot run."""
    spec, reason = lookup(ctx.op_type, domain, ctx.opset if opset is None else opset)
    if spec is None:
        return None, [reason]
    problems = [f"attribute '{a}' of {ctx.op_type} is not supported"
                for a in sorted(set(ctx.attrs) - spec.attrs) if not a.startswith("_")]
    if spec.check is not None:
        msg = spec.check(ctx)
        if msg:
            problems.append(msg)
    return spec, problems


from . import attention, elementwise, extra, index, nn, norm, quant, reduce, shape  # noqa: E402,F401  (fill the table)

__all__ = ["TABLE", "NodeCtx", "OpSpec", "VERIFIED_OPSET", "lookup", "node_problems", "register",
           "schema_version", "supported_ops"]
