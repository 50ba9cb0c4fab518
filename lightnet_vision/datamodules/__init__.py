"""Built-in data sources; each describes its data in `data_info`, which the CLI hands to the task and its backbone."""

from typing import TYPE_CHECKING

from lightnet_vision.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lightnet_vision.datamodules.digits import DigitsDataModule
    from lightnet_vision.datamodules.image_datamodule import ImageDataModule
    from lightnet_vision.datamodules.image_folder import ImageFolderDataModule
    from lightnet_vision.datamodules.latent_cache import LatentCacheDataModule
    from lightnet_vision.datamodules.torchvision_datasets import TorchvisionDataModule

# Imported on first use: albumentations, scikit-learn and diffusers stay out of `lightnet-vision --help`.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DigitsDataModule": "digits",
        "ImageDataModule": "image_datamodule",
        "ImageFolderDataModule": "image_folder",
        "LatentCacheDataModule": "latent_cache",
        "TorchvisionDataModule": "torchvision_datasets",
    },
)

__all__ = [
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "LatentCacheDataModule",
    "TorchvisionDataModule",
]
