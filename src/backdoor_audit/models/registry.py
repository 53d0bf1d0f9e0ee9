"""Architecture registry: ``@register_model(name)`` on a builder, ``build_model(name, ...)`` to use it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import SpecError

ModelBuilder = Callable[[tuple[int, int, int], int], nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``fn(in_shape, num_classes) -> nn.Module`` under ``name``."""

    def decorate(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not fn:
            raise SpecError(f"model name {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return decorate


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the registered architecture ``name`` for (C, H, W) inputs and ``num_classes`` outputs."""
    if name not in _MODELS:
        raise SpecError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if len(in_shape) != 3 or any(int(d) <= 0 for d in in_shape):
        raise SpecError(f"input shape must be (C, H, W) with positive sizes, got {tuple(in_shape)}")
    if num_classes < 2:
        raise SpecError(f"a classifier needs at least 2 classes, got {num_classes}")
    return _MODELS[name](tuple(int(d) for d in in_shape), int(num_classes))


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_MODELS)
