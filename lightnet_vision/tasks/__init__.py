"""LightningModules: the training, evaluation and prediction logic around a backbone."""

from lightnet_vision.tasks.classification import ImageClassification
from lightnet_vision.tasks.schedules import WarmupCosineLR

__all__ = ["ImageClassification", "WarmupCosineLR"]
