"""Where a model meets data: does an image set fit the model's input, how it is preprocessed,
and the tensors a method or detector runs on.

This sits above ``graph`` (the model) and ``data`` (the images), which do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from .data import ImageSet, Preprocess, fit_preprocess
from .data.preprocess import PREPROCESS_KEY, layout_from_shape
from .errors import DataError
from .graph.load import image_input, input_dims, metadata


def model_preprocess(proto: onnx.ModelProto, images: ImageSet, layout=None, mean=None, std=None) -> Preprocess:
    """Preprocessing for feeding ``images`` to ``proto``'s input: explicit options, else the
    model's metadata, else its input shape; DataError before any work when they do not fit."""
    return fit_preprocess(images, input_dims(proto), layout=layout, mean=mean, std=std,
                          metadata=metadata(proto), input_name=image_input(proto).name)


def blind_preprocess(proto: onnx.ModelProto, layout=None, mean=None, std=None) -> tuple[Preprocess, tuple[int, ...]]:
    """Preprocessing and pixel shape (C, H, W) for a model fed without data (data-free detectors
    optimise synthetic pixels): the image size has to be fixed in the file. DataError otherwise."""
    dims = input_dims(proto)
    meta = metadata(proto)
    probe = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(probe) != 4:
        raise DataError(f"model input {image_input(proto).name!r} has shape {dims}; expected a 4-D image input")
    lay = layout or (Preprocess.from_json(meta[PREPROCESS_KEY]).layout if PREPROCESS_KEY in meta
                     else layout_from_shape(probe, image_input(proto).name))
    chw = (probe[1], probe[2], probe[3]) if str(lay).upper() == "NCHW" else (probe[3], probe[1], probe[2])
    if any(d is None for d in chw):
        raise DataError(f"model input {image_input(proto).name!r} has shape {dims}: a data-free detector needs a "
                        "fixed image size (give --data instead)")
    shell = ImageSet(np.zeros((1, *chw), dtype=np.float32), np.zeros(1, dtype=np.int64), source="(synthetic pixels)")
    return fit_preprocess(shell, dims, layout=layout, mean=mean, std=std, metadata=meta,
                          input_name=image_input(proto).name), tuple(chw)


@dataclass
class Fitted:
    """An image set fitted to one model: the pixels (float NCHW in [0, 1]), the model input they
    give, the labels, and the preprocessing between the two (``preprocess.torch`` is
    differentiable, for methods that optimise in pixel space)."""

    raw: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor | None  # None for an unlabeled set
    preprocess: Preprocess


def fit_images(proto: onnx.ModelProto, images: ImageSet, device: torch.device, layout=None, mean=None,
               std=None) -> Fitted:
    """Check that ``images`` fit ``proto`` (DataError otherwise) and put them on ``device``."""
    pre = model_preprocess(proto, images, layout=layout, mean=mean, std=std)
    raw = torch.from_numpy(np.ascontiguousarray(images.x, dtype=np.float32)).to(device)
    y = torch.from_numpy(images.y.astype(np.int64)).to(device) if images.labeled else None
    return Fitted(raw, pre.torch(raw), y, pre)
