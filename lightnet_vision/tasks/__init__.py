"""LightningModules: the training, evaluation and prediction logic around a backbone."""

from typing import TYPE_CHECKING

from lightnet_vision.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lightnet_vision.tasks.autoencoder import Autoencoder
    from lightnet_vision.tasks.classification import ImageClassification
    from lightnet_vision.tasks.latent_diffusion import LatentDiffusion
    from lightnet_vision.tasks.schedules import WarmupCosineLR

# Imported on first use: diffusers stays out of `lightnet-vision --help` and of a classification run.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Autoencoder": "autoencoder",
        "ImageClassification": "classification",
        "LatentDiffusion": "latent_diffusion",
        "WarmupCosineLR": "schedules",
    },
)

__all__ = ["Autoencoder", "ImageClassification", "LatentDiffusion", "WarmupCosineLR"]
