"""scikit-learn's bundled digits: 1,797 real 8×8 handwritten digits, the offline quickstart data."""

import albumentations as A
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lightnet_vision.datamodules.datasets import ArrayDataset
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.datamodules.transforms import compose

DIGITS_MEAN, DIGITS_STD = (0.3,), (0.4,)


class DigitsDataModule(ImageDataModule):
    """The digits split into train/val/test, stratified and deterministic for a seed, upsampled to `image_size`.

    Args:
        image_size: Side the 8×8 digits are resized to.
        val_fraction: Share of the digits held out for validation.
        test_fraction: Share of the digits held out for testing.
        seed: Seed of the split.
        augment: Random affine jitter (shift, scale, rotation) of training images; no flips.
        mean: Normalisation mean of the 0-1 pixel values; 0.5 with std 0.5 gives the [-1, 1] of diffusion models.
        std: Normalisation standard deviation.
        batch_size: Samples per batch and per process.
        num_workers: Loader worker processes.
        predict_dir: Folder of images for `predict`.
    """

    def __init__(
        self,
        image_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        augment: bool = True,
        mean: tuple[float] = DIGITS_MEAN,
        std: tuple[float] = DIGITS_STD,
        batch_size: int = 64,
        num_workers: int = 0,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, predict_dir)
        self.image_size = image_size
        self.in_chans = 1
        self.num_classes = 10
        self.class_names = [str(digit) for digit in range(10)]
        self.mean, self.std = list(mean), list(std)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        resize = A.Resize(image_size, image_size)
        jitter = A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=1.0)
        self.train_transform = compose([resize, jitter] if augment else [resize], mean, std)
        self.eval_transform = compose([resize], mean, std)

    def setup(self, stage: str | None = None) -> None:
        images, labels = self.split()
        self.train_set = ArrayDataset(images["train"], labels["train"], self.train_transform)
        self.val_set = ArrayDataset(images["val"], labels["val"], self.eval_transform)
        self.test_set = ArrayDataset(images["test"], labels["test"], self.eval_transform)

    def split(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The digits as `[N, 8, 8, 1]` uint8 images and labels, per split."""
        digits = load_digits()
        images = (digits.images * (255 / 16)).round().astype(np.uint8)[..., None]  # [N, 8, 8, 1]
        held_out = self.val_fraction + self.test_fraction
        x_train, x_rest, y_train, y_rest = train_test_split(
            images, digits.target, test_size=held_out, stratify=digits.target, random_state=self.seed
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=self.test_fraction / held_out, stratify=y_rest, random_state=self.seed
        )
        return {"train": x_train, "val": x_val, "test": x_test}, {"train": y_train, "val": y_val, "test": y_test}
