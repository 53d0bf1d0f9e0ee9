"""ACC and ASR of an ONNX model under onnxruntime, by the shared evaluation protocol.

ACC: accuracy on the clean images. ASR: share of triggered images classified as the attack's
target labels, counting only ``spec.asr_mask(y)`` images (all-to-one leaves out the target
class, ANP Section 4.1; all-to-all maps y to (y + 1) mod C). Both in percent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ..attacks.registry import get_attack
from ..attacks.spec import AttackSpec
from ..data.images import ImageSet
from ..data.preprocess import Preprocess
from ..errors import DataError, ModelError, SpecError
from ..export.session import make_session, run_logits

CHUNK = 4096  # images preprocessed at a time, to bound memory on large sets


@dataclass
class EvalResult:
    """ACC/ASR in percent, image counts, and the onnxruntime provider that ran the model.

    ``acc_by_class`` and ``asr_by_class`` break both down by true (source) class: a backdoor that
    fires for some source classes only, or a repair that costs one class its accuracy, shows there.
    ``asr_clean_correct`` is the ASR over the counted images the model classifies correctly without
    the trigger: for all-to-all, whose target (y + 1) depends on recognising y, the plain ASR cannot
    much exceed ACC, and this one says how often the trigger works where it could.
    """

    acc: float
    asr: float | None
    n: int
    n_asr: int
    provider: str
    acc_by_class: dict[int, float] = field(default_factory=dict)
    asr_by_class: dict[int, float] = field(default_factory=dict)
    asr_clean_correct: float | None = None


def evaluate(
    model_path: str | os.PathLike,
    images: ImageSet,
    preprocess: Preprocess,
    spec: AttackSpec | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Measure ACC (and ASR when ``spec`` is given) of the ONNX model at ``model_path``.

    ``preprocess`` should come from ``fit_preprocess`` so the data is known to fit the model.
    """
    if len(images) == 0:
        raise DataError(f"no images to evaluate in {images.source or 'the given set'}")
    images.require_labels("evaluation")
    session = make_session(model_path)
    attack = get_attack(spec) if spec is not None else None
    if attack is not None:
        attack.check_shape(images.shape)
    pred = _predict(session, images.x, preprocess, batch_size)
    _check_outputs(pred, images, model_path, spec)
    hit = pred.argmax(1) == images.y
    acc = float(hit.mean() * 100.0)
    asr, n_asr, asr_by_class, asr_correct = None, 0, {}, None
    if attack is not None and spec is not None:
        mask = spec.asr_mask(images.y)
        n_asr = int(mask.sum())
        if n_asr:
            triggered = _predict(session, images.x[mask], preprocess, batch_size, trigger=attack.apply)
            fired = triggered.argmax(1) == spec.target_labels(images.y[mask])
            asr = float(fired.mean() * 100.0)
            asr_by_class = _by_class(fired, images.y[mask])
            if hit[mask].any():
                asr_correct = float(fired[hit[mask]].mean() * 100.0)
    return EvalResult(acc=acc, asr=asr, n=len(images), n_asr=n_asr, provider=session.get_providers()[0],
                      acc_by_class=_by_class(hit, images.y), asr_by_class=asr_by_class,
                      asr_clean_correct=asr_correct)


def _by_class(hit: np.ndarray, y: np.ndarray) -> dict[int, float]:
    """Percent of ``hit`` per label in ``y`` (labels that occur only)."""
    return {int(c): float(hit[y == c].mean() * 100.0) for c in np.unique(y)}


def _predict(
    session: ort.InferenceSession,
    x: np.ndarray,
    preprocess: Preprocess,
    batch_size: int,
    trigger: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Logits for ``x`` (optionally triggered), preprocessing one chunk at a time."""
    outs = []
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK]
        if trigger is not None:
            chunk = trigger(chunk)
        outs.append(run_logits(session, preprocess.apply(chunk), batch_size))
    return np.concatenate(outs)


def _check_outputs(
    logits: np.ndarray, images: ImageSet, model_path: str | os.PathLike, spec: AttackSpec | None
) -> None:
    if logits.ndim != 2:
        raise ModelError(f"model {model_path} returns an output of shape {list(logits.shape)}; "
                         "expected (batch, classes)")
    n_out = int(logits.shape[1])
    top = int(images.y.max())
    if top >= n_out:
        raise DataError(f"labels of {images.source or 'the data'} go up to {top} "
                        f"but model {model_path} has {n_out} outputs")
    if spec is not None and spec.num_classes != n_out:
        raise SpecError(f"attack spec says {spec.num_classes} classes but model {model_path} has {n_out} outputs")
