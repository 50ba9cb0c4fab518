"""Data → task → backbone: how the CLI hands a DataModule's `data_info` to the task and the task's backbone.

Before the task is built, the task class says which backbone keywords the data decides (`Task.backbone_arguments`:
`num_classes`, `in_chans`, `img_size` for a classifier in timm's names; `num_classes`, `in_channels`, `input_size` for
a denoiser in DiT's, through its first stage) and they are written into the backbone's config, so that a config never
types them and the saved config shows them. A keyword the task requires and the backbone lacks is an error naming
both; one it does not require is left out with a warning naming it. Nothing is skipped silently.
"""

import importlib
import inspect
import warnings
from typing import Any

from jsonargparse import Namespace

from lightnet_vision.datamodules.data_info import DataInfo


def import_class(class_path: str) -> type | None:
    """The class at `module.Name`; None when it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _accepted(cls: type) -> tuple[set[str], bool]:
    parameters = inspect.signature(cls).parameters.values()
    return {p.name for p in parameters}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def apply_data_info(task_config: Namespace, data_info: DataInfo) -> None:
    """Writes `data_info` into the task's config (`data_info`) and what it decides into the backbone's config
    (`model.init_args`), in place. A task class that takes no `data_info` (a user's own LightningModule) is left
    as it is."""
    task_cls = import_class(task_config.get("class_path", "") or "")
    init_args = task_config.get("init_args")
    if task_cls is None or init_args is None or "data_info" not in _accepted(task_cls)[0]:
        return
    previous = DataInfo.coerce(init_args.get("data_info"))  # from a checkpoint given with --ckpt_path
    data_info = _fill_unknown(data_info, previous)
    init_args["data_info"] = data_info.as_dict()
    backbone = init_args.get("model")
    if not isinstance(backbone, Namespace) or "class_path" not in backbone:
        return  # a backbone given as an object: the task's setup checks it against the data
    backbone_cls = import_class(backbone["class_path"])
    if backbone_cls is None:
        return  # jsonargparse has already reported a class it cannot import
    arguments = task_cls.backbone_arguments(data_info, _plain(init_args))
    names, any_keyword = _accepted(backbone_cls)
    for key, value in arguments.items():
        if value is None and key in task_cls.required_backbone_arguments:
            raise ValueError(
                f"{task_cls.__name__} sets the backbone's `{key}` from the data, but the DataModule's data_info gives "
                f"none: set it in the DataModule's __init__ (see ImageDataModule)"
            )
        if value is None:
            continue
        if key in names or any_keyword:
            backbone["init_args"][key] = value
        elif key in task_cls.required_backbone_arguments:
            raise ValueError(
                f"the backbone {backbone['class_path']} takes no `{key}`, which {task_cls.__name__} sets from the "
                f"data ({key}={value}); give it a backbone that takes `{key}`"
            )
        else:
            warnings.warn(
                f"{backbone['class_path']} takes no `{key}`: the data's {key}={value} is not passed to it",
                stacklevel=2,
            )


def _fill_unknown(data_info: DataInfo, previous: DataInfo | None) -> DataInfo:
    # A DataModule that only predicts (a folder of images) may not know the classes: the checkpoint's say them.
    if previous is None:
        return data_info
    values = data_info.as_dict()
    for key, value in previous.as_dict().items():
        if values[key] is None:
            values[key] = value
    return DataInfo(**values)


def _plain(init_args: Namespace) -> dict[str, Any]:
    return init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
