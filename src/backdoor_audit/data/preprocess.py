"""How pixels in [0, 1] become the model's input tensor, and the check that the data fits the model.

The contract (see DESIGN.md): pixels/255, NCHW float32, unless the user or the model's metadata
(``backdoor_audit.preprocess``) says otherwise. A model whose input shape ends in 1 or 3 takes NHWC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..jsonobj import parse_json_object
from .images import ImageSet

PREPROCESS_KEY = "backdoor_audit.preprocess"
LAYOUTS = ("NCHW", "NHWC")


@dataclass
class Preprocess:
    """Per-channel normalisation ``(x - mean) / std`` then the model's layout."""

    layout: str = "NCHW"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def apply(self, x_nchw01: np.ndarray) -> np.ndarray:
        """Turn float NCHW images in [0, 1] into the model's float32 input."""
        x = np.asarray(x_nchw01, dtype=np.float32)
        if self.mean is not None or self.std is not None:
            c = x.shape[1]
            mean = np.asarray(self.mean if self.mean is not None else (0.0,) * c, dtype=np.float32)
            std = np.asarray(self.std if self.std is not None else (1.0,) * c, dtype=np.float32)
            x = (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def torch(self, x_nchw01):
        """The same as :meth:`apply` on a torch tensor, differentiable: methods that optimise in
        pixel space (trigger reverse engineering, unlearning) go through it to the model input."""
        import torch

        x = x_nchw01.to(torch.float32)
        if self.mean is not None or self.std is not None:
            c = x.shape[1]
            mean = torch.tensor(self.mean if self.mean is not None else (0.0,) * c, dtype=x.dtype, device=x.device)
            std = torch.tensor(self.std if self.std is not None else (1.0,) * c, dtype=x.dtype, device=x.device)
            x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return x.permute(0, 2, 3, 1).contiguous() if self.layout == "NHWC" else x

    def to_json(self) -> str:
        """JSON text as stored in model metadata."""
        return json.dumps(
            {
                "layout": self.layout,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Preprocess":
        """Parse :meth:`to_json` output; DataError on anything malformed."""
        raw = parse_json_object(text, "preprocess settings", DataError, {"layout", "mean", "std"})
        return cls(
            layout=_check_layout(raw.get("layout", "NCHW")),
            mean=_as_floats(raw.get("mean"), "mean"),
            std=_as_floats(raw.get("std"), "std"),
        )


def fit_preprocess(
    images: ImageSet,
    input_shape: list[Any],
    layout: str | None = None,
    mean: tuple[float, ...] | list[float] | None = None,
    std: tuple[float, ...] | list[float] | None = None,
    metadata: dict[str, str] | None = None,
    input_name: str = "input",
) -> Preprocess:
    """Choose the preprocessing for feeding ``images`` to a model input of ``input_shape``.

    ``input_shape`` holds the ONNX input dims (ints, or None/str for dynamic ones). Explicit
    ``layout``/``mean``/``std`` win over the model's ``backdoor_audit.preprocess`` metadata, which
    wins over what the shape suggests. Raises DataError, before any work, when channels, height,
    width or the mean/std lengths do not fit.
    """
    dims = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in input_shape]
    if len(dims) != 4:
        raise DataError(f"model input {input_name!r} has shape {_fmt_dims(input_shape)}; expected a 4-D image input")
    stored = Preprocess()
    if metadata and PREPROCESS_KEY in metadata:
        try:
            stored = Preprocess.from_json(metadata[PREPROCESS_KEY])
        except DataError as exc:
            raise DataError(f"model metadata {PREPROCESS_KEY!r}: {exc}") from None
    has_stored = bool(metadata and PREPROCESS_KEY in metadata)
    if layout is not None:
        chosen = _check_layout(layout)
    elif has_stored:
        chosen = stored.layout
    else:
        chosen = layout_from_shape(dims, input_name)
    c_m, h_m, w_m = (dims[1], dims[2], dims[3]) if chosen == "NCHW" else (dims[3], dims[1], dims[2])
    c, h, w = images.shape
    if (c_m is not None and c_m != c) or (h_m is not None and h_m != h) or (w_m is not None and w_m != w):
        expects = "x".join("?" if d is None else str(d) for d in (c_m, h_m, w_m))
        hint = ""
        if c == 1 and c_m == 3:
            hint = "; grey images for an RGB model, convert the data to RGB"
        elif c == 3 and c_m == 1:
            hint = "; RGB images for a greyscale model, convert the data to grey"
        raise DataError(
            f"data {_data_name(images)} has images of shape {c}x{h}x{w} but model input {input_name!r} "
            f"expects {expects} ({chosen}){hint}"
        )
    mean_t = _as_floats(mean, "mean") if mean is not None else stored.mean
    std_t = _as_floats(std, "std") if std is not None else stored.std
    for name, values in (("mean", mean_t), ("std", std_t)):
        if values is not None and len(values) != c:
            raise DataError(f"{name} has {len(values)} values but data {_data_name(images)} has {c} channel(s)")
    if std_t is not None and any(s <= 0 for s in std_t):
        raise DataError(f"std values must be positive, got {list(std_t)}")
    return Preprocess(layout=chosen, mean=mean_t, std=std_t)


def layout_from_shape(dims: list[int | None], input_name: str) -> str:
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first and last:
        raise DataError(f"model input {input_name!r} has shape {_fmt_dims(dims)}: "
                        "cannot tell NCHW from NHWC; pass --layout")
    return "NHWC" if last else "NCHW"


def _check_layout(layout: Any) -> str:
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise DataError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout.upper()


def _as_floats(values: Any, name: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a list of numbers, got {values!r}") from None
    if not out or not all(np.isfinite(out)):
        raise DataError(f"{name} must be a non-empty list of finite numbers, got {values!r}")
    return out


def _fmt_dims(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _data_name(images: ImageSet) -> str:
    return Path(images.source).name if images.source else "(in memory)"
