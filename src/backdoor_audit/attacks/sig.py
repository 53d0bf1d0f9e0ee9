"""SIG (Barni et al., 2019): a horizontal sinusoidal signal on target-class images, clean labels.

``x' = clip(x + delta/255 * sin(2 pi j f / W))`` for every pixel in column ``j`` of a W-wide
image, all channels and rows alike. The papers' settings: delta 20 (60 for GTSRB), f 6, 80% of
the target class's training images poisoned (pass ``--rate 0.8``); labels are never changed.

``signal="ramp"`` gives the paper's other signal, the one its MNIST experiments use:
``x' = clip(x + delta/255 * j / W)``, a brightness ramp from 0 at the left edge to almost delta at
the right (the authors' code: delta 30, up to 40% of the target class). Unlike the sinusoid it
never goes negative, so it is not lost where the image is black, as most of an MNIST digit is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError
from ..options import float_param
from .registry import Attack, register_attack


@register_attack("sig")
class Sig(Attack):
    """Add a horizontal sinusoid to target-class training images and to triggered test images."""

    summary = "horizontal sinusoid on target-class images (delta 20, f 6; use --rate 0.8)"
    dirty_label = False
    PARAMS = {
        "delta": (20.0, "amplitude on the 0..255 scale (60 for GTSRB)"),
        "frequency": (6.0, "periods across the image width (sine only)"),
        "signal": ("sine", "sine (the horizontal sinusoid) or ramp (0 to delta left to right, the "
                           "paper's MNIST signal)"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.delta = float_param("sig", "delta", self.params["delta"], 0.0, 255.0, open_min=True)
        self.frequency = float_param("sig", "frequency", self.params["frequency"], 0.0, open_min=True)
        if self.params["signal"] not in ("sine", "ramp"):
            raise SpecError(f"sig signal must be 'sine' or 'ramp', got {self.params['signal']!r}")
        if spec.mode != "all-to-one":
            raise SpecError("sig is a clean-label attack and needs mode all-to-one")

    def signal(self, width: int) -> np.ndarray:
        """The additive signal of one image row, shape (width,), float32."""
        j = np.arange(width, dtype=np.float64)
        if self.params["signal"] == "ramp":
            return (self.delta / 255.0 * j / width).astype(np.float32)
        return (self.delta / 255.0 * np.sin(2.0 * np.pi * j * self.frequency / width)).astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        return np.clip(x + self.signal(x.shape[3]), 0.0, 1.0)
