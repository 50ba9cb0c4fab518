"""Every ready-made config parses and instantiates through the CLI, so a config can never rot (litgpt's habit)."""

import sys
from pathlib import Path

import pytest
import torch
import yaml
from classification_helpers import write_image_folder

from lightnet_vision.cli import build_cli
from lightnet_vision.datamodules import ImageFolderDataModule

REPO_ROOT = Path(__file__).resolve().parents[1]
# Config folders with a test here; add a folder and its overrides below when its task lands.
TESTED_FOLDERS = ("classification",)
CONFIGS = [
    path.relative_to(REPO_ROOT)
    for path in sorted((REPO_ROOT / "configs").rglob("*.yaml"))
    if path.relative_to(REPO_ROOT / "configs").parts[0] in TESTED_FOLDERS
]
TINY_TRAINER = (
    "--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto --trainer.precision 32-true "
    "--trainer.enable_progress_bar false"
).split()


def classification_overrides(config: Path, tmp_path: Path) -> list[str]:
    backbone = "--model.init_args.model.init_args"
    tiny = [f"{backbone}.embed_dim", "16", f"{backbone}.depth", "1", f"{backbone}.num_heads", "2"]
    data = ["--data.init_args.num_workers", "0"]
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
    if data_class == "ImageFolderDataModule":
        data += ["--data.init_args.root", str(write_image_folder(tmp_path / "images", splits=("train", "val")))]
    elif data_class == "TorchvisionDataModule":
        data += ["--data.init_args.root", str(tmp_path / "absent")]  # no files: __init__ must not need them
    return tiny + data


OVERRIDES = {"classification": classification_overrides}


def test_configs_are_found():
    names = {path.name for path in CONFIGS if path.parts[1] == "classification"}
    assert {"debug.yaml", "digits.yaml", "cifar10_lightnet_tiny.yaml", "imagenet_lightnet_tiny.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_instantiates_with_linked_values(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write relative paths such as runs/...
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])  # LightningCLI warns about pytest's own command line
    folder = config.parts[1]
    args = ["--config", str(REPO_ROOT / config), *TINY_TRAINER, *OVERRIDES[folder](REPO_ROOT / config, tmp_path)]
    cli = build_cli(args, run=False)
    data, task, backbone = cli.datamodule, cli.model, cli.model.model
    assert backbone.embed_dim == 16 and len(backbone.blocks) == 1
    assert backbone.num_classes == data.num_classes
    assert backbone.in_chans == data.in_chans == backbone.patch_embed.proj.in_channels
    assert backbone.img_size == data.image_size
    assert task.class_names == data.class_names
    if isinstance(data, ImageFolderDataModule):
        assert data.class_names == ["ant", "cat", "zebra"]
    # The config's patch size fits its image size: one evaluation-sized image runs through the model.
    with torch.no_grad():
        logits = task.eval()(torch.zeros(1, data.in_chans, data.image_size, data.image_size))
    assert logits.shape == (1, data.num_classes)
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"
