"""A small model registry in the style of timm: presets register themselves by function name."""

import fnmatch
from collections.abc import Callable

from torch import nn

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a preset function under its own name."""
    _model_entrypoints[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(name for name in _model_entrypoints if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword arguments override the preset (`num_classes`, `img_size`, ...)."""
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _model_entrypoints[name](**overrides)
