"""Map-style datasets that feed `H × W × C` uint8 images through an albumentations pipeline."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from lightnet_vision.datamodules.images import load_image


class ArrayDataset(Dataset):
    """Images held in memory, `[N, H, W, C]` uint8, with integer labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: Callable) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(image=self.images[index])["image"], int(self.labels[index])


class ImageFileDataset(Dataset):
    """`(path, label)` samples read from disk."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, in_chans: int) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(image=load_image(path, self.in_chans))["image"], label


class UnlabeledImageFiles(Dataset):
    """Images to predict on; each item carries its path so the answer can name it."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable, in_chans: int) -> None:
        self.paths = [str(path) for path in paths]
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        path = self.paths[index]
        return self.transform(image=load_image(path, self.in_chans))["image"], path
