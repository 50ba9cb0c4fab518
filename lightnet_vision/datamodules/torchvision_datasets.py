"""CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST through torchvision (downloaded on your machine when asked)."""

from dataclasses import dataclass
from typing import Literal

import albumentations as A
import numpy as np
import torch
from torchvision import datasets

from lightnet_vision.datamodules.datasets import ArrayDataset
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.datamodules.transforms import compose


@dataclass(frozen=True)
class _Source:
    dataset: type
    num_classes: int
    native_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool


# Channel statistics of each training set (commonly quoted values).
_SOURCES = {
    "cifar10": _Source(datasets.CIFAR10, 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": _Source(datasets.CIFAR100, 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "mnist": _Source(datasets.MNIST, 10, 28, 1, (0.1307,), (0.3081,), False),
    "fashion_mnist": _Source(datasets.FashionMNIST, 10, 28, 1, (0.2860,), (0.3530,), True),
}


class TorchvisionDataModule(ImageDataModule):
    """A torchvision classification dataset; the last `val_size` shuffled training images form the val split.

    Args:
        dataset: Which dataset.
        root: Where torchvision keeps (or downloads) the files.
        download: Download into `root` when missing (in `prepare_data`, once per node).
        image_size: Side fed to the model; None keeps the native size (32 for CIFAR, 28 for MNIST).
        val_size: Training images held out for validation.
        seed: Seed of the train/val split.
        augment: Pad-and-crop (4 px at native size) and, where it makes sense, horizontal flips.
        batch_size: Samples per batch and per process.
        num_workers: Loader worker processes; None: one fewer than the available cores, at most 4.
        predict_dir: Folder of images for `predict`.
    """

    def __init__(
        self,
        dataset: Literal["cifar10", "cifar100", "mnist", "fashion_mnist"] = "cifar10",
        root: str = "data",
        download: bool = False,
        image_size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, predict_dir)
        if dataset not in _SOURCES:
            raise ValueError(f"data.dataset must be one of {sorted(_SOURCES)}, got {dataset!r}")
        self.source = _SOURCES[dataset]
        self.dataset = dataset
        self.root = root
        self.download = download
        self.val_size = val_size
        self.seed = seed
        self.num_classes = self.source.num_classes
        self.in_chans = self.source.in_chans
        self.image_size = image_size or self.source.native_size
        self.class_names = self._class_names()
        resize = [A.Resize(self.image_size, self.image_size)] if self.image_size != self.source.native_size else []
        pad = round(4 * self.image_size / 32)
        augmentations = [
            A.PadIfNeeded(self.image_size + 2 * pad, self.image_size + 2 * pad, border_mode=0),
            A.RandomCrop(self.image_size, self.image_size),
        ]
        if self.source.flip:
            augmentations.append(A.HorizontalFlip(p=0.5))
        mean, std = self.source.mean, self.source.std
        self.mean, self.std = list(mean), list(std)
        self.train_transform = compose([*resize, *augmentations] if augment else resize, mean, std)
        self.eval_transform = compose(resize, mean, std)

    def _class_names(self) -> list[str] | None:
        classes = getattr(self.source.dataset, "classes", None)  # a class attribute for MNIST and Fashion-MNIST
        if classes:
            return list(classes)
        try:  # CIFAR reads its names from the downloaded files
            return list(self.source.dataset(self.root, train=False, download=False).classes)
        except RuntimeError:
            return None

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self.source.dataset(self.root, train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        train_images, train_labels = self._arrays(train=True)
        if not 0 <= self.val_size < len(train_images):
            raise ValueError(f"data.val_size must be in [0, {len(train_images)}), got {self.val_size}")
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(self.seed)).numpy()
        num_train = len(order) - self.val_size  # not order[:-val_size], which is empty for val_size=0
        train_idx, val_idx = order[:num_train], order[num_train:]
        self.train_set = ArrayDataset(train_images[train_idx], train_labels[train_idx], self.train_transform)
        self.val_set = ArrayDataset(train_images[val_idx], train_labels[val_idx], self.eval_transform)
        test_images, test_labels = self._arrays(train=False)
        self.test_set = ArrayDataset(test_images, test_labels, self.eval_transform)

    def _arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = self.source.dataset(self.root, train=train, download=False)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{self.dataset} not found under {self.root!r}; set data.download: true to fetch it"
            ) from error
        images = np.asarray(data.data, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]  # MNIST: [N, 28, 28] -> [N, 28, 28, 1]
        return images, np.asarray(data.targets, dtype=np.int64)
