"""Tiny image files for the classification tests, in the formats real datasets come in.

Every image of a class is a flat grey at that class's level, whatever its file mode, so a test can read the label
back from the pixels after loading and transforming.
"""

from pathlib import Path

import numpy as np
from lightning.pytorch import Trainer
from PIL import Image

# Class folders are created in this (unsorted) order; the DataModule must sort them.
CLASS_LEVELS = {"zebra": 240, "ant": 40, "cat": 140}
# (PIL mode, file extension, (width, height)): every mode load_image handles, at sizes that differ in both sides.
IMAGE_FORMATS = [
    ("RGB", "png", (20, 12)),
    ("L", "png", (9, 30)),
    ("RGBA", "png", (16, 16)),
    ("P", "png", (33, 17)),
    ("I;16", "png", (24, 24)),
    ("RGB", "jpg", (18, 25)),
]


def write_image(path: Path, mode: str, size: tuple[int, int], level: int) -> Path:
    """A flat grey image at `level` (0-255) saved in `mode`; 16-bit images use the full 16-bit range."""
    width, height = size
    if mode == "I;16":
        image = Image.fromarray(np.full((height, width), level * 257, dtype=np.uint16))  # 255 -> 65535
    elif mode == "P":
        # An adaptive palette keeps the grey exact (the default web palette would round it).
        image = Image.new("RGB", size, (level,) * 3).convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (level, level, level, 255))
    else:
        image = Image.new(mode, size, level if mode == "L" else (level,) * 3)
    assert image.mode == mode
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_image_folder(root: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """`root/<split>/<class>/<image>` with one image per entry of `IMAGE_FORMATS` per class and split."""
    for split in splits:
        for name, level in CLASS_LEVELS.items():
            for index, (mode, extension, size) in enumerate(IMAGE_FORMATS):
                write_image(root / split / name / f"{index}_{mode.replace(';', '')}.{extension}", mode, size, level)
    return root


def write_digit_pngs(directory: Path, count: int) -> list[Path]:
    """The first `count` scikit-learn digits as 8x8 grayscale PNGs, every other one in a sub-folder."""
    from sklearn.datasets import load_digits

    images = (load_digits().images[:count] * (255 / 16)).round().astype(np.uint8)
    paths = []
    for index, pixels in enumerate(images):
        path = directory / ("nested" if index % 2 else "") / f"digit_{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)  # 2-D uint8: mode L
        paths.append(path)
    return paths


def cpu_trainer(tmp_path: Path, **kwargs) -> Trainer:
    """A quiet single-process CPU Trainer writing under `tmp_path`; keyword arguments override the defaults."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "default_root_dir": tmp_path,
    }
    return Trainer(**{**defaults, **kwargs})
