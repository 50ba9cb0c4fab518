"""The LightNet classifiers in timm's model registry, so that timm's own tools take them by name.

timm finds a model only in its own registry and has no plug-in hook, so registering is one explicit call:

    import timm
    from lightnet_vision.models import timm_models

    timm_models.register()
    model = timm.create_model("lightnet_tiny", num_classes=10)      # also pretrained=, features_only=, ...
    config = timm.data.resolve_data_config({}, model=model)

Each preset is built through timm's `build_model_with_cfg`, so timm's keywords behave as for its own models:
`pretrained` (no weights are published: timm says so, or loads the `file` / `hf_hub_id` of `pretrained_cfg_overlay`),
`features_only` and `out_indices` (timm's `FeatureGetterNet` over `forward_intermediates`), and the folders and Hub
repositories written by `save_pretrained` (`create_model("local-dir:<path>")`, `create_model("hf-hub:<id>")`).

timm's scripts (train.py, validate.py, inference.py of its repository) run with the presets registered when started
through this module:

    python -m lightnet_vision.models.timm_models path/to/train.py --model lightnet_tiny --model-kwargs depth=6 ...
"""

import runpy
import sys
from typing import Any

from lightnet_vision.models._registry import list_models
from lightnet_vision.models.lightnet import LightNet


def _entrypoint(name: str):
    def build(pretrained: bool = False, **kwargs: Any) -> LightNet:
        from timm.models import build_model_with_cfg

        kwargs.setdefault("preset", name)
        if kwargs.get("pretrained_cfg") is None:
            # timm's registered cfg describes the default build; this one the model as asked for (channels, size,
            # classes), as LightNet's own pretrained_cfg does.
            shape = {key: kwargs[key] for key in ("in_chans", "img_size", "num_classes") if key in kwargs}
            kwargs["pretrained_cfg"] = LightNet.input_config(name, **shape)
        return build_model_with_cfg(
            LightNet,
            name,
            pretrained,
            feature_cfg={"feature_cls": "getter", "out_indices": 3},
            **kwargs,
        )

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"LightNet preset {name} through timm's build_model_with_cfg."
    return build


def _default_cfgs() -> dict:
    from timm.models import generate_default_cfgs

    return generate_default_cfgs({name: LightNet.input_config(name) for name in list_models(model_cls=LightNet)})


def register() -> list[str]:
    """Puts every LightNet preset in timm's registry (once; calling again changes nothing) and returns their names."""
    import timm
    from timm.models import register_model

    names = list_models(model_cls=LightNet)
    module = sys.modules[__name__]
    if not hasattr(module, "default_cfgs"):
        # timm's register_model reads the pretrained cfgs of an entry point from its module's `default_cfgs`.
        module.default_cfgs = _default_cfgs()
    for name in names:
        if not timm.is_model(name):
            register_model(_entrypoint(name))
    return names


def main(argv: list[str] | None = None) -> None:
    """`python -m lightnet_vision.models.timm_models SCRIPT [ARGS...]`: runs a timm script as `__main__` with the
    LightNet presets registered."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    register()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    # The entry points must live in the importable module (timm records the module of each), not in __main__.
    from lightnet_vision.models.timm_models import main as run

    run()
