"""ImageFolderDataModule on a tiny folder of mixed-mode, mixed-size images written by the test."""

import inspect
import os
import warnings

import numpy as np
import pytest
import torch
from classification_helpers import CLASS_LEVELS, IMAGE_FORMATS, write_image_folder
from PIL import Image

from lightnet_vision.datamodules import ImageFolderDataModule, LatentCacheDataModule, TorchvisionDataModule
from lightnet_vision.datamodules.images import load_image

CLASSES = sorted(CLASS_LEVELS)


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def plain(in_chans: int = 3) -> dict:
    # Mean 0 and std 1 leave pixels at value/255, so a test can read the grey level (and hence the class) back.
    return {"mean": (0.0,) * in_chans, "std": (1.0,) * in_chans, "num_workers": 0, "batch_size": 64}


@pytest.mark.parametrize("in_chans", [3, 1])
def test_classes_batches_and_labels(folder, in_chans):
    data = ImageFolderDataModule(str(folder), image_size=16, in_chans=in_chans, **plain(in_chans))
    assert data.class_names == CLASSES == ["ant", "cat", "zebra"]
    assert (data.num_classes, data.in_chans, data.image_size) == (3, in_chans, 16)
    data.setup("fit")
    data.setup("test")
    per_split = len(CLASSES) * len(IMAGE_FORMATS)
    assert len(data.train_set) == len(data.val_set) == len(data.test_set) == per_split
    train_images, _ = next(iter(data.train_dataloader()))
    assert train_images.shape == (per_split, in_chans, 16, 16)
    for loader in (data.val_dataloader(), data.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (per_split, in_chans, 16, 16) and images.dtype == torch.float32
        assert sorted(labels.tolist()) == sorted(list(range(3)) * len(IMAGE_FORMATS))
        levels = images.mean(dim=(1, 2, 3)) * 255
        expected = torch.tensor([CLASS_LEVELS[CLASSES[label]] for label in labels], dtype=torch.float32)
        torch.testing.assert_close(levels, expected, rtol=0, atol=3)  # JPEG may move a flat grey slightly


def test_yaml_transforms_are_applied(tmp_path):
    # An image that is dark on the left and bright on the right, so a horizontal flip shows.
    write_image_folder(tmp_path, splits=("train", "val"))
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, 8:] = 255
    path = tmp_path / "train" / "ant" / "half.png"
    Image.fromarray(pixels).save(path)
    resize = {"__class_fullname__": "Resize", "height": 16, "width": 16, "p": 1.0}
    data = ImageFolderDataModule(
        str(tmp_path),
        image_size=16,
        train_transforms=[resize, {"__class_fullname__": "HorizontalFlip", "p": 1.0}],
        eval_transforms=[resize],
        **plain(),
    )
    data.setup("fit")
    index = [str(p) for p, _ in data.train_set.samples].index(str(path))
    trained, label = data.train_set[index]
    evaluated = data.eval_transform(image=load_image(path, 3))["image"]
    assert label == 0
    assert evaluated[:, :, 0].max() == 0 and evaluated[:, :, -1].min() == 1
    torch.testing.assert_close(trained, evaluated.flip(-1))


def test_invalid_transform_names_its_place(folder):
    with pytest.raises(ValueError, match=r"data\.train_transforms\[1\]"):
        ImageFolderDataModule(
            str(folder),
            train_transforms=[{"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "NoSuch"}],
        )
    with pytest.raises(ValueError, match=r"data\.eval_transforms\[0\]"):
        ImageFolderDataModule(str(folder), eval_transforms=[{"__class_fullname__": "NoSuch"}])


def test_missing_train_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        ImageFolderDataModule(str(tmp_path))


def test_missing_val_folder_is_an_error_but_test_is_optional(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    data = ImageFolderDataModule(str(tmp_path), image_size=16, **plain())
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        data.setup("fit")
    write_image_folder(tmp_path, splits=("val",))
    data.setup("fit")
    assert data.test_set is None
    with pytest.raises(RuntimeError, match="no test split"):
        data.test_dataloader()


def test_normalisation_statistics_must_match_the_channels(folder):
    with pytest.raises(ValueError, match="in_chans=1"):
        ImageFolderDataModule(str(folder), in_chans=1)


def test_predict_dir_is_searched_recursively(folder, tmp_path):
    data = ImageFolderDataModule(str(folder), image_size=16, predict_dir=str(folder / "val"), **plain())
    images, paths = next(iter(data.predict_dataloader()))
    assert images.shape == (len(CLASSES) * len(IMAGE_FORMATS), 3, 16, 16)
    assert list(paths) == sorted(paths) and all(path.startswith(str(folder / "val")) for path in paths)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataModule(str(folder), predict_dir=str(tmp_path / "empty")).predict_dataloader()
    with pytest.raises(ValueError, match="predict_dir"):
        ImageFolderDataModule(str(folder)).predict_dataloader()


def test_yaml_transform_without_p_always_applies(folder):
    # albumentations' from_dict would fill the missing p with 0.5, resizing only about half of the images.
    data = ImageFolderDataModule(
        str(folder), eval_transforms=[{"__class_fullname__": "Resize", "height": 8, "width": 8}], **plain()
    )
    image = load_image(next((folder / "val" / "ant").glob("*.png")), 3)
    assert image.shape[:2] != (8, 8)
    for _ in range(20):
        assert data.eval_transform(image=image)["image"].shape == (3, 8, 8)


def test_a_transform_of_another_size_warns_naming_both_sizes(folder):
    # The model is built for image_size (16); a crop size written in the config's transforms trains at 8x8.
    crop = {"__class_fullname__": "RandomResizedCrop", "size": [8, 8]}
    data = ImageFolderDataModule(str(folder), image_size=16, train_transforms=[crop], **plain())
    with pytest.warns(UserWarning, match="data.train_transforms give 8x8 images but data.image_size is 16") as caught:
        data.setup("fit")
    assert not any("data.eval_transforms" in str(warning.message) for warning in caught)


def test_transforms_of_image_size_do_not_warn_nor_move_the_random_state(folder, recwarn):
    data = ImageFolderDataModule(str(folder), image_size=16, **plain())
    state = data.train_transform.random_generator.bit_generator.state
    py_state = data.train_transform.py_random.getstate()
    data.setup("fit")
    assert not [warning for warning in recwarn if "transforms give" in str(warning.message)]
    # The check ran a copy: the loaders' augmentations are the ones they would have been without it.
    assert data.train_transform.random_generator.bit_generator.state == state
    assert data.train_transform.py_random.getstate() == py_state


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 1), (3, 2), (64, 4)])
def test_num_workers_defaults_to_the_cores_left_at_most_4(folder, monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert ImageFolderDataModule(str(folder)).num_workers == workers
    assert ImageFolderDataModule(str(folder), num_workers=3).num_workers == 3


@pytest.mark.parametrize("datamodule", [ImageFolderDataModule, TorchvisionDataModule, LatentCacheDataModule])
def test_no_datamodule_fixes_its_own_worker_count(datamodule):
    assert inspect.signature(datamodule).parameters["num_workers"].default is None


def test_a_two_core_machine_gets_no_worker_warning(folder, monkeypatch):
    # PyTorch warns once per loader when it is asked for more workers than the cores it may use (4 on 2, before).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    data = ImageFolderDataModule(str(folder), image_size=16, **{**plain(), "num_workers": None})
    data.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _ = next(iter(data.val_dataloader()))
    assert data.num_workers == 1 and images.shape[-2:] == (16, 16)
