"""A suspect model opened once: the checked proto, its executor, inventory and file hash.

How data is fitted to it (preprocessing, tensors) lives in ``backdoor_audit.inputs``, above both
``graph`` and ``data``, so that neither of the two imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..util import sha256_file
from .executor import OnnxExecutor, pick_device
from .load import load_model
from .neurons import NeuronInventory, build_inventory


@dataclass
class OpenedModel:
    path: Path
    proto: onnx.ModelProto
    executor: OnnxExecutor
    inventory: NeuronInventory
    sha256: str


def open_model(path, device=None) -> OpenedModel:
    path = Path(path)
    proto = load_model(path)
    ex = OnnxExecutor(proto, source=str(path)).to(pick_device(device))
    return OpenedModel(path, proto, ex, build_inventory(proto), sha256_file(path))


def predict(executor: OnnxExecutor, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits of the executor (with whatever modulators are installed), without gradients.

    Batches of 128, not 512: on the CIFAR-10 small ResNet (500 images, 2 CPU threads, one run) 128
    took 0.18 s at a 402-409 MB peak and 512 took 0.32 s at 483-550 MB (docs/performance.md)."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(executor(x[i:i + batch_size]))
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(executor: OnnxExecutor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(executor, x).argmax(1) == y).float().mean() * 100) if len(y) else float("nan")
