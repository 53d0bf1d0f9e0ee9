"""Seeded subsets of an image set (the defender's clean budget, a quick evaluation sample)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .images import ImageSet


def sample(images: ImageSet, n: int | None, seed: int = 0) -> ImageSet:
    """``n`` images drawn without replacement with a seeded RNG (all of them when n is None)."""
    if n is None or n >= len(images):
        return images
    if n <= 0:
        raise DataError(f"asked for {n} images from {images.source}; give a positive number")
    idx = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return images.subset(idx)
