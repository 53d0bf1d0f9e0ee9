"""The in-memory image set every other part of the tool passes around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


UNLABELED = -1


@dataclass
class ImageSet:
    """Images as float32 NCHW in [0, 1] with int64 labels (``UNLABELED``, -1, for images of a folder
    without class subfolders: usable where labels are not, e.g. a distillation defence).

    ``classes`` holds class names when the source had them (image folders), else None.
    ``source`` names where the images came from, for error messages and provenance.
    """

    x: np.ndarray  # float32, NCHW, values in [0, 1]
    y: np.ndarray  # int64
    classes: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: np.ndarray | list[int] | slice) -> "ImageSet":
        """Return the images at ``idx`` (an index array, mask or slice) as a new set."""
        return ImageSet(x=self.x[idx], y=self.y[idx], classes=self.classes, source=self.source)

    def save(self, path, *, compress: bool = True) -> None:
        """Write the set atomically as an .npz every loader here reads: ``x`` uint8 NCHW, ``y``, and
        ``classes`` when known. ``compress`` False writes faster and larger (a scratch copy)."""
        from pathlib import Path

        from ..util import atomic_output

        x8 = np.rint(self.x * 255.0).astype(np.uint8)
        extra = {"classes": np.array(self.classes, dtype=str)} if self.classes else {}
        with atomic_output(Path(path)) as tmp:
            with open(tmp, "wb") as fh:
                (np.savez_compressed if compress else np.savez)(fh, x=x8, y=self.y, **extra)

    @property
    def labeled(self) -> bool:
        """Whether every image has a class label."""
        return not bool((self.y < 0).any())

    def require_labels(self, what: str, hint: str = "") -> None:
        """DataError, in the one wording every command uses, when ``what`` cannot take this set
        because it has no labels; ``hint`` follows (e.g. what does take unlabeled images)."""
        if not self.labeled:
            from ..errors import DataError

            raise DataError(f"{self.source or 'the given set'}: {what} needs labeled images (<class>/<image> "
                            f"folders, or an npz with y) and these have none{hint}")

    @property
    def num_classes(self) -> int:
        """Number of classes: the class-name list if known, else ``max(y) + 1``."""
        if self.classes:
            return len(self.classes)
        return int(self.y.max()) + 1 if len(self.y) else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)
