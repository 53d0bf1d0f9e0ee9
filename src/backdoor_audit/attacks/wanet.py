"""WaNet (Nguyen & Tran, ICLR 2021): a smooth, nearly invisible warp of the whole image, dirty labels.

The warping field: a random ``k x k x 2`` control grid in [-1, 1] is divided by its mean absolute
value, upsampled bicubically (``align_corners=True``) to the image size, scaled by ``s / H`` (the
x offsets by ``s / W``; the same for the square images of the paper), added to the identity
sampling grid and clamped to [-1, 1]. Triggered images are ``grid_sample(x, grid,
align_corners=True)`` (bilinear). The authors' code and the defence papers use k 4, s 0.5.

Noise mode (the paper's "cross" samples): besides the ``rate`` share of eligible images that are
warped and relabelled (rho_a 0.1), a ``noise_rate`` share of all training images (rho_n 0.2,
the authors' ``cross_ratio`` 2 x ``pc`` 0.1) is warped with the field plus uniform noise in
[-1, 1] / H per pixel and keeps its true label, so the model learns the exact warp and not any
warp. The authors draw those per batch; here they are drawn once, seeded by the spec's seed.

Params:

* ``k``: control-grid size (default 4).
* ``s``: warping strength (default 0.5).
* ``noise_rate``: share of training images given a noisy warp and their own label (0.2; 0 = no noise mode).
* ``grid_seed``: seed of the random control grid (numpy ``default_rng``, uniform in [-1, 1]).
* ``grid``: the control grid as a ``k x k x 2`` nested list (row, column, x/y offset). Filled in
  from ``grid_seed`` when empty, so trained specs carry the exact field in full precision; a
  given grid (a list or its JSON text) overrides ``grid_seed``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageSet
from ..errors import SpecError
from ..options import float_param, int_param
from .registry import Attack, register_attack
from ..training.train import TrainSettings, train_classifier

_CHUNK = 1024  # images warped at once


@register_attack("wanet")
class WaNet(Attack):
    """Warp the image with a fixed smooth random field; noisy warps keep their labels."""

    summary = "smooth random image warp (k 4, s 0.5) with noise-mode samples that keep their label"
    PARAMS = {
        "k": (4, "control grid size (k x k points)"),
        "s": (0.5, "warping strength"),
        "noise_rate": (0.2, "share of training images warped with noise that keep their label (rho_n)"),
        "grid_seed": (0, "seed of the random control grid"),
        "grid": ([], "k x k x 2 control grid (set from grid_seed when empty)"),
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.k = int_param("wanet", "k", self.params["k"], minimum=2)
        self.s = float_param("wanet", "s", self.params["s"], 0.0, 100.0, open_min=True)
        self.noise_rate = float_param("wanet", "noise_rate", self.params["noise_rate"], 0.0, 1.0, open_max=True)
        seed = int_param("wanet", "grid_seed", self.params["grid_seed"], minimum=0)
        grid = self.params["grid"]
        if grid is None or (isinstance(grid, (list, str)) and len(grid) == 0):
            raw = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(self.k, self.k, 2))
        else:
            raw = _grid_array(grid, self.k)
        self.control = raw
        self.params.update(k=self.k, s=self.s, noise_rate=self.noise_rate, grid_seed=seed,
                           grid=raw.tolist())  # Python floats: JSON keeps them exactly
        self._fields: dict[tuple[int, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ the field

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        if h < 2 or w < 2:
            raise SpecError(f"wanet needs images of at least 2x2 pixels, got {h}x{w}")

    def flow(self, height: int, width: int) -> np.ndarray:
        """The (H, W, 2) offsets (x, y) in grid_sample's [-1, 1] coordinates, before clamping."""
        ctrl = torch.from_numpy(self.control).permute(2, 0, 1)[None]  # (1, 2, k, k): x, y offsets
        ctrl = ctrl / ctrl.abs().mean()
        up = F.interpolate(ctrl, size=(height, width), mode="bicubic", align_corners=True)[0]
        scale = torch.tensor([self.s / width, self.s / height], dtype=torch.float64)
        return (up.permute(1, 2, 0) * scale).numpy()

    def field(self, height: int, width: int) -> torch.Tensor:
        """The (1, H, W, 2) float64 sampling grid: identity plus flow, clamped to [-1, 1]."""
        key = (height, width)
        if key not in self._fields:
            self._fields[key] = torch.clamp(_identity(height, width) + torch.from_numpy(self.flow(height, width)),
                                            -1.0, 1.0)[None]
        return self._fields[key]

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = _nchw(x)
        grid = self.field(x.shape[2], x.shape[3])
        return _warp(x, lambda n, _start: grid.expand(n, -1, -1, -1))

    def apply_noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The noise-mode warp: the field plus uniform noise in [-1, 1] / H (x: / W) per pixel, clamped."""
        x = _nchw(x)
        h, w = x.shape[2], x.shape[3]
        grid = self.field(h, w)
        scale = torch.tensor([1.0 / w, 1.0 / h], dtype=torch.float64)

        def grids(n: int, _start: int) -> torch.Tensor:
            noise = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(n, h, w, 2)))
            return torch.clamp(grid + noise * scale, -1.0, 1.0)

        return _warp(x, grids)

    # ------------------------------------------------------------------ poisoning

    def noise_indices(self, y: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
        """Sorted positions of the ``round(noise_rate * n)`` seeded-random noise-mode images, none of them poisoned."""
        n_noise = int(round(self.noise_rate * len(y)))
        free = np.setdiff1d(np.arange(len(y)), poisoned)
        if n_noise > len(free):
            raise SpecError(f"wanet: {n_noise} noise-mode images do not fit beside the {len(poisoned)} poisoned ones "
                            f"among {len(y)}; lower noise_rate or rate")
        rng = np.random.default_rng([self.spec.seed, 1])
        return np.sort(rng.choice(free, size=n_noise, replace=False)) if n_noise else free[:0]

    def poison(self, images: ImageSet) -> tuple[ImageSet, np.ndarray]:
        """Warp and relabel the poisoned images; give the noise-mode images a noisy warp, keeping labels."""
        poisoned, idx = super().poison(images)
        noise = self.noise_indices(images.y, idx)
        if len(noise):
            poisoned.x[noise] = self.apply_noise(images.x[noise], np.random.default_rng([self.spec.seed, 2]))
        return poisoned, idx

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        poisoned, idx = self.poison(clean)
        log = train_classifier(model, poisoned, **settings.kwargs())
        log["n_poisoned"] = int(len(idx))
        log["n_noise"] = int(len(self.noise_indices(clean.y, idx)))
        return log


def _identity(height: int, width: int) -> torch.Tensor:
    """grid_sample's identity grid (H, W, 2): x in [-1, 1] along columns, y along rows."""
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64)
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), dim=2)


def _warp(x: np.ndarray, grids: Any) -> np.ndarray:
    """Bilinear grid_sample of ``x`` in float64, chunk by chunk; ``grids(n, start)`` gives each chunk's grid."""
    out = np.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        xb = torch.from_numpy(x[start : start + _CHUNK].astype(np.float64))
        warped = F.grid_sample(xb, grids(len(xb), start), mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start : start + len(xb)] = np.clip(warped.numpy(), 0.0, 1.0)
    return out


def _nchw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise SpecError(f"wanet expects NCHW images, got an array of shape {tuple(x.shape)}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise SpecError(f"wanet needs images of at least 2x2 pixels, got {x.shape[2]}x{x.shape[3]}")
    return x


def _grid_array(grid: Any, k: int) -> np.ndarray:
    if isinstance(grid, str):
        try:
            grid = json.loads(grid)
        except ValueError:
            raise SpecError("wanet grid must be a k x k x 2 list of numbers (or its JSON text)") from None
    try:
        arr = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError("wanet grid must be a k x k x 2 list of numbers") from None
    if arr.shape != (k, k, 2):
        got = "x".join(map(str, arr.shape)) or "a scalar"
        raise SpecError(f"wanet grid must have shape {k}x{k}x2 for k={k}, got {got}")
    if not np.isfinite(arr).all() or not np.abs(arr).max() > 0.0:
        raise SpecError("wanet grid must hold finite numbers, not all zero")
    return arr
