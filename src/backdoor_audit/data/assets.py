"""Files shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DataError


def demo_sample_path() -> Path:
    """Path of the bundled MNIST sample (6000 train / 1000 test images, uint8)."""
    path = Path(str(resources.files("backdoor_audit").joinpath("assets", "mnist_sample.npz")))
    if not path.is_file():
        raise DataError(f"the bundled demo sample {path} is missing; reinstall backdoor-audit")
    return path
