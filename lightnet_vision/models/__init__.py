"""Backbones and presets; importing this package registers every preset."""

from lightnet_vision.models._registry import create_model, list_models, register_model
from lightnet_vision.models.lightnet import LightNet

__all__ = ["LightNet", "create_model", "list_models", "register_model"]
