"""Augmentations follow Lightning's `seed_everything`, and DataLoader workers draw distinct streams.

albumentations' Compose keeps its own random state, untouched by global seeds (lightnet_vision/datamodules/transforms.py
explains the seeding); these tests would fail with a plain `A.Compose`.
"""

import albumentations as A
import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.datamodules.datasets import ArrayDataset
from lightnet_vision.datamodules.transforms import SeededCompose, compose


def first_augmented_batch(seed: int) -> torch.Tensor:
    """The first training batch (fixed order) of a DigitsDataModule built after `seed_everything(seed)`."""
    seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(image_size=16, batch_size=8)
    datamodule.setup("fit")
    images = torch.stack([datamodule.train_set[index][0] for index in range(8)])
    return images


def test_same_seed_gives_the_same_augmentations_and_another_seed_others():
    first, again, other = first_augmented_batch(0), first_augmented_batch(0), first_augmented_batch(1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_augmentations_are_random_within_a_run():
    seed_everything(0, verbose=False)
    datamodule = DigitsDataModule(image_size=16)
    datamodule.setup("fit")
    assert not torch.equal(datamodule.train_set[0][0], datamodule.train_set[0][0])  # one image, two draws


def test_evaluation_pipeline_is_not_random():
    datamodule = DigitsDataModule(image_size=16)
    datamodule.setup("fit")
    torch.testing.assert_close(datamodule.val_set[0][0], datamodule.val_set[0][0], rtol=0, atol=0)


def test_compose_returns_a_seeded_pipeline_that_an_explicit_seed_overrides():
    pipeline = compose([A.HorizontalFlip(p=0.5)], mean=(0.5,), std=(0.5,))
    assert isinstance(pipeline, SeededCompose)
    torch.manual_seed(5)
    assert SeededCompose([A.HorizontalFlip()]).seed == 5
    assert SeededCompose([A.HorizontalFlip()], seed=7).seed == 7


def jittered_copies(num_workers: int) -> list[np.ndarray]:
    """Four jittered copies of one digit, one per sample, loaded in order by `num_workers` workers."""
    torch.manual_seed(0)
    image = DigitsDataModule().split()[0]["train"][:1].repeat(4, axis=0)
    jitter = A.Affine(scale=(0.8, 1.2), translate_percent=(-0.2, 0.2), rotate=(-30, 30), p=1.0)
    pipeline = compose([A.Resize(16, 16), jitter], mean=(0.0,), std=(1.0,))
    loader = DataLoader(ArrayDataset(image, [0] * 4, pipeline), batch_size=1, num_workers=num_workers)
    return [batch[0].numpy() for batch in loader]


@pytest.mark.slow
def test_dataloader_workers_draw_distinct_streams_that_repeat():
    # Two workers take samples 0, 2 and 1, 3: a pipeline copied into both unchanged would jitter 0 and 1 alike.
    copies = jittered_copies(num_workers=2)
    assert not np.array_equal(copies[0], copies[1])
    assert not np.array_equal(copies[0], copies[2])
    again = jittered_copies(num_workers=2)  # the workers' seeds come from torch's seeded generator
    for first, second in zip(copies, again, strict=True):
        np.testing.assert_array_equal(first, second)
