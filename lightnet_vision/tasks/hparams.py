"""Keep a task's saved hyperparameters loadable.

The CLI links data attributes (num_classes, in_chans, img_size, class_names) into every task and backbone, and
Lightning records each linked value in the hyperparameters even where the chosen class has no such argument. Left
there, `load_from_checkpoint` and `--ckpt_path` would refuse the checkpoint; so each task drops them, and drops
the Python objects (a backbone built in code, a lambda optimizer) that a config cannot re-create.
"""

import importlib
import inspect
from typing import Any

from lightning.pytorch import LightningModule
from torch import nn


def _accepts(cls: type) -> tuple[set[str], bool]:
    parameters = inspect.signature(cls).parameters.values()
    names = {p.name for p in parameters}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _import(class_path: str) -> type | None:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    cls = _import(config.get("class_path", ""))
    init_args = config.get("init_args")
    if cls is None or not isinstance(init_args, dict):
        return config
    names, any_keyword = _accepts(cls)
    if not any_keyword:
        init_args = {key: value for key, value in init_args.items() if key in names}
    return {**config, "init_args": init_args}


def save_task_hyperparameters(module: LightningModule, frame_depth: int = 1) -> None:
    """`module.save_hyperparameters()` minus link values the classes do not take and objects no config can rebuild."""
    frame = inspect.currentframe()
    for _ in range(frame_depth):
        frame = frame.f_back
    module.save_hyperparameters(frame=frame)
    names, _ = _accepts(type(module))
    for key in list(module.hparams):
        value = module.hparams[key]
        if key.startswith("_"):
            continue
        if key not in names or isinstance(value, nn.Module) or callable(value):
            del module.hparams[key]
        elif isinstance(value, dict) and "class_path" in value:
            module.hparams[key] = _clean_config(value)


def restore_task_hyperparameters(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """After `load_from_checkpoint`, put back the config entries `save_task_hyperparameters` could not rebuild from
    the objects it was given (the backbone's class_path and init_args), so the module saves a loadable checkpoint."""
    for key, value in checkpoint.get("hyper_parameters", {}).items():
        if key not in module.hparams:
            module.hparams[key] = value
