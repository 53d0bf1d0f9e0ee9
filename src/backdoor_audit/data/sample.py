"""Seeded subsets of an image set (the defender's clean budget, a quick evaluation sample)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .images import ImageSet


def sample_indices(total: int, n: int | None, seed: int = 0, source: str = "") -> np.ndarray | None:
    """The sorted indices of ``sample``'s draw of ``n`` of ``total`` images; None for all of them."""
    if n is None or n >= total:
        return None
    if n <= 0:
        raise DataError(f"asked for {n} images from {source or 'the data'}; give a positive number")
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def sample(images: ImageSet, n: int | None, seed: int = 0) -> ImageSet:
    """``n`` images drawn without replacement with a seeded RNG (all of them when n is None)."""
    idx = sample_indices(len(images), n, seed, images.source)
    return images if idx is None else images.subset(idx)
