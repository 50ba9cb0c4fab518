"""A small model registry in the style of timm. A preset is a function, named after the preset, that returns the
keyword arguments it gives its backbone class; `register_model(Backbone)` records it. The preset is declared once:
`create_model("lightnet_small")` builds it, and a config names it through the backbone's own `preset` argument
(`LightNet(preset="lightnet_small")`), which `preset_arguments` resolves.
"""

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

PresetFn = Callable[[], dict[str, Any]]

_presets: dict[str, tuple[type[nn.Module], PresetFn]] = {}


def register_model(model_cls: type[nn.Module]) -> Callable[[PresetFn], PresetFn]:
    """Register the decorated function as a preset of `model_cls` (a class that takes `preset=`), under its name."""

    def register(fn: PresetFn) -> PresetFn:
        _presets[fn.__name__] = (model_cls, fn)
        return fn

    return register


def list_models(pattern: str = "*", model_cls: type[nn.Module] | None = None) -> list[str]:
    """Registered preset names matching a shell-style pattern (of `model_cls` only, when given), sorted."""
    return sorted(
        name
        for name, (cls, _) in _presets.items()
        if fnmatch.fnmatch(name, pattern) and (model_cls is None or cls is model_cls)
    )


def preset_arguments(name: str, model_cls: type[nn.Module] | None = None) -> dict[str, Any]:
    """The keyword arguments a registered preset (of `model_cls`, when given) sets."""
    names = list_models(model_cls=model_cls)
    if name not in names:
        of = "" if model_cls is None else f" of {model_cls.__name__}"
        raise ValueError(f"unknown preset {name!r}{of}; registered presets{of}: {', '.join(names)}")
    return dict(_presets[name][1]())


def fill_from_preset(model_cls: type[nn.Module], preset: str | None, **given: Any) -> dict[str, Any]:
    """The arguments in `given`, in its order, each one left None taken from the preset: one given explicitly wins."""
    arguments = {} if preset is None else preset_arguments(preset, model_cls)
    if extra := sorted(arguments.keys() - given.keys()):
        raise TypeError(f"preset {preset!r} sets {extra}; {model_cls.__name__} takes only {sorted(given)} from one")
    arguments.update({key: value for key, value in given.items() if value is not None})
    if missing := [key for key in given if key not in arguments]:
        raise ValueError(
            f"{model_cls.__name__} needs {', '.join(missing)}: give them or a preset "
            f"({', '.join(list_models(model_cls=model_cls))})"
        )
    return {key: arguments[key] for key in given}


def create_model(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: dict[str, Any] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    features_only: bool = False,
    out_indices: int | list[int] = 3,
    **overrides,
) -> nn.Module:
    """Build a registered preset; keyword arguments override it (`num_classes`, `img_size`, `depth`, ...).

    timm's keywords: `pretrained=True` loads the weights the model's pretrained_cfg names, as updated by the entries
    of `pretrained_cfg` (the weights' description) and then `pretrained_cfg_overlay`: `file` (a folder written by
    `save_pretrained`, a `.safetensors` or `.pth` state dict, a task checkpoint) or `hf_hub_id` (a Hub repository).
    No weights are published yet, so without one it raises, saying so. A classifier given another `num_classes`
    than the weights' keeps its fresh head. `features_only=True` returns timm's feature extractor of a classifier
    (`FeatureGetterNet`, needs timm): a list of `[B, D, h, w]` maps from the blocks `out_indices` (an int n: the
    last n), described by its `feature_info`.
    """
    if name not in _presets:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    model_cls, _ = _presets[name]
    model = model_cls(preset=name, **overrides)
    # The weights' description over the model's own (a classifier's names its head and first layer).
    cfg = {**(getattr(model, "pretrained_cfg", None) or {"architecture": name}), **(pretrained_cfg or {})}
    cfg.update(pretrained_cfg_overlay or {})
    if hasattr(model, "pretrained_cfg"):  # the denoisers have none: they are not timm models
        model.pretrained_cfg = model.default_cfg = cfg
    if pretrained:
        from lightnet_vision.models.hub import load_pretrained

        load_pretrained(model, cfg)
    if features_only:
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{name} is not an image classifier: it has no features_only form")
        try:
            from timm.models._features import FeatureGetterNet
        except ImportError as error:
            raise ImportError("features_only wraps the model in timm's FeatureGetterNet: pip install timm") from error
        model = FeatureGetterNet(model, out_indices=out_indices)
    return model
