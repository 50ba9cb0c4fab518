"""Built-in data sources; each exposes `num_classes`, `image_size`, `in_chans` and `class_names` for the CLI links."""

from lightnet_vision.datamodules.digits import DigitsDataModule
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.datamodules.image_folder import ImageFolderDataModule
from lightnet_vision.datamodules.latent_cache import LatentCacheDataModule
from lightnet_vision.datamodules.torchvision_datasets import TorchvisionDataModule

__all__ = [
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "LatentCacheDataModule",
    "TorchvisionDataModule",
]
