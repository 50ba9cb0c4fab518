"""Your own images, or ImageNet: `root/train/<class>/*`, `root/val/<class>/*` and optionally `root/test/<class>/*`."""

import copy
import warnings
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from PIL import ImageFile
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from lightnet_vision.datamodules import transforms
from lightnet_vision.datamodules.datasets import ImageFileDataset
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.datamodules.images import UnreadableImageError, load_image
from lightnet_vision.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, compose


class ImageFolderDataModule(ImageDataModule):
    """One sub-folder per class; the classes are the sorted folder names under `root/train`.

    Bad data is dealt with in two places. `setup` makes the checks that cost no more than listing the folders: a
    split with no images, or with class folders that `train/` lacks, is an error naming the folder; empty class
    folders and files without an image extension (hidden files aside) are ignored, with one warning per split that
    names them. Whether a file decodes is only known when it is read (decoding every image up front would take hours
    on ImageNet), so an unreadable file is met by a loader worker: with `on_bad_image: error` it stops the run with an
    error naming the file; with `skip` the next readable image takes its place (that epoch sees it twice) and the file
    is marked in memory that all worker processes share. The main process warns once about the files skipped in an
    epoch, listing them, at the first batch of the next epoch and when the run ends (under DDP each process lists the
    files it met). Images of any PIL mode (grayscale, RGBA, palette, 16-bit) are converted to `in_chans` channels.

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
        num_workers: Loader worker processes; None: one fewer than the available cores, at most 4.
        predict_dir: Folder of images for `predict`.
        on_bad_image: "skip" an image file that cannot be decoded (listed in one warning) or stop with an "error"
            naming it. Images to predict on always fail with an error: a prediction is never silently dropped.
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
        num_workers: int | None = None,
        predict_dir: str | None = None,
        on_bad_image: Literal["skip", "error"] = "skip",
    ) -> None:
        super().__init__(batch_size, num_workers, predict_dir)
        self.root = Path(root)
        self.image_size = image_size
        self.in_chans = in_chans
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB) to read image files, got {in_chans}")
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self._reported: set[str] = set()
        self._last_epoch: int | None = None
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean {mean} and std {std} must have in_chans={in_chans} values")
        self.mean, self.std = list(mean), list(std)
        train_dir = self.root / "train"
        if train_dir.is_dir():
            self.class_names = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
            if not self.class_names:
                raise FileNotFoundError(f"no class folders in {train_dir}: expected {train_dir}/<class>/<images>")
            self.num_classes = len(self.class_names)
        elif predict_dir is None:
            raise FileNotFoundError(f"{train_dir} does not exist: expected {self.root}/train/<class>/<images>")
        # Else only predicting: the classes come from the checkpoint, no training tree is needed.
        if train_transforms is None:
            train_transforms = transforms.deit_train_transforms(image_size)
        if eval_transforms is None:
            eval_transforms = transforms.eval_transforms(image_size)
        self.train_transform = compose(train_transforms, mean, std, key="data.train_transforms")
        self.eval_transform = compose(eval_transforms, mean, std, key="data.eval_transforms")

    def setup(self, stage: str | None = None) -> None:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            rank_zero_warn(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncated image files will be read with their missing part"
                " filled in grey instead of being reported as unreadable"
            )
        if stage == "predict":
            return  # the predict loader reads data.predict_dir alone
        self.train_set = self._split("train", self.train_transform)
        self.val_set = self._split("val", self.eval_transform)
        self.test_set = self._split("test", self.eval_transform) if (self.root / "test").is_dir() else None
        self._check_transform_size(self.train_transform, "data.train_transforms")
        self._check_transform_size(self.eval_transform, "data.eval_transforms")

    def _check_transform_size(self, transform: Any, key: str) -> None:
        """Warns, naming both sizes, when `transform` makes the first readable training image another size than
        `image_size`, the size the model is built for: a size written in the config's transforms would otherwise
        train or evaluate at another resolution without a word. A copy of the transform is applied, so that the
        random state of the one the loaders use does not move."""
        for path, _ in self.train_set.samples[:10]:
            try:
                image = load_image(path, self.in_chans)
            except UnreadableImageError:
                continue
            height, width = copy.deepcopy(transform)(image=image)["image"].shape[-2:]
            if (height, width) != (self.image_size, self.image_size):
                rank_zero_warn(
                    f"{key} give {height}x{width} images but data.image_size is {self.image_size}, the size the model"
                    f" is built for; give the transforms size {self.image_size}, or set image_size to theirs"
                )
            return

    def _split(self, split: str, transform) -> ImageFileDataset | None:
        directory = self.root / split
        if not directory.is_dir():
            if split == "test":
                return None
            raise FileNotFoundError(f"{directory} does not exist: expected {directory}/<class>/<images>")
        folders = sorted(entry.name for entry in directory.iterdir() if entry.is_dir())
        unknown = [name for name in folders if name not in self.class_names]
        if unknown:
            raise ValueError(
                f"{directory} has class folders that {self.root / 'train'} lacks: {_some(unknown)}; every split must"
                f" use the {self.num_classes} classes of the training split"
            )
        ignored: list[str] = []

        def is_image(path: str) -> bool:
            if Path(path).suffix.lower() in IMG_EXTENSIONS:
                return True
            if not Path(path).name.startswith("."):
                ignored.append(path)
            return False

        class_to_idx = {name: index for index, name in enumerate(self.class_names)}
        samples = make_dataset(str(directory), class_to_idx, is_valid_file=is_image, allow_empty=True)
        if not samples:
            loose = [entry.name for entry in directory.iterdir() if entry.suffix.lower() in IMG_EXTENSIONS]
            hint = f"; the {len(loose)} images directly in it must be moved into class folders" if loose else ""
            raise FileNotFoundError(
                f"no image files in {directory}/<class>/ ({len(folders)} class folders, extensions "
                f"{', '.join(IMG_EXTENSIONS)}){hint}"
            )
        if ignored:
            rank_zero_warn(f"{directory}: ignored {len(ignored)} files without an image extension: {_some(ignored)}")
        counts = {name: 0 for name in folders}
        for _, label in samples:
            counts[self.class_names[label]] += 1
        empty = [name for name, count in counts.items() if count == 0]
        if empty:
            rank_zero_warn(
                f"{directory}: {len(empty)} class folders hold no images: {_some(empty)}"
                + (" (the model still has an output for each, which training never sees)" if split == "train" else "")
            )
        return ImageFileDataset(samples, transform, self.in_chans, self.on_bad_image)

    def report_skipped(self) -> list[str]:
        """Warn once about the image files skipped since the last report, listing them; returns them."""
        datasets = (self.train_set, self.val_set, self.test_set)
        skipped = [path for data in datasets if data is not None for path in data.skipped_paths()]
        new = [path for path in skipped if path not in self._reported]
        if new:
            self._reported.update(new)
            listing = "\n  ".join(new)
            warnings.warn(f"skipped {len(new)} unreadable image files (on_bad_image: skip):\n  {listing}", stacklevel=2)
        return new

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Runs in the main process for every batch: the first batch of a new epoch reports what the last one skipped.
        epoch = self.trainer.current_epoch if self.trainer is not None else None
        if self._last_epoch is not None and epoch != self._last_epoch:
            self.report_skipped()
        self._last_epoch = epoch
        return batch

    def teardown(self, stage: str) -> None:
        self.report_skipped()
        self._last_epoch = None


def _some(names: list[str], shown: int = 10) -> str:
    """The first `shown` names, and how many more there are."""
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
