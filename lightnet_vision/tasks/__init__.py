"""LightningModules: the training, evaluation and prediction logic around a backbone."""

from lightnet_vision.tasks.autoencoder import Autoencoder
from lightnet_vision.tasks.classification import ImageClassification
from lightnet_vision.tasks.latent_diffusion import LatentDiffusion
from lightnet_vision.tasks.schedules import WarmupCosineLR

__all__ = ["Autoencoder", "ImageClassification", "LatentDiffusion", "WarmupCosineLR"]
