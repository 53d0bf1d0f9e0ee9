"""Refool (Liu, Ma, Bailey & Lu, 2020): reflections of other images as the trigger, clean labels.

A triggered image is the image seen through glass that reflects another scene:
``x' = clip(x + alpha * R(r), 0, 1)`` with ``r`` one of a fixed set of reflection images and
``R`` one of the paper's reflection models:

* out of focus (the paper's type II, the default): ``R(r) = gaussian_blur(r, sigma)``; sigma 0
  gives the in-focus type I ``R(r) = r``;
* ghost effect (type III): ``R(r) = 0.5 * r + 0.5 * shift(r, d, d)``, a double image offset by
  ``d = ghost_offset`` pixels down and right.

Like the paper (and unlike BackdoorBox's variant) the attack is by default clean-label: only
target-class training images get reflections and labels are kept. The paper draws reflections
from PascalVOC and picks the most effective ones adversarially; here the attacker takes
``n_reflections`` seeded-random images of the *non-target* classes from its own training set, or,
with ``source``, from another dataset as the paper does (simplification: no gamma-space
blending). With ``select_rounds`` > 0 it first picks them adversarially, as the paper's Section 3.3
(see ``select_reflections``). Reflections of the victim's own other classes carry those
classes' features: on GTSRB (small-resnet, 8 epochs, target class 2, 80% of it) they gave ASR
8.76%; see docs/zoo.md for CIFAR-10 images as the source. They are stored in the params
(uint8, base64 .npz) when the training set is poisoned, so evaluation reproduces the trigger.

**Which reflection an image gets**: a keyed hash (BLAKE2b, key = the spec's seed) of the image's
8-bit pixels picks the reflection, and for ``ghost_rate`` > 0 the model. The choice depends on the
image alone, not on its position in a batch, so any batching (and the ONNX evaluation in another
process) gives the same triggered image; an image always gets the same reflection.

**Rate**: ``spec.rate`` is the share of the target class poisoned; recommended 0.8 (``--rate 0.8``).

``labels`` "dirty" switches to BackdoorBox's poison-label variant (its authors found the
clean-label one to have minor effects): reflections go on ``spec.rate`` of the non-target images
(all images for all-to-all), which are relabelled like ``badnets``. Clean-label Refool is weak on
easy data such as MNIST, where the class's own features suffice and the reflection is never needed
(mnist-cnn, 10k images, 8 epochs: ASR under 3% clean-label; 81% dirty-label at rate 0.1 with
``n_reflections=4, alpha=0.6``).

Params: ``labels`` ("clean", the paper's setting, or "dirty"), ``n_reflections`` (16),
``alpha`` (0.4: reflection weight, the top of the paper's 0.05..0.45 range), ``sigma`` (1.0 px
blur; the paper's 1..5 are for 224-px and larger images), ``ghost_rate`` (0.0: share of images
given the ghost model instead of the blur), ``ghost_offset`` (2 px), ``reflections`` (set by
poisoning: the reflection images; 16 MNIST digits take under 4 kB of metadata); for the
adversarial selection ``select_rounds`` (0: none), ``candidates`` (0: 4 x n_reflections),
``select_width`` (0: n_reflections; more lets one round score many candidates and keep the best),
``select_epochs`` (0: the training's epochs) and ``select_images`` (1000).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.images import ImageSet
from ..errors import SpecError
from ..options import float_param, int_param
from .registry import Attack, register_attack
from ..training.resume import stage
from ..training.train import TrainSettings, predict, train_classifier


@register_attack("refool")
class Refool(Attack):
    """Blend target-class images with blurred or ghosted reflections of other images."""

    summary = "reflections of other-class images blended in (alpha 0.4, blur sigma 1; use --rate 0.8)"
    dirty_label = False
    #: share of the target class to poison (``--rate``)
    recommended_rate: ClassVar[float] = 0.8
    PARAMS = {
        "labels": ("clean", "clean (the paper: target-class images, labels kept) or dirty (relabelled)"),
        "n_reflections": (16, "number of reflection images (non-target training images, or from source)"),
        "alpha": (0.4, "reflection weight in (0, 1]"),
        "sigma": (1.0, "blur of the out-of-focus reflection in pixels (0: in focus)"),
        "ghost_rate": (0.0, "share of images given the ghost (double image) model instead"),
        "ghost_offset": (2, "ghost shift in pixels, down and right"),
        "source": ("", "image data (npz, folder or zip) to draw the reflections from instead, e.g. "
                       "another dataset as the paper's PascalVOC"),
        "source_split": ("train", "split of a source that has splits"),
        "select_rounds": (0, "rounds of the paper's adversarial reflection selection (0: none)"),
        "candidates": (0, "candidate reflections the selection draws (0: 4 x n_reflections)"),
        "select_width": (0, "candidates each selection round injects and scores (0: n_reflections)"),
        "select_epochs": (0, "training epochs of each selection round (0: the training's epochs)"),
        "select_images": (1000, "non-target training images each candidate is scored on"),
        "reflections": ("", "set by poisoning: the reflection images (base64 .npz, uint8 NCHW)"),
    }
    FILE_PARAMS = ("source",)

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        labels = self.params["labels"]
        if labels not in ("clean", "dirty"):
            raise SpecError(f"refool labels must be 'clean' or 'dirty', got {labels!r}")
        self.dirty_label = labels == "dirty"
        if not self.dirty_label and spec.mode != "all-to-one":
            raise SpecError("refool with clean labels needs mode all-to-one (or pass labels=dirty)")
        self.n_reflections = int_param("refool", "n_reflections", self.params["n_reflections"], minimum=1)
        self.alpha = float_param("refool", "alpha", self.params["alpha"], 0.0, 1.0, open_min=True)
        self.sigma = float_param("refool", "sigma", self.params["sigma"], minimum=0.0, maximum=64.0)
        self.ghost_rate = float_param("refool", "ghost_rate", self.params["ghost_rate"], minimum=0.0, maximum=1.0)
        self.ghost_offset = int_param("refool", "ghost_offset", self.params["ghost_offset"], minimum=1)
        self.select_rounds = int_param("refool", "select_rounds", self.params["select_rounds"], minimum=0)
        self.candidates = int_param("refool", "candidates", self.params["candidates"], minimum=0) \
            or 4 * self.n_reflections
        if self.select_rounds and spec.mode != "all-to-one":
            raise SpecError("refool selection scores reflections by the target class: it needs mode all-to-one")
        if self.select_rounds and self.candidates < self.n_reflections:
            raise SpecError(f"refool selection needs candidates >= n_reflections, got {self.candidates} "
                            f"< {self.n_reflections}")
        self.select_width = int_param("refool", "select_width", self.params["select_width"], minimum=0) \
            or self.n_reflections
        if self.select_rounds and not self.n_reflections <= self.select_width <= self.candidates:
            raise SpecError(f"refool select_width must lie in [n_reflections, candidates] = "
                            f"[{self.n_reflections}, {self.candidates}], got {self.select_width}")
        self.select_epochs = int_param("refool", "select_epochs", self.params["select_epochs"], minimum=0)
        self.select_images = int_param("refool", "select_images", self.params["select_images"], minimum=1)
        for key in ("source", "source_split"):
            if not isinstance(self.params[key], str):
                raise SpecError(f"refool {key} must be a string, got {self.params[key]!r}")
        if not isinstance(self.params["reflections"], str):
            raise SpecError("refool reflections must be a base64 string (set by training)")
        self._decoded: tuple[str, np.ndarray] | None = None  # (the text it was decoded from, images)

    # ------------------------------------------------------------------ reflections

    def reflections(self) -> np.ndarray:
        """The stored reflection images, float32 (K, C, H, W) in [0, 1]."""
        text = self.params["reflections"]
        if self._decoded is None or self._decoded[0] is not text:
            if not text:
                raise SpecError("refool has no reflection images yet: they are picked when a training set is "
                                "poisoned (or come from the spec of a trained model)")
            try:
                with np.load(io.BytesIO(base64.b64decode(text, validate=True))) as z:
                    r = z["r"]
            except Exception:  # binascii, zipfile, pickle and key errors alike
                raise SpecError("refool reflections are not a valid base64 .npz with an array 'r'") from None
            if r.dtype != np.uint8 or r.ndim != 4 or len(r) == 0:
                raise SpecError(f"refool reflections must be uint8 NCHW images, got {r.dtype} {tuple(r.shape)}")
            self._decoded = (text, r.astype(np.float32) / 255.0)
        return self._decoded[1]

    def pick_reflections(self, images: ImageSet) -> None:
        """Store ``n_reflections`` seeded-random images as the reflections: from ``source`` when set
        (brought to the size and channels of ``images``), else non-target images of ``images`` (any
        images for all-to-all)."""
        self._store(self._draw(images, self.n_reflections))

    def _draw(self, images: ImageSet, n: int) -> np.ndarray:
        """``n`` seeded-random reflection images (fewer if the pool is smaller), uint8 NCHW."""
        if self.params["source"]:
            pool = _source_images(self.params["source"], self.params["source_split"] or None,
                                  max(8 * n, 256), images.x.shape[1:])
            candidates = np.arange(len(pool))
        else:
            pool, candidates = images.x, np.flatnonzero(self.spec.asr_mask(images.y))
            if len(candidates) == 0:
                raise SpecError(f"refool takes its reflections from non-target images; "
                                f"{images.source or 'the set'} has none")
        rng = np.random.default_rng([self.spec.seed, 0x5EF1])
        idx = np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
        return np.rint(np.clip(pool[idx], 0.0, 1.0) * 255.0).astype(np.uint8)

    def _store(self, u8: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, r=u8)
        self.params["reflections"] = base64.b64encode(buf.getvalue()).decode("ascii")

    # ------------------------------------------------------------------ adversarial selection

    def select_reflections(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """The paper's adversarial reflection selection (Section 3.3), on the attacker's own data.

        Every candidate starts with weight 1. Each round stores the ``select_width`` (the paper's
        m, by default ``n_reflections``) candidates of highest weight, poisons ``clean`` with them,
        trains ``model`` from its initial weights, and scores each stored reflection by the mean
        target-class probability the model gives ``select_images`` non-target training images
        carrying it; those candidates get their score as weight, the others the median of the
        scores. The best ``n_reflections`` by weight are kept and ``model`` is reset to its initial
        weights. Returns the rounds' scores and seconds.
        """
        start = time.perf_counter()
        initial = copy.deepcopy(model.state_dict())
        pool = self._draw(clean, self.candidates)
        m, keep = min(self.select_width, len(pool)), min(self.n_reflections, len(pool))
        rng = np.random.default_rng([self.spec.seed, 0x5E1EC7])
        others = np.flatnonzero(self.spec.asr_mask(clean.y))
        probe = clean.x[np.sort(rng.choice(others, size=min(self.select_images, len(others)), replace=False))]
        weight = np.ones(len(pool))
        rounds = []
        for _ in range(self.select_rounds):
            top = np.argsort(-weight, kind="stable")[:m]
            self._store(pool[top])
            poisoned, _ = self.poison(clean)
            model.load_state_dict(initial)
            train_classifier(model, poisoned, **settings.kwargs(epochs=self.select_epochs or settings.epochs,
                                                                checkpoint=None))
            scores = self.reflection_scores(model, probe)
            weight[:] = np.median(scores)
            weight[top] = scores
            rounds.append({"candidates": [int(i) for i in top], "scores": [round(float(s), 4) for s in scores]})
        best = np.sort(np.argsort(-weight, kind="stable")[:keep])
        self._store(pool[best])
        model.load_state_dict(initial)
        return {"rounds": rounds, "kept": [int(i) for i in best], "seconds": time.perf_counter() - start}

    def reflection_scores(self, model: nn.Module, x: np.ndarray) -> np.ndarray:
        """Per stored reflection: the mean target-class probability ``model`` gives ``x`` with that
        reflection (its out-of-focus or in-focus layer) added."""
        blurred, _ = self.layers()
        scores = np.empty(len(blurred))
        for k, layer in enumerate(blurred):
            logits = torch.from_numpy(predict(model, np.clip(x + self.alpha * layer, 0.0, 1.0).astype(np.float32)))
            scores[k] = float(torch.softmax(logits, 1)[:, int(self.spec.target)].mean())
        return scores

    def train(self, model: nn.Module, clean: ImageSet, settings: TrainSettings) -> dict[str, Any]:
        """Select the reflections adversarially when asked (and none are stored yet), then poison and
        train as every attack does. The selection is a stage of the training's checkpoint: a resumed
        training poisons with the reflections it started with instead of selecting again."""
        selection = None
        if self.select_rounds and not self.params["reflections"]:
            def select() -> dict[str, Any]:
                return {"selection": self.select_reflections(model, clean, settings),
                        "reflections": self.params["reflections"]}

            state, resumed = stage(settings.checkpoint, "refool-selection", select)
            self.params["reflections"] = state["reflections"]
            selection = {**state["selection"], "resumed": True} if resumed else state["selection"]
        log = super().train(model, clean, settings)
        if selection is not None:
            log["attack_notes"] = {"refool_selection": selection}
            log["seconds"] += selection["seconds"]
        return log

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        c, h, w = shape
        if self.ghost_offset >= min(h, w):
            raise SpecError(f"refool ghost_offset {self.ghost_offset} px does not fit the {h}x{w} images")
        if self.params["reflections"]:
            rc, rh, rw = self.reflections().shape[1:]
            if (rc, rh, rw) != (c, h, w):
                raise SpecError(f"refool reflections are {rh}x{rw}x{rc} images, the data {h}x{w}x{c}")

    # ------------------------------------------------------------------ trigger

    def choose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image: (index of its reflection, whether it gets the ghost model), from a keyed hash."""
        u8 = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
        key = str(self.spec.seed).encode()
        k = len(self.reflections())
        index = np.empty(len(x), dtype=np.int64)
        ghost = np.zeros(len(x), dtype=bool)
        for i, img in enumerate(u8):
            h = int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8, key=key).digest(), "little")
            index[i] = h % k
            ghost[i] = ((h >> 32) % 1_000_000) / 1_000_000.0 < self.ghost_rate
        return index, ghost

    def layers(self) -> tuple[np.ndarray, np.ndarray]:
        """The reflection layers of every stored image: (blurred, ghosted), each (K, C, H, W)."""
        r = self.reflections()
        blurred = _gaussian_blur(r, self.sigma) if self.sigma > 0 else r
        d = self.ghost_offset
        shifted = np.zeros_like(r)
        shifted[:, :, d:, d:] = r[:, :, :-d, :-d]
        return blurred, 0.5 * r + 0.5 * shifted

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = self.batch(x)
        self.check_shape(x.shape[1:])
        if len(x) == 0:
            return x.copy()
        index, ghost = self.choose(x)
        blurred, ghosted = self.layers()
        layer = np.where(ghost[:, None, None, None], ghosted[index], blurred[index])
        return np.clip(x + self.alpha * layer, 0.0, 1.0).astype(np.float32)

    def poison(self, images: ImageSet) -> tuple[ImageSet, np.ndarray]:
        """Pick the reflections from ``images`` (unless the spec already has them), then poison."""
        if not self.params["reflections"]:
            self.pick_reflections(images)
        return super().poison(images)


def _source_images(path: str, split: str | None, limit: int, shape: tuple[int, ...]) -> np.ndarray:
    """Up to ``limit`` images of another data source as float32 NCHW of ``shape`` (C, H, W):
    resized (bilinear, antialiased), RGB made grey by luminance or grey repeated to RGB."""
    import torch
    import torch.nn.functional as F

    from ..data import load_images

    src = load_images(path, split=split, limit=limit)
    if len(src) == 0:
        raise SpecError(f"refool source {path} holds no images")
    x = torch.from_numpy(np.ascontiguousarray(src.x, dtype=np.float32))
    c, h, w = shape
    if x.shape[1] == 3 and c == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and c == 3:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != c:
        raise SpecError(f"refool source {path} has {x.shape[1]}-channel images, the data {c}-channel")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).numpy()


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of NCHW images over H and W (edge padding), float32."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(kernel[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(len(kernel)))
    return out.astype(np.float32)
