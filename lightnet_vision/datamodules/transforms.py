"""Albumentations pipelines: DeiT-like defaults, and pipelines written in YAML in albumentations' own dict format.

A YAML pipeline is a list of transforms as `albumentations.to_dict` writes them, for example::

    train_transforms:
      - {__class_fullname__: RandomResizedCrop, size: [224, 224], scale: [0.08, 1.0]}
      - {__class_fullname__: HorizontalFlip, p: 0.5}

Normalisation and the conversion to a tensor are always appended.

Seeding: albumentations' Compose keeps its own random state, which `np.random.seed`, `random.seed` and so Lightning's
`seed_everything` do not reach; left unseeded it draws fresh OS entropy, so two runs of one seeded config augment
differently. `compose` returns a `SeededCompose`, seeded from torch's seed (which `seed_everything` sets) and reseeded
in each DataLoader worker from that worker's own seed, so that a seeded run repeats and the workers draw distinct
streams (a copied Compose would otherwise give every worker the same one).
"""

import inspect
from typing import Any

import albumentations as A
import torch
from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def deit_train_transforms(image_size: int) -> list[A.BasicTransform]:
    """Random resized crop, horizontal flip and colour jitter (DeiT's geometric and colour augmentations)."""
    return [
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.08, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=0.8),
    ]


def eval_transforms(image_size: int, crop_pct: float = 0.875) -> list[A.BasicTransform]:
    """Resize the short side to `image_size / crop_pct`, then take the centre crop."""
    return [A.SmallestMaxSize(max_size=round(image_size / crop_pct)), A.CenterCrop(image_size, image_size)]


class SeededCompose(A.Compose):
    """`A.Compose` seeded from torch: `torch.initial_seed()` when built, each DataLoader worker's seed inside it.

    In the main process the stream starts from the seed torch was last seeded with (`seed_everything(S)` makes it S),
    so DataModules built after the same seed augment alike. In a worker, torch seeds the process with the loader's
    base seed plus the worker's index (the base seed is drawn from the main process's seeded torch generator); the
    pipeline reseeds itself from it on its first call there, so workers neither share a stream nor lose the seeding.
    """

    def __init__(self, transforms: list[A.BasicTransform], **kwargs: Any) -> None:
        kwargs.setdefault("seed", torch.initial_seed())
        super().__init__(transforms, **kwargs)
        self._seeded_for_worker: tuple[int, int] | None = None

    def __call__(self, *args: Any, **data: Any) -> dict[str, Any]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self._seeded_for_worker != (worker.id, worker.seed):
            self.set_random_seed(worker.seed)
            self._seeded_for_worker = (worker.id, worker.seed)
        return super().__call__(*args, **data)


def compose(
    transforms: list[A.BasicTransform] | list[dict[str, Any]],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    key: str = "transforms",
) -> A.Compose:
    """A pipeline of `transforms` (objects, or dicts in albumentations' format) then Normalize and ToTensorV2.

    The pipeline is a `SeededCompose`: seeded from torch, so `seed_everything` makes its augmentations repeat.
    """
    steps = []
    for index, item in enumerate(transforms):
        if isinstance(item, dict):
            try:
                item = A.from_dict({"transform": _with_default_p(item)})
            except Exception as error:
                raise ValueError(f"{key}[{index}] is not a valid albumentations transform ({item}): {error}") from error
        steps.append(item)
    return SeededCompose([*steps, A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


def _with_default_p(item: dict[str, Any]) -> dict[str, Any]:
    """`item` with every missing `p` set to its transform's own default.

    `A.from_dict` fills a missing `p` with 0.5 (for old files), so a YAML `Resize` would resize only half the images.
    """
    item = dict(item)
    if "transforms" in item:
        item["transforms"] = [_with_default_p(child) for child in item["transforms"]]
    if "p" not in item:
        cls = SERIALIZABLE_REGISTRY[shorten_class_name(item["__class_fullname__"])]
        p = inspect.signature(cls).parameters.get("p")
        if p is not None and p.default is not inspect.Parameter.empty:
            item["p"] = p.default
    return item
