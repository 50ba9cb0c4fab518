"""What every image DataModule shares: loaders, prediction on a folder, and the description of its data."""

import os
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader import sampler as torchdata_sampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.datamodules.datasets import UnlabeledImageFiles


class ResumableRandomSampler(torchdata_sampler.RandomSampler, RandomSampler):
    """torchdata's shuffle, whose position and generator a StatefulDataLoader saves and restores, typed also as
    PyTorch's RandomSampler. Lightning then replaces it under DDP by a plain DistributedSampler, whose order follows
    from the seed and the epoch, so a resumed fit can skip into it; any other sampler it wraps, and the order then
    comes from this sampler's generator, which the checkpoint of a multi-process fit does not hold."""


def list_images(directory: str | Path) -> list[Path]:
    """Image files under `directory` (recursively, sorted); a clear error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory {directory} does not exist")
    paths = sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMG_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {directory}")
    return paths


def default_num_workers() -> int:
    """Loader workers when a config gives none: one fewer than the cores this process may use (the main process
    keeps one for the model), at most 4. More workers than cores only makes PyTorch warn, once per loader."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cores - 1))


class ImageDataModule(LightningDataModule):
    """Subclasses set `image_size` and `in_chans` (and `num_classes`, `class_names`, `mean`, `std` where they
    apply) in `__init__`, and the `train_set`, `val_set`, `test_set` datasets in `setup`; `data_info` gathers
    them for the task and its backbone. `predict` reads `predict_dir` with `eval_transform`, by default a resize to
    `image_size` and the normalisation by `mean` and `std`; a subclass may set its own.

    Args:
        batch_size: Samples per batch and per process.
        num_workers: Loader worker processes; None: one fewer than the available cores, at most 4.
        predict_dir: Folder of images for `predict` (searched recursively).
    """

    image_size: int
    in_chans: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    eval_transform: Callable | None = None

    def __init__(self, batch_size: int = 64, num_workers: int | None = None, predict_dir: str | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.predict_dir = predict_dir
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def data_info(self) -> DataInfo:
        """The description of this data the task and its backbone are set from."""
        listed = [None if values is None else [float(x) for x in values] for values in (self.mean, self.std)]
        names = None if self.class_names is None else list(self.class_names)
        return DataInfo(self.image_size, self.in_chans, self.num_classes, names, *listed)

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {split} split")
        if shuffle:
            # The training loader is a StatefulDataLoader: a checkpoint saved mid-epoch records how far into the
            # epoch's order it got, and a resumed fit goes on from there instead of starting the epoch over.
            return StatefulDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=ResumableRandomSampler(dataset),
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
                drop_last=len(dataset) > self.batch_size,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def default_eval_transform(self) -> Callable:
        """Resize to `image_size` (short side, centre crop) and normalise by `mean` and `std` (none: 0 and 1)."""
        from lightnet_vision.datamodules.transforms import compose, eval_transforms

        mean = self.mean or [0.0] * self.in_chans
        std = self.std or [1.0] * self.in_chans
        return compose(eval_transforms(self.image_size, crop_pct=1.0), mean, std)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is None:
            # A generator's `predict` samples from the task's own loader: the CLI leaves the data out there.
            raise ValueError(f"set data.predict_dir to a folder of images to predict with {type(self).__name__}")
        transform = self.eval_transform or self.default_eval_transform()
        images = UnlabeledImageFiles(list_images(self.predict_dir), transform, self.in_chans)
        return self._loader(images, "predict")
