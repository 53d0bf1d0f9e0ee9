"""onnxruntime sessions: pick providers that really work here, load models, run batched logits."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelError
from ..util import class_scores, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    """``[CUDA, CPU]`` when onnxruntime has CUDA and a GPU is usable, else ``[CPU]``.

    onnxruntime-gpu lists CUDA even on machines without a GPU and prints an error line when
    asked for it there, so a GPU is confirmed first (torch sees one, or the NVIDIA device node
    and driver library are present).
    """
    return list(_providers())


@functools.lru_cache(maxsize=1)
def _providers() -> tuple[str, ...]:
    if CUDA not in ort.get_available_providers() or not _gpu_present():
        return (CPU,)
    return (CUDA, CPU)


def _gpu_present() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:  # torch is a dependency, but the check must not depend on it
        pass
    if not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def make_session(path: str | os.PathLike, providers: list[str] | None = None) -> ort.InferenceSession:
    """Open ``path`` in onnxruntime (quiet: errors only); ModelError if it cannot be loaded."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), sess_options=options, providers=providers or available_providers())
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelError(f"onnxruntime cannot load {p}: {first_line(exc)}") from None


def run_logits(
    session: ort.InferenceSession, x_model_input: np.ndarray, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Run the model on ``x_model_input`` (already preprocessed) in batches; return the first output.

    A model exported with a fixed batch size runs in batches of exactly that size, the last one
    padded and its padding dropped from the result.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(f"model has {len(inputs)} inputs ({names}); expected one image input")
    name = inputs[0].name
    # a half-precision model takes half-precision images; scores come back as float32 either way
    x = np.ascontiguousarray(x_model_input, dtype=np.float16 if inputs[0].type == "tensor(float16)" else np.float32)
    if batch_size <= 0:
        raise ModelError(f"batch size must be positive, got {batch_size}")
    fixed = inputs[0].shape[0] if inputs[0].shape else None
    if isinstance(fixed, int) and fixed > 0:
        batch_size = fixed
    starts = range(0, len(x), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="onnxruntime", unit="batch")
    outputs = []
    for start in starts:
        batch = x[start : start + batch_size]
        n = len(batch)
        if isinstance(fixed, int) and fixed > 0 and n < fixed:
            batch = np.concatenate([batch, np.repeat(batch[:1], fixed - n, axis=0)])
        try:
            outputs.append(class_scores(session.run(None, {name: batch})[0][:n]))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelError(
                f"onnxruntime failed on input {name!r} with a batch of shape {list(batch.shape)}: {first_line(exc)}"
            ) from None
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)

