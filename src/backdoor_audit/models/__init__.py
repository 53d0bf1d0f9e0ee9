"""Registered architectures; importing this package registers them all."""

from .registry import build_model, list_models, register_model

from . import mnist_cnn  # noqa: E402,F401  registers "mnist-cnn" and "mnist-cnn-bn"
from . import small_resnet  # noqa: E402,F401  registers "small-resnet"

__all__ = ["build_model", "list_models", "register_model"]
