"""TorchvisionDataModule on small files in the real MNIST (IDX) and CIFAR (pickle) formats; nothing is downloaded."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar

from lightnet_vision.datamodules import TorchvisionDataModule

NUM_TRAIN, NUM_TEST = 30, 12


def fake_images(count: int, size: int, channels: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """`[N, size, size, channels]` uint8 images whose pixels encode their label and index, and the labels."""
    labels = (np.arange(count) + offset) % 10
    images = np.empty((count, size, size, channels), dtype=np.uint8)
    images[:] = (labels * 20)[:, None, None, None]  # every pixel: label * 20
    images[:, 0, 0, 0] = np.arange(count) + offset  # one pixel makes each image unique
    if channels == 3:
        images[:, 1:, :, 1] = 7  # green and blue differ from red, so a channel mix-up shows
        images[:, 1:, :, 2] = 250
    return images, labels


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    # The IDX format: a big-endian magic (2051 images, 2049 labels), the sizes, then the raw bytes.
    count, rows, cols, _ = images.shape
    image_header, label_header = struct.pack(">4i", 2051, count, rows, cols), struct.pack(">2i", 2049, count)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(image_header + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(label_header + labels.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder_name / "raw"  # torchvision reads the uncompressed files from <root>/<class name>/raw
    raw.mkdir(parents=True)
    data = {"train": fake_images(NUM_TRAIN, 28, 1, 0), "test": fake_images(NUM_TEST, 28, 1, 100)}
    write_idx(raw, "train", *data["train"])
    write_idx(raw, "t10k", *data["test"])
    return data


def cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR stores each image as R, G, B planes


def write_pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def write_cifar10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = {"train": fake_images(NUM_TRAIN, 32, 3, 0), "test": fake_images(NUM_TEST, 32, 3, 100)}
    images, labels = data["train"]
    for batch, part in enumerate(np.array_split(np.arange(NUM_TRAIN), 5), start=1):
        entry = {"data": cifar_rows(images[part]), "labels": labels[part].tolist()}
        write_pickle(folder / f"data_batch_{batch}", entry)
    images, labels = data["test"]
    write_pickle(folder / "test_batch", {"data": cifar_rows(images), "labels": labels.tolist()})
    write_pickle(folder / "batches.meta", {"label_names": [f"thing{i}" for i in range(10)]})
    return data


def write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    data = {"train": fake_images(NUM_TRAIN, 32, 3, 0), "test": fake_images(NUM_TEST, 32, 3, 100)}
    for split, (images, labels) in data.items():
        write_pickle(folder / split, {"data": cifar_rows(images), "fine_labels": (labels * 9).tolist()})
        data[split] = (images, labels * 9)
    write_pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)]})
    return data


@pytest.fixture
def skip_cifar_checksums(monkeypatch):
    # torchvision checks the MD5 of every CIFAR file (data batches in _check_integrity, the meta file in _load_meta)
    # against the published archive; our small stand-ins cannot match, so only their existence is checked.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def check_split(data: TorchvisionDataModule, written: dict, val_size: int) -> None:
    data.setup("fit")
    assert len(data.train_set) == NUM_TRAIN - val_size and len(data.val_set) == val_size
    assert len(data.test_set) == NUM_TEST
    # Labels stay with their images (the label is encoded in the pixels); train and val partition the train files.
    for subset in (data.train_set, data.val_set, data.test_set):
        np.testing.assert_array_equal(subset.images[:, 5, 5, 0], subset.labels * 20)
    seen = np.concatenate([data.train_set.images[:, 0, 0, 0], data.val_set.images[:, 0, 0, 0]])
    assert sorted(seen.tolist()) == list(range(NUM_TRAIN))
    np.testing.assert_array_equal(data.test_set.images, written["test"][0])
    np.testing.assert_array_equal(data.test_set.labels, written["test"][1])


@pytest.mark.parametrize(
    "dataset, folder_name, first_class",
    [("mnist", "MNIST", "0 - zero"), ("fashion_mnist", "FashionMNIST", "T-shirt/top")],
)
def test_mnist_formats(tmp_path, dataset, folder_name, first_class):
    written = write_mnist(tmp_path, folder_name)
    data = TorchvisionDataModule(dataset, root=str(tmp_path), val_size=8, batch_size=4, num_workers=0)
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, 28)
    assert len(data.class_names) == 10 and data.class_names[0] == first_class
    check_split(data, written, val_size=8)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64

    resized = TorchvisionDataModule(dataset, root=str(tmp_path), image_size=32, val_size=8, batch_size=4, num_workers=0)
    resized.setup("fit")
    assert next(iter(resized.val_dataloader()))[0].shape == (4, 1, 32, 32)


def test_split_is_deterministic_for_a_seed(tmp_path):
    write_mnist(tmp_path, "MNIST")

    def val_ids(seed: int) -> list[int]:
        data = TorchvisionDataModule("mnist", root=str(tmp_path), val_size=8, seed=seed, num_workers=0)
        data.setup("fit")
        return data.val_set.images[:, 0, 0, 0].tolist()

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)


def test_val_size_zero_keeps_every_training_image(tmp_path):
    write_mnist(tmp_path, "MNIST")
    data = TorchvisionDataModule("mnist", root=str(tmp_path), val_size=0, num_workers=0)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set)) == (NUM_TRAIN, 0)
    with pytest.raises(ValueError, match="val_size"):
        TorchvisionDataModule("mnist", root=str(tmp_path), val_size=NUM_TRAIN, num_workers=0).setup("fit")


def test_cifar10_format(tmp_path, skip_cifar_checksums):
    written = write_cifar10(tmp_path)
    data = TorchvisionDataModule("cifar10", root=str(tmp_path), val_size=6, batch_size=5, num_workers=0)
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 3, 32)
    assert data.class_names == [f"thing{i}" for i in range(10)]  # read from batches.meta
    check_split(data, written, val_size=6)
    data.setup("test")
    images, labels = next(iter(data.test_dataloader()))
    assert images.shape == (5, 3, 32, 32)
    # Channels stay in RGB order: undo the normalisation of pixel (5, 5) and compare with what was written.
    mean, std = torch.tensor(data.source.mean), torch.tensor(data.source.std)
    pixel = (images[:, :, 5, 5] * std + mean) * 255
    expected = torch.stack([labels.float() * 20, torch.full((5,), 7.0), torch.full((5,), 250.0)], dim=1)
    torch.testing.assert_close(pixel, expected, rtol=0, atol=1e-3)


def test_cifar100_format(tmp_path, skip_cifar_checksums):
    written = write_cifar100(tmp_path)
    data = TorchvisionDataModule("cifar100", root=str(tmp_path), val_size=6, image_size=16, num_workers=0)
    assert (data.num_classes, data.in_chans, data.image_size) == (100, 3, 16)
    assert data.class_names == [f"fine{i}" for i in range(100)]
    data.setup("fit")
    assert len(data.train_set) == NUM_TRAIN - 6
    np.testing.assert_array_equal(
        np.sort(np.concatenate([data.train_set.labels, data.val_set.labels])), np.sort(written["train"][1])
    )
    assert data.val_set[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_files_say_how_to_download(tmp_path, dataset):
    data = TorchvisionDataModule(dataset, root=str(tmp_path), num_workers=0)  # __init__ needs no files
    assert data.num_classes in (10, 100)
    if dataset.startswith("cifar"):
        assert data.class_names is None  # CIFAR keeps its names in the missing files
    with pytest.raises(FileNotFoundError, match="download"):
        data.setup("fit")
    assert not any(tmp_path.rglob("*.gz"))  # nothing was fetched


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="cifar10"):
        TorchvisionDataModule("imagenet")
