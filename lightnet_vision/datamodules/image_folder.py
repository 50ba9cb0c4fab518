"""Your own images, or ImageNet: `root/train/<class>/*`, `root/val/<class>/*` and optionally `root/test/<class>/*`."""

from pathlib import Path
from typing import Any

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from lightnet_vision.datamodules import transforms
from lightnet_vision.datamodules.datasets import ImageFileDataset
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, compose


class ImageFolderDataModule(ImageDataModule):
    """One sub-folder per class; the classes are the sorted folder names under `root/train`.

    Args:
        root: Folder holding `train/`, `val/` and optionally `test/`.
        image_size: Side of the square crops fed to the model.
        in_chans: 3 reads every image as RGB, 1 as grayscale.
        train_transforms: Training augmentations in albumentations' dict format (see `transforms.py`);
            None uses DeiT-like defaults (random resized crop, flip, colour jitter).
        eval_transforms: Evaluation transforms in the same format; None resizes and centre-crops (crop 0.875).
        mean: Per-channel mean for normalisation (of 0-1 pixel values).
        std: Per-channel standard deviation for normalisation.
        batch_size: Samples per batch and per process.
        num_workers: Loader worker processes.
        predict_dir: Folder of images for `predict`.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        in_chans: int = 3,
        train_transforms: list[dict[str, Any]] | None = None,
        eval_transforms: list[dict[str, Any]] | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        batch_size: int = 64,
        num_workers: int = 4,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, predict_dir)
        self.root = Path(root)
        self.image_size = image_size
        self.in_chans = in_chans
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean {mean} and std {std} must have in_chans={in_chans} values")
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise FileNotFoundError(f"{train_dir} does not exist: expected {self.root}/train/<class>/<images>")
        self.class_names = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
        if not self.class_names:
            raise FileNotFoundError(f"no class folders in {train_dir}: expected {train_dir}/<class>/<images>")
        self.num_classes = len(self.class_names)
        if train_transforms is None:
            train_transforms = transforms.deit_train_transforms(image_size)
        if eval_transforms is None:
            eval_transforms = transforms.eval_transforms(image_size)
        self.train_transform = compose(train_transforms, mean, std, key="data.train_transforms")
        self.eval_transform = compose(eval_transforms, mean, std, key="data.eval_transforms")

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._split("train", self.train_transform)
        self.val_set = self._split("val", self.eval_transform)
        self.test_set = self._split("test", self.eval_transform) if (self.root / "test").is_dir() else None

    def _split(self, split: str, transform) -> ImageFileDataset | None:
        directory = self.root / split
        if not directory.is_dir():
            if split == "test":
                return None
            raise FileNotFoundError(f"{directory} does not exist: expected {directory}/<class>/<images>")
        class_to_idx = {name: index for index, name in enumerate(self.class_names)}
        samples = make_dataset(str(directory), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise FileNotFoundError(f"no image files in {directory}/<class>/ for classes {self.class_names}")
        return ImageFileDataset(samples, transform, self.in_chans)
