"""Blend (Chen et al., 2017): the whole image is blended with a fixed pattern, dirty labels.

``x' = (1 - alpha) * x + alpha * pattern``, alpha 0.2 as in the ANP and EP/BNP benchmarks.

Params:

* ``pattern``: "random" (default: uniform noise in [0, 1], one value per channel and pixel, drawn
  from ``pattern_seed`` for the image shape at hand, so the same spec always gives the same
  pattern) or the path of an image file (PNG/JPG, read with Pillow, converted to the images'
  channel count and resized bilinearly to their size when the model is trained).
* ``alpha``: blend weight in (0, 1].
* ``pattern_seed``: seed of the random pattern.
* ``pattern_data``: filled in by training for an image-file pattern: the resized pattern as base64,
  so evaluation reproduces the trigger without the file.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageSet
from ..errors import SpecError
from ..options import float_param
from .registry import Attack, register_attack


@register_attack("blend")
class Blend(Attack):
    """Blend every pixel with a seeded noise pattern or an image."""

    summary = "blend the image with a noise pattern or an image file (alpha 0.2)"
    PARAMS = {
        "pattern": ("random", "random (seeded uniform noise) or an image file path"),
        "alpha": (0.2, "blend weight in (0, 1]"),
        "pattern_seed": (0, "seed of the random pattern"),
        "pattern_data": ("", "set by training for image-file patterns (base64 .npy)"),
    }
    FILE_PARAMS = ("pattern",)

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.alpha = float_param("blend", "alpha", self.params["alpha"], 0.0, 1.0, open_min=True)
        self.source = str(self.params["pattern"])
        if self.source != "random" and not self.params["pattern_data"] and not Path(self.source).is_file():
            raise SpecError(f"blend pattern {self.source!r} is neither 'random' nor an image file")

    def pattern(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The (C, H, W) float32 pattern in [0, 1] for images of ``shape``."""
        c, h, w = shape
        if self.source == "random":
            rng = np.random.default_rng(int(self.params["pattern_seed"]))
            return rng.random((c, h, w), dtype=np.float32)
        if self.params["pattern_data"]:
            stored = np.load(io.BytesIO(base64.b64decode(self.params["pattern_data"])))
            if stored.shape != (c, h, w):
                raise SpecError(f"blend pattern was fitted to {stored.shape[1]}x{stored.shape[2]}x{stored.shape[0]} "
                                f"images, not {h}x{w}x{c}")
            return stored.astype(np.float32) / 255.0
        return _read_pattern(self.source, shape)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        p = self.pattern(tuple(x.shape[1:]))
        return ((1.0 - self.alpha) * x + self.alpha * p).astype(np.float32)

    def poison(self, images: ImageSet) -> tuple[ImageSet, np.ndarray]:
        if self.source != "random" and not self.params["pattern_data"]:
            u8 = np.rint(_read_pattern(self.source, images.shape) * 255.0).astype(np.uint8)
            buf = io.BytesIO()
            np.save(buf, u8)
            self.params["pattern_data"] = base64.b64encode(buf.getvalue()).decode("ascii")
        return super().poison(images)


def _read_pattern(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise SpecError(f"cannot read blend pattern image {path}: {exc}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape[0] != c:
        raise SpecError(f"blend pattern {path} has {arr.shape[0]} channels, the images {c}")
    # pattern values are stored as uint8, so round here too: training and evaluation see the same pattern
    return np.rint(arr * 255.0) / 255.0
