"""Backbones and presets; importing this package registers every preset."""

from lightnet_vision.models._registry import create_model, list_models, preset_arguments, register_model
from lightnet_vision.models.autoencoder import KLAutoencoder
from lightnet_vision.models.first_stage import FirstStage
from lightnet_vision.models.lightnet import LightNet
from lightnet_vision.models.lightnet_dit import LightNetDiT

__all__ = [
    "FirstStage",
    "KLAutoencoder",
    "LightNet",
    "LightNetDiT",
    "create_model",
    "list_models",
    "preset_arguments",
    "register_model",
]
