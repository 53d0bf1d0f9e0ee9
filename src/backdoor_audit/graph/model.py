"""A suspect model opened once: the checked proto, its executor, inventory and input contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..data import ImageSet, Preprocess, fit_preprocess
from .executor import OnnxExecutor, pick_device
from .load import image_input, input_dims, load_model, metadata, sha256_file
from .neurons import NeuronInventory, build_inventory


@dataclass
class OpenedModel:
    path: Path
    proto: onnx.ModelProto
    executor: OnnxExecutor
    inventory: NeuronInventory
    sha256: str

    def preprocess_for(self, images: ImageSet, layout=None, mean=None, std=None) -> Preprocess:
        """Check that ``images`` fit the model input (DataError otherwise) and pick preprocessing."""
        return model_preprocess(self.proto, images, layout=layout, mean=mean, std=std)

    def tensors(self, images: ImageSet, pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-ready inputs and labels on the executor's device."""
        dev = self.executor.device
        x = torch.from_numpy(np.ascontiguousarray(pre.apply(images.x))).to(dev)
        return x, torch.from_numpy(images.y.astype(np.int64)).to(dev)


def model_preprocess(proto: onnx.ModelProto, images: ImageSet, layout=None, mean=None, std=None) -> Preprocess:
    """Preprocessing for feeding ``images`` to ``proto``'s input: explicit options, else the
    model's metadata, else its input shape; DataError before any work when they do not fit."""
    return fit_preprocess(images, input_dims(proto), layout=layout, mean=mean, std=std,
                          metadata=metadata(proto), input_name=image_input(proto).name)


def open_model(path, device=None) -> OpenedModel:
    path = Path(path)
    proto = load_model(path)
    ex = OnnxExecutor(proto, source=str(path)).to(pick_device(device))
    return OpenedModel(path, proto, ex, build_inventory(proto), sha256_file(path))


def predict(executor: OnnxExecutor, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of the executor (with whatever modulators are installed), without gradients."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(executor(x[i:i + batch_size]))
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(executor: OnnxExecutor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(executor, x).argmax(1) == y).float().mean() * 100) if len(y) else float("nan")
