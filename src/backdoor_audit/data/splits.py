"""Seeded index splits: the attacker/defender split of the ANP protocol and clean-set holdouts."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def defender_split(
    n: int, n_clean: int, seed: int = 0, attacker_share: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` training indices into the attacker's pool and the defender's clean images.

    ANP protocol: a seeded permutation; the first ``attacker_share`` of it is the attacker's
    training pool, the defender's ``n_clean`` images are drawn from the rest. The defender's
    images for a smaller ``n_clean`` are a subset of those for a larger one (same seed).
    Both index arrays are returned sorted.
    """
    if not 0.0 < attacker_share < 1.0:
        raise DataError(f"attacker_share must be in (0, 1), got {attacker_share}")
    if n <= 0:
        raise DataError(f"cannot split {n} images")
    if n_clean < 0:
        raise DataError(f"n_clean must be >= 0, got {n_clean}")
    perm = np.random.default_rng(seed).permutation(n)
    n_attacker = int(round(attacker_share * n))
    pool = perm[n_attacker:]
    if n_clean > len(pool):
        raise DataError(
            f"{n_clean} clean images requested but the defender's share of {n} images is {len(pool)} "
            f"({1 - attacker_share:.0%})"
        )
    return np.sort(perm[:n_attacker]), np.sort(pool[:n_clean])


def holdout_split(n: int, frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` indices into (kept, held out), holding out ``round(frac * n)`` at random."""
    if not 0.0 <= frac <= 1.0:
        raise DataError(f"holdout fraction must be in [0, 1], got {frac}")
    if n < 0:
        raise DataError(f"cannot split {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(frac * n))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])
