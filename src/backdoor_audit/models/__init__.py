"""Registered architectures; importing this package registers them all."""

from .registry import build_model, list_models, register_model

from . import mnist_cnn  # noqa: E402,F401  registers "mnist-cnn" and "mnist-cnn-bn"
from . import small_resnet  # noqa: E402,F401  registers "small-resnet"
from . import resnet  # noqa: E402,F401  registers "resnet-18"
from . import preact_resnet  # noqa: E402,F401  registers "preact-resnet-18"
from . import vgg  # noqa: E402,F401  registers "vgg-bn"
from . import mobilenetv2  # noqa: E402,F401  registers "mobilenetv2"
from . import wide_resnet  # noqa: E402,F401  registers "wrn-28-1"
from . import mnist_fc  # noqa: E402,F401  registers "mnist-fc"

__all__ = ["build_model", "list_models", "register_model"]
