"""Bad data: an image folder as real ones come (corrupt, truncated and non-image files, every PIL mode, empty class
folders), and data that disagrees with the model; each either loads or fails at setup naming what is wrong."""

import gc
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from classification_helpers import CLASS_LEVELS, IMAGE_FORMATS, cpu_trainer, write_image, write_image_folder
from diffusion_helpers import tiny_digits, tiny_dit
from PIL import Image, ImageFile

from lightnet_vision.cli import build_cli
from lightnet_vision.datamodules import ImageFolderDataModule
from lightnet_vision.datamodules.datasets import ImageFileDataset
from lightnet_vision.datamodules.images import UnreadableImageError, load_image
from lightnet_vision.models import LightNet
from lightnet_vision.tasks import ImageClassification, LatentDiffusion

CLASSES = sorted(CLASS_LEVELS)
# The warnings of the messy folder that a test does not check itself (pytest.warns still records them).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*files without an image extension"),
    pytest.mark.filterwarnings("ignore:.*class folders hold no images"),
]
CLASSIFICATION_DEBUG = str(Path(__file__).resolve().parents[2] / "configs" / "classification" / "debug.yaml")


def write_bad_files(folder: Path) -> list[Path]:
    """Three files with image extensions that cannot be decoded: a truncated JPEG, text named .png, an empty .jpg."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    truncated, text, empty = folder / "truncated.jpg", folder / "notes_as.png", folder / "empty.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not an image\n" * 20)
    empty.write_bytes(b"")
    return [truncated, text, empty]


@pytest.fixture
def messy(tmp_path) -> tuple[Path, list[Path]]:
    """The mixed-mode folder of the classification tests plus unreadable files in train/cat and val/ant, a text file
    and a hidden file."""
    root = write_image_folder(tmp_path / "images", splits=("train", "val"))
    bad = write_bad_files(root / "train" / "cat") + write_bad_files(root / "val" / "ant")
    (root / "train" / "zebra" / "labels.txt").write_text("zebra\n")
    (root / "train" / "zebra" / ".DS_Store").write_bytes(b"\0")
    return root, bad


def plain(**overrides) -> dict:
    # No colour jitter, mean 0 and std 1: pixels stay at value/255, so the grey level (the class) can be read back.
    resize = [{"__class_fullname__": "Resize", "height": 16, "width": 16}]
    kwargs = {"image_size": 16, "train_transforms": resize, "mean": (0.0,) * 3, "std": (1.0,) * 3}
    return {**kwargs, "num_workers": 0, "batch_size": 32, **overrides}  # one batch: every file is read each epoch


def skipped_warnings(records) -> list[str]:
    return [str(record.message) for record in records if str(record.message).startswith("skipped")]


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_unreadable_files_are_skipped_and_listed_once(messy, num_workers):
    root, bad = messy
    data = ImageFolderDataModule(str(root), **plain(num_workers=num_workers))
    with pytest.warns(UserWarning, match=r"ignored 1 files without an image extension: .*labels\.txt") as setup:
        data.setup("fit")
    assert not any(".DS_Store" in str(record.message) for record in setup)  # hidden files are ignored quietly
    per_split = len(CLASSES) * len(IMAGE_FORMATS)
    assert (len(data.train_set), len(data.val_set)) == (per_split + 3, per_split + 3)  # an epoch keeps its length
    for loader in (data.train_dataloader(), data.val_dataloader()):
        seen = 0
        for images, labels in loader:
            # Every item is a readable image of the class it is labelled with: a replacement brings its own label.
            assert images.shape[1:] == (3, 16, 16)
            levels = images.mean(dim=(1, 2, 3)) * 255
            expected = torch.tensor([CLASS_LEVELS[CLASSES[label]] for label in labels], dtype=torch.float32)
            torch.testing.assert_close(levels, expected, rtol=0, atol=3)
            seen += len(labels)
        assert seen == len(loader.dataset)
    # The marks made in worker processes reach the main process, which lists them all in one warning.
    with pytest.warns(UserWarning) as report:
        data.report_skipped()
    (message,) = skipped_warnings(report)
    assert message.startswith(f"skipped {len(bad)} unreadable image files")
    assert sorted(message.splitlines()[1:]) == sorted(f"  {path}" for path in bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.report_skipped() == []  # already reported


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.slow
def test_error_mode_names_the_file(messy, num_workers):
    root, bad = messy
    data = ImageFolderDataModule(str(root), **plain(num_workers=num_workers, on_bad_image="error"))
    data.setup("fit")
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*(truncated\.jpg|notes_as\.png|empty\.jpg)"):
        read_all(data.val_dataloader())
    gc.collect()  # the loader's worker processes end here, within the test


def read_all(loader) -> None:
    for _ in loader:
        pass


def test_a_split_with_no_readable_image_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "cat").mkdir()
    bad = write_bad_files(tmp_path / "cat")
    dataset = ImageFileDataset([(str(path), 0) for path in bad], transform=None, in_chans=3, on_bad_image="skip")
    for index in range(2):  # the second call finds every file already marked
        with pytest.raises(UnreadableImageError, match=f"none of the 3 image files under {tmp_path} could be read"):
            dataset[index]


def test_an_unreadable_image_to_predict_on_is_an_error_even_when_skipping(messy):
    root, bad = messy
    data = ImageFolderDataModule(str(root), **plain(predict_dir=str(bad[0].parent)))  # on_bad_image: skip
    with pytest.raises(UnreadableImageError, match="cannot read image"):
        read_all(data.predict_dataloader())


def test_a_fit_over_bad_files_warns_once_listing_them(messy):
    root, bad = messy
    data = ImageFolderDataModule(str(root), **plain())
    model = LightNet(img_size=16, patch_size=8, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    task = ImageClassification(model, lr_scheduler=None)
    trainer = cpu_trainer(root.parent, max_epochs=2, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer.fit(task, datamodule=data)
    assert trainer.global_step == 2
    (message,) = skipped_warnings(records)  # found in epoch 0, listed once; epoch 1 reads none of them again
    assert sorted(message.splitlines()[1:]) == sorted(f"  {path}" for path in bad)


def test_truncated_images_are_not_accepted_silently(tmp_path, monkeypatch):
    (truncated, *_) = write_bad_files(tmp_path)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # nothing in the package switched it on
    with pytest.raises(UnreadableImageError, match=str(truncated)):
        load_image(truncated, 3)
    # Switched on by the user (or a library), truncated files load grey-filled, and setup says so.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert load_image(truncated, 3).shape == (32, 32, 3)
    root = write_image_folder(tmp_path / "images", splits=("train", "val"))
    with pytest.warns(UserWarning, match="LOAD_TRUNCATED_IMAGES is on"):
        ImageFolderDataModule(str(root), **plain()).setup("fit")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_mode_is_converted_to_the_channels_asked_for(tmp_path, in_chans):
    # The list: grayscale, RGBA, palette and 16-bit PNGs (and RGB, JPEG) in one class folder.
    for index, (mode, extension, size) in enumerate(IMAGE_FORMATS):
        write_image(tmp_path / f"{index}.{extension}", mode, size, level=140)
    for index, (mode, extension, (width, height)) in enumerate(IMAGE_FORMATS):
        image = load_image(tmp_path / f"{index}.{extension}", in_chans)
        assert image.shape == (height, width, in_chans) and image.dtype == np.uint8, mode
        assert abs(float(image.mean()) - 140) <= 2, mode


def test_empty_class_folders_are_named(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    (root / "train" / "dog").mkdir()
    data = ImageFolderDataModule(str(root), **plain())
    assert data.num_classes == 4  # the class exists: labels stay the same across splits and runs
    with pytest.warns(UserWarning, match=r"train: 1 class folders hold no images: dog \(the model still has"):
        data.setup("fit")


def test_a_split_with_class_folders_train_lacks_fails(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    write_image(root / "val" / "dog" / "0.png", "RGB", (8, 8), level=9)
    with pytest.raises(ValueError, match=rf"{root / 'val'} has class folders that {root / 'train'} lacks: dog"):
        ImageFolderDataModule(str(root), **plain()).setup("fit")


def test_folders_without_images_fail_naming_the_folder(tmp_path):
    root = write_image_folder(tmp_path, splits=("train",))
    for name in CLASSES:
        (root / "val" / name).mkdir(parents=True)
        (root / "val" / name / "readme.txt").write_text("nothing here")
    data = ImageFolderDataModule(str(root), **plain())
    with pytest.raises(FileNotFoundError, match=rf"no image files in {root / 'val'}/<class>/ \(3 class folders"):
        data.setup("fit")
    # ImageNet's validation images come in one flat folder; the message says what to do.
    for name in CLASSES:
        (root / "val" / name / "readme.txt").unlink()
        (root / "val" / name).rmdir()
    write_image(root / "val" / "ILSVRC2012_val_00000001.jpg", "RGB", (8, 8), level=9)
    with pytest.raises(FileNotFoundError, match="the 1 images directly in it must be moved into class folders"):
        data.setup("fit")


def fit_fails_at_setup(task, data, tmp_path, **trainer_kwargs) -> str:
    """The error `fit` raises; it must come before any step."""
    trainer = cpu_trainer(tmp_path, max_steps=1, **trainer_kwargs)
    with pytest.raises(ValueError) as error:
        trainer.fit(task, datamodule=data)
    assert trainer.global_step == 0
    return str(error.value)


def test_class_count_disagreeing_with_the_classifier_fails_at_setup(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    task = ImageClassification(LightNet(img_size=16, patch_size=8, num_classes=5, embed_dim=16, depth=1, num_heads=2))
    message = fit_fails_at_setup(task, ImageFolderDataModule(str(root), **plain()), tmp_path)
    assert f"ImageFolderDataModule at {root} has 3 classes but the model LightNet has num_classes=5" in message


def test_image_size_not_divisible_by_the_patch_fails_at_setup(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    task = ImageClassification(LightNet(img_size=18, patch_size=4, num_classes=3, embed_dim=16, depth=1, num_heads=2))
    message = fit_fails_at_setup(task, ImageFolderDataModule(str(root), **plain(image_size=18)), tmp_path)
    assert f"ImageFolderDataModule at {root}: the image size 18 is not divisible by the model's patch size 4" in message


def test_channels_disagreeing_with_the_classifier_fail_at_setup(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    task = ImageClassification(LightNet(img_size=16, patch_size=8, num_classes=3, embed_dim=16, depth=1, num_heads=2))
    data = ImageFolderDataModule(str(root), **plain(in_chans=1, mean=(0.0,), std=(1.0,)))
    assert "gives images with 1 channels but the model takes 3" in fit_fails_at_setup(task, data, tmp_path)


def fake_checkpoint(path: Path, num_classes: int, class_names: list[str]) -> Path:
    """A checkpoint of the classification debug config as the CLI saves it, minus the weights (never reached)."""
    backbone = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": num_classes}
    hparams = {
        "_class_path": "lightnet_vision.tasks.ImageClassification",
        "model": {"class_path": "lightnet_vision.models.LightNet", "init_args": backbone},
        "data_info": {"image_size": 16, "in_chans": 3, "num_classes": num_classes, "class_names": class_names},
    }
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    return path


@pytest.mark.parametrize(
    ("num_classes", "class_names", "expected"),
    [
        (
            10,
            [str(digit) for digit in range(10)],
            "was trained on 10 classes but ImageFolderDataModule at {root} has 3",
        ),
        # The same count of other classes would score every image against the wrong names.
        (3, ["ant", "bee", "cat"], "class 1 is 'bee' in the checkpoint and 'cat' in the data"),
    ],
    ids=["count", "names"],
)
@pytest.mark.slow
def test_a_checkpoint_of_other_classes_fails_before_restoring(
    tmp_path, monkeypatch, num_classes, class_names, expected
):
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    root = write_image_folder(tmp_path / "images", splits=("train", "val", "test"))
    checkpoint = fake_checkpoint(tmp_path / "other.ckpt", num_classes, class_names)
    folder = ["--data", "lightnet_vision.datamodules.ImageFolderDataModule", "--data.init_args.root", str(root)]
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    with pytest.raises(ValueError, match=re.escape(expected.format(root=root))) as error:
        build_cli(["test", "--config", CLASSIFICATION_DEBUG, *folder, *quiet, "--ckpt_path", str(checkpoint)])
    assert str(checkpoint) in str(error.value)


@pytest.mark.parametrize(
    ("denoiser", "image_size", "expected"),
    [
        ({"num_classes": 7}, 8, "DigitsDataModule has 10 classes but the model LightNetDiT has num_classes=7"),
        ({"in_channels": 3}, 8, "DigitsDataModule gives images with 1 channels but the model takes 3"),
        ({"patch_size": 4}, 6, "DigitsDataModule: the image size 6 is not divisible by the model's patch size 4"),
    ],
    ids=["classes", "channels", "patch"],
)
def test_a_denoiser_disagreeing_with_the_data_fails_at_setup(tmp_path, denoiser, image_size, expected):
    task = LatentDiffusion(tiny_dit(**denoiser))
    assert expected in fit_fails_at_setup(task, tiny_digits(image_size=image_size), tmp_path)
