"""Repair a model file end to end: open, run a method on the defender's data, write back by graph
surgery, and prove the written file computes what the repaired executor computes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import ImageSet
from ..errors import DataError, ModelError, SpecError
from ..export.masked import mask_writes
from ..export.session import make_session, run_logits
from ..export.surgery import Insert, Write, provenance, write_with_provenance
from ..graph.load import input_dims
from ..graph.model import OpenedModel, accuracy, open_model, predict
from ..graph.modulate import Modulation
from ..graph.neurons import initializer_array
from ..inputs import fit_images
from ..util import peak_rss_mb
from .base import METHODS, RepairContext, RepairResult

#: the method ``audit repair`` runs when none is named, and its options where they differ from the
#: steps' own defaults: chosen once from the benchmark with 500 clean images (docs/repair.md, "The
#: default"), not per model. CLP prunes and I-BAU unlearns (chosen on the BN-folded CIFAR-10
#: files; ten I-BAU rounds instead of the authors' 5, their ``--n_rounds`` being "the maximum
#: number of unlearning rounds": after CLP's pruning five rounds had not yet recovered the accuracy
#: CLP took); then Neural Cleanse checks the result and unlearns what it still finds: on the MNIST
#: CNN CLP and I-BAU leave most backdoors in place (ASR 94-100% on seven of ten files) and NC
#: removes them. NC runs as `audit scan` runs it (100 steps per class, the scan's shipped
#: anomaly threshold, fitted on the calibration zoo): at the paper's threshold of 2 it flagged a
#: wrong class on the repaired folded CIFAR-10 WaNet file (index 2.37) and its unlearning cost 8.8
#: points there; NC first (on the suspect file) cost CIFAR-10 BadNets 6.6 points.
DEFAULT_METHOD = "clp+i-bau+nc"
DEFAULT_OPTIONS = {"i-bau.rounds": 10}
#: without clean data: the default's data-free step alone
DATA_FREE_DEFAULT = "clp"


def default_method(has_data: bool) -> tuple[str, dict]:
    """The method (and its option overrides) ``audit repair`` runs without ``--method``."""
    if not has_data:
        return DATA_FREE_DEFAULT, {}
    from ..audit.scan import shipped_calibration

    nc = shipped_calibration().get("neural-cleanse", {})
    return DEFAULT_METHOD, {**DEFAULT_OPTIONS, "nc.re_steps": nc.get("steps", 100),
                            "nc.anomaly": nc.get("value", 2.0)}


#: what a method's own computation may run in; the written file and its check stay float32
PRECISIONS = ("float32", "bf16")
PARITY_TOL = 1e-4
HALF_PARITY_TOL = 2e-2
PARITY_IMAGES = 256  # images the written file is checked on (random pixels in data-free mode)


@dataclass
class RepairReport:
    method: str
    params: dict
    out_path: str
    pruned: list[tuple[str, int]]
    units: int  # neurons the method could act on
    total_neurons: int
    clean_acc_before: float  # on the defender's own labeled clean set (torch executor); NaN without one
    clean_acc_after: float
    seconds: float
    peak_rss_mb: float
    parity_max_abs: float
    n_clean: int = 0
    rewritten: list[str] = field(default_factory=list)  # initializers given new values (besides masks)
    inserted: list[str] = field(default_factory=list)  # nodes the repair added to the graph
    log: dict = field(default_factory=dict)
    precision: str = "float32"

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


def repair_model(model_path, clean: ImageSet | None, method: str, out_path, options: dict | None = None, *,
                 device=None, layout=None, mean=None, std=None, seed: int = 0, progress: bool = False,
                 train: ImageSet | None = None, precision: str = "float32") -> RepairReport:
    """Run ``method`` on the model at ``model_path`` with the defender's ``clean`` images (None for a
    data-free method) and write the repaired model to ``out_path``. ``train``: the model's training
    data, passed on only to a method that needs it (``needs="train"``). ``precision`` "bf16" runs
    the method under bfloat16 autocast (convolutions and matrix products in bf16, weights, masks and
    optimiser state in float32); the accuracy checks, the written file and its parity check do not
    change (docs/performance.md measures what it does to ACC/ASR and time)."""
    if precision not in PRECISIONS:
        raise SpecError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    entry = METHODS.get(method)
    opts = entry.resolve(options)
    model_path, out_path = Path(model_path), Path(out_path)
    if out_path.resolve() == model_path.resolve():
        raise SpecError(f"--out {out_path} is the input file; input files are never modified")
    if out_path.is_dir():
        raise SpecError(f"--out {out_path} is a folder; name the output .onnx file")
    wants_clean = bool(set(entry.needs) & {"labeled", "unlabeled"})
    if clean is None and wants_clean and "none" not in entry.needs:
        raise DataError(f"repair method '{method}' needs clean images (--data); only data-free methods run without")
    if "train" in entry.needs and train is None:
        raise DataError(f"repair method '{method}' needs the model's training data (--train-data)")
    if clean is not None and len(clean) == 0:
        raise DataError(f"{clean.source}: the clean set is empty")
    if clean is not None and "labeled" in entry.needs and "unlabeled" not in entry.needs:
        clean.require_labels(f"repair method '{method}'", "; methods that take unlabeled images: "
                             + ", ".join(e.name for e in METHODS if "unlabeled" in e.needs))
    m = open_model(model_path, device)
    ctx = RepairContext(m.executor, m.inventory, seed=seed, progress=progress)
    if clean is not None:
        fitted = fit_images(m.proto, clean, m.executor.device, layout=layout, mean=mean, std=std)
        ctx.x, ctx.y, ctx.raw, ctx.preprocessing = fitted.x, fitted.y, fitted.raw, fitted.preprocess
    if train is not None and "train" in entry.needs:
        ctx.train_x = fit_images(m.proto, train, m.executor.device, layout=layout, mean=mean, std=std).x
    if ctx.x is not None:
        probe = ctx.x[:PARITY_IMAGES]
    else:
        probe = ctx.train_x[:PARITY_IMAGES] if ctx.train_x is not None else _random_inputs(m, seed)
    torch.manual_seed(seed)
    acc_before = accuracy(m.executor, ctx.x, ctx.y) if ctx.x is not None and ctx.y is not None else float("nan")
    t0 = time.perf_counter()
    with torch.autocast(m.executor.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        result = entry.run(ctx, **opts)
    seconds = time.perf_counter() - t0
    writes = result_writes(m, result)
    prov = provenance(method, _plain(result.params), m.sha256, model_path.name,
                      pruned=len(result.pruned()), semantics=result.semantics)
    acc_after, parity = _write_and_verify(m, result, writes, out_path, prov, ctx, probe)
    acted_on = result.scores or result.masks or {}
    units = sum(len(v) for v in acted_on.values())
    return RepairReport(method, _plain(result.params), str(out_path), result.pruned(), units,
                        m.inventory.total, acc_before, acc_after, seconds, peak_rss_mb(), parity,
                        n_clean=0 if clean is None else len(clean), rewritten=sorted(result.new_weights or {}),
                        inserted=[i.name for i in result.inserts or []],
                        log={k: v for k, v in result.log.items() if k != "curve"}, precision=precision)


def _plain(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in params.items()}


def _random_inputs(m: OpenedModel, seed: int) -> torch.Tensor:
    """Uniform pixels of the model's input shape, for the parity check of a data-free repair."""
    dims = input_dims(m.proto)
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ModelError(f"{m.path}: input shape {dims} is not static; a data-free repair needs --data "
                         "(or a model with a fixed image size) to check the written file")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 16
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *dims[1:]), generator=gen).to(m.executor.device)


def result_writes(m: OpenedModel, result: RepairResult) -> list[Write]:
    """The initializer writes of a result: new weights first, then masks applied on top of them
    (a pruned neuron of a re-weighted layer is the new weight times 0), so the file computes what
    the executor computes with the new weights loaded and the masks installed."""
    new = {name: np.asarray(values) for name, values in (result.new_weights or {}).items()}
    for name in new:
        if not m.executor.has_value(name) or name not in m.executor.initializer_names:
            raise ModelError(f"method {result.method} wrote initializer '{name}', which the model does not have")
    inserted = [(i.name, v) for i in result.inserts or [] for v in (i.weight, i.bias)]
    for name, values in [*new.items(), *inserted]:
        if np.issubdtype(np.asarray(values).dtype, np.floating) and not np.isfinite(values).all():
            raise ModelError(f"method {result.method} diverged: its new values for '{name}' are not finite "
                             "(NaN or inf); nothing written (a smaller lr may help)")
    writes = [Write(None, -1, name, values) for name, values in new.items()]
    if result.masks:
        def base(name: str) -> np.ndarray:
            return new[name] if name in new else initializer_array(m.proto, name)

        writes += mask_writes(m.proto, m.inventory, result.masks, result.semantics, base=base)
    return writes


def pointwise_conv(ins: Insert, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """What an inserted 1x1 conv computes, as an executor modulator on its slot."""
    w = torch.as_tensor(np.asarray(ins.weight, dtype=np.float32), device=device)
    b = torch.as_tensor(np.asarray(ins.bias, dtype=np.float32), device=device)
    return lambda t: torch.nn.functional.conv2d(t, w.to(t.dtype), b.to(t.dtype))


def _write_and_verify(m: OpenedModel, result: RepairResult, writes, out_path, prov, ctx: RepairContext,
                      probe: torch.Tensor):
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
            ex.value(name).copy_(torch.as_tensor(np.asarray(values)))
    inserts = list(result.inserts or [])
    try:
        if mod is not None:
            mod.install()
        for ins in inserts:
            ex.set_modulator(ins.node, ins.input_index, pointwise_conv(ins, ex.device))
        acc_after = accuracy(ex, ctx.x, ctx.y) if ctx.x is not None and ctx.y is not None else float("nan")
        expected = predict(ex, probe).cpu().numpy()
    finally:
        if mod is not None:
            mod.remove()
        for ins in inserts:
            ex.set_modulator(ins.node, ins.input_index, None)
        with torch.no_grad():
            for name, old in saved.items():
                ex.value(name).copy_(old)
    path, _ = write_with_provenance(m.proto, writes, out_path, prov, inserts)
    try:
        got = run_logits(make_session(path), probe.cpu().numpy())
    except ModelError:  # the written file must run where the suspect ran: none is left behind
        path.unlink(missing_ok=True)
        raise
    parity = float(np.abs(got - expected).max()) if expected.size else 0.0
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    # a float16 file runs in float16 under onnxruntime and in float32 here: ~3 significant digits
    tol = HALF_PARITY_TOL if ex.half_precision else PARITY_TOL
    if not parity <= tol * scale:  # NaN logits fail too
        path.unlink(missing_ok=True)
        raise ModelError(f"written model {out_path} differs from the repaired executor by {parity:.2e} "
                         "(max abs logit); not kept")
    return acc_after, parity
