"""Data → task → backbone: the DataModule's `data_info` sets the task and its backbone once, nothing is skipped
silently, and a checkpoint alone (with a folder of images) is enough to predict."""

import csv
import sys
from pathlib import Path

import pytest
import torch
from classification_helpers import write_image_folder
from jsonargparse import Namespace
from torch import nn

from lightnet_vision.cli import build_cli
from lightnet_vision.contract import apply_data_info
from lightnet_vision.datamodules import DigitsDataModule, ImageFolderDataModule
from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.tasks import Autoencoder, ImageClassification, LatentDiffusion

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")
QUIET = "--trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.enable_model_summary false".split()
INFO = DataInfo(image_size=16, in_chans=3, num_classes=5, class_names=list("abcde"))


class NoImageSize(nn.Module):
    """A classifier backbone that takes classes and channels but no image size (a CNN, say)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Linear(in_chans, num_classes)


class NoClasses(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()


def task_config(backbone: str, task: str = "lightnet_vision.tasks.ImageClassification", **task_args) -> Namespace:
    backbone_config = Namespace(class_path=backbone, init_args=Namespace())
    return Namespace(class_path=task, init_args=Namespace(model=backbone_config, **task_args))


def test_the_classifier_backbone_gets_timm_keywords_from_the_data():
    config = task_config("lightnet_vision.models.LightNet")
    apply_data_info(config, INFO)
    backbone = config.init_args.model.init_args
    assert (backbone.num_classes, backbone.in_chans, backbone.img_size) == (5, 3, 16)
    assert DataInfo.coerce(config.init_args.data_info) == INFO


def test_the_denoiser_gets_dit_keywords_through_its_first_stage():
    config = task_config("lightnet_vision.models.LightNetDiT", "lightnet_vision.tasks.LatentDiffusion")
    apply_data_info(config, DataInfo(image_size=8, in_chans=1, num_classes=10))
    backbone = config.init_args.model.init_args
    assert (backbone.num_classes, backbone.in_channels, backbone.input_size) == (10, 1, 8)  # pixel space


def test_an_unconditional_denoiser_keeps_its_own_classes():
    config = task_config("lightnet_vision.models.LightNetDiT", "lightnet_vision.tasks.LatentDiffusion")
    config.init_args.class_conditional = False
    apply_data_info(config, DataInfo(image_size=8, in_chans=1, num_classes=10))
    assert "num_classes" not in config.init_args.model.init_args


def test_a_keyword_the_backbone_lacks_is_named_not_skipped():
    config = task_config(f"{__name__}.NoImageSize")
    with pytest.warns(UserWarning, match=r"NoImageSize takes no `img_size`: the data's img_size=16"):
        apply_data_info(config, INFO)
    assert config.init_args.model.init_args.num_classes == 5
    with pytest.raises(ValueError, match=r"NoClasses takes no `num_classes`, which ImageClassification sets"):
        apply_data_info(task_config(f"{__name__}.NoClasses"), INFO)


def test_data_info_from_a_checkpoint_is_typed_again():
    info = DataInfo.coerce({"image_size": "16", "in_chans": 3, "num_classes": 2, "class_names": [0, 1]})
    assert info == DataInfo(16, 3, 2, ["0", "1"])
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        DataInfo.coerce({"image_size": 16, "in_chans": 3, "colour": "red"})


def test_every_built_in_image_datamodule_describes_its_data(tmp_path):
    digits = DigitsDataModule(image_size=16).data_info
    assert digits == DataInfo(16, 1, 10, [str(d) for d in range(10)], digits.mean, digits.std)
    folder = ImageFolderDataModule(str(write_image_folder(tmp_path / "images")), image_size=16).data_info
    assert (folder.num_classes, folder.class_names, folder.in_chans) == (3, ["ant", "cat", "zebra"], 3)


def test_the_autoencoder_has_weight_decay_groups_and_a_schedule():
    from lightnet_vision.models.autoencoder import KLAutoencoder

    model = KLAutoencoder(in_chans=1, block_out_channels=[8, 16], latent_channels=2, norm_num_groups=4)
    task = Autoencoder(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
        lr_scheduler=lambda optimizer, total, per_epoch: torch.optim.lr_scheduler.LinearLR(
            optimizer, total_iters=total
        ),
    )
    task.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 10, "num_training_batches": 5})()
    task.trainer.accumulate_grad_batches = 1
    configured = task.configure_optimizers()
    decay, no_decay = configured["optimizer"].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert configured["lr_scheduler"]["interval"] == "step"


@pytest.mark.slow
def test_predict_needs_only_a_checkpoint_and_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", splits=("train", "val"))
    data = ["--data", "lightnet_vision.datamodules.ImageFolderDataModule", "--data.init_args.image_size", "16"]
    outputs = ["--trainer.default_root_dir", str(tmp_path / "fit")]
    fit = build_cli(
        [
            "fit",
            "--config",
            DEBUG,
            *QUIET,
            *outputs,
            *data,
            "--data.init_args.root",
            str(root),
            "--trainer.max_steps",
            "1",
        ]
    )
    checkpoint = fit.trainer.checkpoint_callback.best_model_path or fit.trainer.checkpoint_callback.last_model_path
    # A folder of new images and no training tree: the classes come from the checkpoint.
    photos = write_image_folder(tmp_path / "photos", splits=("new",)) / "new"
    empty_root = tmp_path / "nothing_here"
    predict = ["--data.init_args.root", str(empty_root), "--data.init_args.predict_dir", str(photos)]
    run = build_cli(["predict", "--config", DEBUG, *QUIET, *data, *predict, "--ckpt_path", checkpoint])
    assert isinstance(run.model, ImageClassification) and run.model.class_names == ["ant", "cat", "zebra"]
    (csv_path,) = Path(run.trainer.log_dir or run.trainer.default_root_dir).rglob("predictions.csv")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["class"] for row in rows} <= {"ant", "cat", "zebra"}
    assert not isinstance(run.model, LatentDiffusion)


def test_a_minimal_image_datamodule_predicts_with_the_default_transform(tmp_path):
    from classification_helpers import write_digit_pngs

    from lightnet_vision.datamodules import ImageDataModule

    class Minimal(ImageDataModule):  # what a user's own DataModule sets: the data's description, nothing more
        def __init__(self, predict_dir: str) -> None:
            super().__init__(batch_size=2, num_workers=0, predict_dir=predict_dir)
            self.image_size, self.in_chans, self.num_classes = 12, 1, 10

    write_digit_pngs(tmp_path / "images", 3)
    images, paths = next(iter(Minimal(str(tmp_path / "images")).predict_dataloader()))
    assert images.shape == (2, 1, 12, 12) and images.dtype == torch.float32 and len(paths) == 2


def test_data_that_does_not_say_what_the_backbone_needs_is_an_error():
    with pytest.raises(ValueError, match=r"ImageClassification sets the backbone's `num_classes` from the data"):
        apply_data_info(task_config("lightnet_vision.models.LightNet"), DataInfo(image_size=16, in_chans=3))
