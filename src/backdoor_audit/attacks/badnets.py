"""BadNets (Gu et al., 2017): a small fixed patch stamped on the image, dirty labels.

Params:

* ``patch``: "square" (all pixels white, 1.0 in every channel) or "checkerboard" (black/white
  squares, white at the patch's top-left pixel).
* ``size``: side of the square patch in pixels (default 3).
* ``position``: "bottom-right" (default), "top-left", "top-right", "bottom-left", or "r,c" for the
  patch's top-left pixel at row r, column c.
* ``margin``: for the named corners, the number of pixels left between the patch and the image
  border (default 1: a 3x3 bottom-right patch on 28x28 MNIST covers rows and columns 24..26 and
  leaves row/column 27 untouched). Ignored for an "r,c" position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError
from ..options import int_param
from .registry import Attack, register_attack

CORNERS = ("bottom-right", "top-left", "top-right", "bottom-left")
PATCHES = ("square", "checkerboard")


@register_attack("badnets")
class BadNets(Attack):
    """Stamp a white square or a checkerboard patch at a fixed place."""

    summary = "a 3x3 white square or checkerboard patch at a fixed place"

    PARAMS = {
        "patch": ("square", "square (white) or checkerboard (black/white)"),
        "size": (3, "patch side in pixels"),
        "position": ("bottom-right", "bottom-right, top-left, top-right, bottom-left or 'r,c'"),
        "margin": (1, "pixels between the patch and the image border for named corners"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.patch = str(self.params["patch"])
        if self.patch not in PATCHES:
            raise SpecError(f"badnets patch {self.patch!r} is not one of {', '.join(PATCHES)}")
        self.size = int_param("badnets", "size", self.params["size"], minimum=1)
        self.margin = int_param("badnets", "margin", self.params["margin"], minimum=0)
        self.position = str(self.params["position"]).strip()
        self._offset: tuple[int, int] | None = None
        if self.position not in CORNERS:
            parts = self.position.split(",")
            try:
                row, col = (int(v) for v in parts)
            except ValueError:
                raise SpecError(
                    f"badnets position {self.position!r} is not one of {', '.join(CORNERS)} or 'row,col'"
                ) from None
            self._offset = (row, col)

    def origin(self, height: int, width: int) -> tuple[int, int]:
        """Top-left pixel (row, col) of the patch in an image of the given size."""
        s, m = self.size, self.margin
        if self._offset is not None:
            return self._offset
        row = m if self.position.startswith("top") else height - s - m
        col = m if self.position.endswith("left") else width - s - m
        return row, col

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        if self.size > h or self.size > w:
            raise SpecError(f"badnets patch of {self.size}x{self.size} px is bigger than the {h}x{w} images")
        row, col = self.origin(h, w)
        if row < 0 or col < 0 or row + self.size > h or col + self.size > w:
            where = self.position if self._offset is None else f"at {row},{col}"
            raise SpecError(
                f"badnets {self.size}x{self.size} patch {where} (margin {self.margin}) falls outside the {h}x{w} images"
            )

    def pattern(self) -> np.ndarray:
        """The patch as a (size, size) float32 array of 0/1 values."""
        if self.patch == "square":
            return np.ones((self.size, self.size), dtype=np.float32)
        ii, jj = np.indices((self.size, self.size))
        return ((ii + jj) % 2 == 0).astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        self.check_shape(x.shape[1:])
        row, col = self.origin(x.shape[2], x.shape[3])
        out = x.copy()
        out[:, :, row : row + self.size, col : col + self.size] = self.pattern()
        return out
