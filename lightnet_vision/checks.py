"""Agreement between the data and the network, checked before the first step: by the tasks' `setup`, and for a
checkpoint given to the CLI (`--ckpt_path`), by the CLI once it has built model and data.

The CLI sets the backbone's classes, channels and size from the DataModule's `data_info`
(lightnet_vision/contract.py), so they disagree only when a task built in Python meets other data, or when a
checkpoint trained on one dataset is resumed, tested or used to predict on another. Each case would otherwise
surface as a shape error deep inside a step (or, for a denoiser given one class too many, as a class silently
trained as "no class"); here it fails naming the data, the checkpoint and both numbers.
"""

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import LightningDataModule
from torch import nn

from lightnet_vision.checkpoints import load_checkpoint
from lightnet_vision.contract import import_class
from lightnet_vision.datamodules.data_info import DataInfo

if TYPE_CHECKING:  # diffusers, which the CLI does not need to start
    from lightnet_vision.models.first_stage import FirstStage


def describe_data(datamodule: LightningDataModule) -> str:
    """The DataModule as an error message names it: its class and the folder it reads."""
    for attribute in ("root", "cache_dir"):
        path = getattr(datamodule, attribute, None)
        if path is not None:
            return f"{type(datamodule).__name__} at {path}"
    return type(datamodule).__name__


def data_info_of(datamodule: LightningDataModule) -> DataInfo | None:
    """The DataModule's description of its data; None for a DataModule that gives none."""
    return getattr(datamodule, "data_info", None)


def check_classes(datamodule: LightningDataModule, model: nn.Module) -> None:
    """The data's `num_classes` equals the network's."""
    info = data_info_of(datamodule)
    data_classes, model_classes = info and info.num_classes, getattr(model, "num_classes", None)
    if data_classes is not None and model_classes is not None and data_classes != model_classes:
        raise ValueError(
            f"{describe_data(datamodule)} has {data_classes} classes but the model {type(model).__name__} has "
            f"num_classes={model_classes}; build the backbone with num_classes={data_classes} (the CLI sets it from "
            "the data), or point the data at the dataset the model was made for"
        )


def check_channels(
    datamodule: LightningDataModule, model_channels: int | None, expected: int | None, what: str
) -> None:
    """The network takes `expected` input channels (`what` says where that number comes from)."""
    if model_channels is not None and expected is not None and model_channels != expected:
        raise ValueError(
            f"{describe_data(datamodule)} gives {what} with {expected} channels but the model takes {model_channels}"
        )


def check_patch_grid(datamodule: LightningDataModule, side: int, patch_size: int | None, what: str) -> None:
    """`side` (the input side the network sees, described by `what`) divides into whole patches."""
    if patch_size is not None and side % patch_size:
        raise ValueError(
            f"{describe_data(datamodule)}: {what} {side} is not divisible by the model's patch size {patch_size}; "
            f"use a size that is a multiple of {patch_size} (data.init_args.image_size)"
        )


def check_checkpoint_task(ckpt_path: str | Path | None, task_class_path: str | None) -> None:
    """A checkpoint given to the CLI was saved by the task the config names (or a subclass of it, or its parent).

    The CLI calls it before it merges the checkpoint's hyperparameters into the config, where another task's would
    fail as a type error the length of the whole config. A checkpoint written through the CLI names its task
    (`_class_path`); one saved from Python does not, and then its hyperparameters must be arguments of the task."""
    if ckpt_path is None or task_class_path is None or not Path(ckpt_path).is_file():
        return
    hparams = load_checkpoint(ckpt_path, mmap=True).get("hyper_parameters", {})
    task, name = import_class(task_class_path), task_class_path.rsplit(".", 1)[-1]
    saved = hparams.get("_class_path")
    if saved is not None:
        saved_class, saved_name = import_class(saved), saved.rsplit(".", 1)[-1]
        if saved_class is not None and task is not None:
            if issubclass(task, saved_class) or issubclass(saved_class, task):
                return
        elif saved_name == name:
            return
        raise ValueError(
            f"checkpoint {ckpt_path} was saved by task {saved_name}, this config trains {name}; give --ckpt_path a "
            f"checkpoint of {name}, or use the checkpoint with a config of {saved_name} ({saved})"
        )
    if task is None:
        return
    parameters = inspect.signature(task).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    foreign = sorted(key for key in hparams if not key.startswith("_") and key not in parameters)
    if foreign:
        raise ValueError(
            f"checkpoint {ckpt_path} was not saved by task {name}: its hyperparameters {', '.join(foreign[:4])} are "
            f"not arguments of {name}; give --ckpt_path a checkpoint of {name}"
        )


def check_checkpoint_classes(datamodule: LightningDataModule | None, ckpt_path: str | Path | None) -> None:
    """A checkpoint about to be restored was trained on the data's classes (by count, and by name where both
    record names), read from the hyperparameters it saved; nothing to check without a local checkpoint file.

    The CLI calls it once model and data are built: the Trainer restores a checkpoint after the task's `setup`, and
    does not tell `setup` which checkpoint it will restore."""
    if datamodule is None or ckpt_path is None or not Path(ckpt_path).is_file():
        return
    hparams = load_checkpoint(ckpt_path, mmap=True).get("hyper_parameters", {})
    backbone = hparams.get("model")
    init_args = backbone.get("init_args", {}) if isinstance(backbone, dict) else {}
    info = data_info_of(datamodule)
    trained_info = DataInfo.coerce(hparams["data_info"]).as_dict() if hparams.get("data_info") else {}
    trained, data_classes = init_args.get("num_classes"), info and info.num_classes
    if trained is not None and data_classes is not None and trained != data_classes:
        raise ValueError(
            f"checkpoint {ckpt_path} was trained on {trained} classes but {describe_data(datamodule)} has "
            f"{data_classes}"
        )
    trained_names, data_names = trained_info.get("class_names"), info and info.class_names
    if trained_names and data_names and list(trained_names) != list(data_names):
        pairs = zip(trained_names, data_names, strict=False)
        first = next((i for i, (trained_name, name) in enumerate(pairs) if trained_name != name), None)
        detail = (
            f"class {first} is {trained_names[first]!r} in the checkpoint and {data_names[first]!r} in the data"
            if first is not None
            else f"{len(trained_names)} class names in the checkpoint, {len(data_names)} in the data"
        )
        raise ValueError(
            f"checkpoint {ckpt_path} was trained on other classes than {describe_data(datamodule)}: {detail}"
        )


def check_classifier_data(datamodule: LightningDataModule | None, model: nn.Module) -> None:
    """Classes, channels and patch grid of an image classifier against its data."""
    if datamodule is None:  # dataloaders given directly: nothing describes them
        return
    info = data_info_of(datamodule)
    if info is None:
        return
    check_classes(datamodule, model)
    check_channels(datamodule, getattr(model, "in_chans", None), info.in_chans, "images")
    check_patch_grid(datamodule, info.image_size, getattr(model, "patch_size", None), "the image size")


def check_denoiser_data(
    datamodule: LightningDataModule | None,
    model: nn.Module,
    first_stage: "FirstStage",
    class_conditional: bool,
) -> None:
    """Classes, latent channels and latent patch grid of a denoiser against its data and first stage."""
    info = data_info_of(datamodule)
    if info is None:
        return
    if class_conditional:
        check_classes(datamodule, model)
    in_chans = info.in_chans
    if first_stage.latent_channels is None:
        check_channels(datamodule, getattr(model, "in_channels", None), in_chans, "images")
    else:
        check_channels(datamodule, getattr(model, "in_channels", None), first_stage.latent_channels, "latents")
    image_size, factor = info.image_size, first_stage.downsample_factor
    if image_size is not None:
        if image_size % factor:
            raise ValueError(
                f"{describe_data(datamodule)}: the image size {image_size} is not divisible by the first stage's "
                f"downsampling factor {factor}"
            )
        what = "the image size" if factor == 1 else f"the latent side (image size {image_size} / {factor})"
        check_patch_grid(datamodule, image_size // factor, getattr(model, "patch_size", None), what)
