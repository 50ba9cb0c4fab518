"""Map-style datasets that feed `H × W × C` uint8 images through an albumentations pipeline."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightnet_vision.datamodules.images import UnreadableImageError, load_image


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
    """`(path, label)` samples read from disk.

    A file that cannot be decoded raises `UnreadableImageError` naming it (`on_bad_image="error"`), or
    (`"skip"`) is marked in `skipped` and the next readable sample in the list is served in its place, so an epoch
    keeps its length and a run its step count. A marked file is never read again. `skipped` is a bool tensor in
    shared memory: DataLoader worker processes each hold a copy of the dataset, and the marks they make are seen by
    the main process, which lists them (see `ImageFolderDataModule.report_skipped`).

    Args:
        samples: `(path, label)` pairs.
        transform: An albumentations pipeline, called as `transform(image=...)`.
        in_chans: 1 reads every image as grayscale, 3 as RGB.
        on_bad_image: "skip" or "error", what to do with a file that cannot be decoded.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable,
        in_chans: int,
        on_bad_image: Literal["skip", "error"] = "error",
    ) -> None:
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.samples = list(samples)
        self.transform = transform
        self.in_chans = in_chans
        self.on_bad_image = on_bad_image
        self.skipped = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.on_bad_image == "error":
            path, label = self.samples[index]
            return self.transform(image=load_image(path, self.in_chans))["image"], label
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            if self.skipped[candidate]:
                continue
            path, label = self.samples[candidate]
            try:
                image = load_image(path, self.in_chans)
            except UnreadableImageError:
                self.skipped[candidate] = True
                continue
            return self.transform(image=image)["image"], label
        folder = Path(self.samples[0][0]).parent.parent
        raise UnreadableImageError(f"none of the {len(self.samples)} image files under {folder} could be read")

    def skipped_paths(self) -> list[str]:
        """The files marked unreadable so far, by any process, in sample order."""
        return [self.samples[index][0] for index in self.skipped.nonzero().flatten().tolist()]


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
