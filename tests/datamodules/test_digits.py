"""DigitsDataModule: a deterministic, stratified, disjoint split of the 1,797 scikit-learn digits."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightnet_vision.datamodules import DigitsDataModule

SPLITS = ("train", "val", "test")


def rows(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True))


def test_split_is_deterministic_for_a_seed():
    first_images, first_labels = DigitsDataModule(seed=3).split()
    again_images, again_labels = DigitsDataModule(seed=3).split()
    other_images, _ = DigitsDataModule(seed=4).split()
    for split in SPLITS:
        np.testing.assert_array_equal(first_images[split], again_images[split])
        np.testing.assert_array_equal(first_labels[split], again_labels[split])
    assert not np.array_equal(first_images["test"], other_images["test"])


def test_split_is_stratified_and_partitions_the_digits():
    images, labels = DigitsDataModule(val_fraction=0.2, test_fraction=0.1).split()
    sizes = {split: len(labels[split]) for split in SPLITS}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == pytest.approx(0.2 * 1797, abs=2) and sizes["test"] == pytest.approx(0.1 * 1797, abs=2)
    for split in SPLITS:
        assert images[split].shape == (sizes[split], 8, 8, 1) and images[split].dtype == np.uint8
        counts = np.bincount(labels[split], minlength=10)
        assert (counts > 0).all(), split
        # Stratified: each class keeps its share of the whole set, to within a sample or two.
        np.testing.assert_allclose(counts / sizes[split], np.bincount(load_digits().target) / 1797, atol=0.01)
    # Disjoint and complete: the splits together are exactly the digits, each image once, with its own label.
    digits = load_digits()
    everything = (digits.images * (255 / 16)).round().astype(np.uint8)[..., None]
    together = rows(np.concatenate([images[s] for s in SPLITS]), np.concatenate([labels[s] for s in SPLITS]))
    assert together == rows(everything, digits.target)
    assert images["train"].max() == 255


def test_batches_and_linked_attributes():
    data = DigitsDataModule(image_size=16, batch_size=8)
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, 16)
    assert data.class_names == [str(digit) for digit in range(10)]
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < 10)).all()
    val_images, _ = next(iter(data.val_dataloader()))
    assert val_images.shape == (8, 1, 16, 16)
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 1797


def test_evaluation_is_deterministic_and_training_is_augmented():
    data = DigitsDataModule(image_size=16)
    data.setup("fit")
    torch.testing.assert_close(data.val_set[0][0], data.val_set[0][0])
    assert not torch.equal(data.train_set[0][0], data.train_set[0][0])
    plain = DigitsDataModule(image_size=16, augment=False)
    plain.setup("fit")
    torch.testing.assert_close(plain.train_set[0][0], plain.train_set[0][0])
