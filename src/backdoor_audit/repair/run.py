"""Repair a model file end to end: open, run a method on the defender's clean set, write back
by graph surgery, and prove the written file computes what the repaired executor computes."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import ImageSet
from ..errors import DataError, ModelError, SpecError
from ..export.masked import mask_writes
from ..export.session import make_session, run_logits
from ..export.surgery import Write, provenance, write_with_provenance
from ..graph.model import OpenedModel, accuracy, open_model, predict
from ..graph.modulate import Modulation
from .base import RepairContext, RepairResult, get_method, resolve_options

PARITY_TOL = 1e-4


@dataclass
class RepairReport:
    method: str
    params: dict
    out_path: str
    pruned: list[tuple[str, int]]
    units: int  # neurons the method could act on
    total_neurons: int
    clean_acc_before: float  # on the defender's own clean set (torch executor)
    clean_acc_after: float
    seconds: float
    peak_rss_mb: float
    parity_max_abs: float
    log: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["pruned"] = [list(p) for p in self.pruned]
        return json.dumps(d, default=_jsonable, indent=2)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def repair_model(model_path, clean: ImageSet, method: str, out_path, options: dict | None = None, *,
                 device=None, layout=None, mean=None, std=None, seed: int = 0,
                 progress: bool = False) -> RepairReport:
    info = get_method(method)
    opts = resolve_options(info, options or {})
    model_path, out_path = Path(model_path), Path(out_path)
    if out_path.resolve() == model_path.resolve():
        raise SpecError(f"--out {out_path} is the input file; input files are never modified")
    if out_path.is_dir():
        raise SpecError(f"--out {out_path} is a folder; name the output .onnx file")
    m = open_model(model_path, device)
    pre = m.preprocess_for(clean)
    if len(clean) == 0:
        raise DataError(f"{clean.source}: the clean set is empty")
    x, y = m.tensors(clean, pre)
    torch.manual_seed(seed)
    ctx = RepairContext(m.executor, m.inventory, x, y, seed=seed, progress=progress)
    acc_before = accuracy(m.executor, x, y)
    t0 = time.perf_counter()
    result = info.run(ctx, **opts)
    seconds = time.perf_counter() - t0
    writes = _writes(m, result)
    prov = provenance(method, _plain(result.params), m.sha256, model_path.name,
                      pruned=len(result.pruned()), semantics=result.semantics)
    acc_after, parity = _write_and_verify(m, result, writes, out_path, prov, x, y)
    acted_on = result.scores or result.masks or {}
    units = sum(len(v) for v in acted_on.values())
    return RepairReport(method, _plain(result.params), str(out_path), result.pruned(), units,
                        m.inventory.total, acc_before, acc_after, seconds, _peak_rss_mb(), parity,
                        log={k: v for k, v in result.log.items() if k != "curve"})


def _plain(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in params.items()}


def _writes(m: OpenedModel, result: RepairResult) -> list[Write]:
    writes = []
    if result.masks:
        writes += mask_writes(m.proto, m.inventory, result.masks, result.semantics)
    for name, values in (result.new_weights or {}).items():
        if not m.executor.has_value(name):
            raise ModelError(f"method {result.method} wrote initializer '{name}', which the model does not have")
        writes.append(Write(None, -1, name, np.asarray(values)))
    return writes


def _write_and_verify(m: OpenedModel, result: RepairResult, writes, out_path, prov, x, y):
    """Write the repaired file, then check onnxruntime's logits against the repaired executor."""
    ex = m.executor
    mod = None
    if result.masks:
        layers = [m.inventory[name] for name in result.masks]
        mod = Modulation(ex, layers, bias_follows_mask=result.semantics == "zero-bias")
        mod.set_masks(result.masks)
    saved = {}
    with torch.no_grad():
        for name, values in (result.new_weights or {}).items():
            saved[name] = ex.value(name).detach().clone()
            ex.value(name).copy_(torch.as_tensor(values))
    try:
        if mod is not None:
            mod.install()
        acc_after = accuracy(ex, x, y)
        probe = x[:256]
        expected = predict(ex, probe).cpu().numpy()
    finally:
        if mod is not None:
            mod.remove()
        with torch.no_grad():
            for name, old in saved.items():
                ex.value(name).copy_(old)
    path, _ = write_with_provenance(m.proto, writes, out_path, prov)
    got = run_logits(make_session(path), probe.cpu().numpy())
    parity = float(np.abs(got - expected).max()) if expected.size else 0.0
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    if parity > PARITY_TOL * scale:
        path.unlink(missing_ok=True)
        raise ModelError(f"written model {out_path} differs from the repaired executor by {parity:.2e} "
                         "(max abs logit); not kept")
    return acc_after, parity
