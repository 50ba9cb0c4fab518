"""Backbones and presets; importing this package registers every preset."""

from typing import TYPE_CHECKING

from lightnet_vision.lazy_exports import lazy_exports
from lightnet_vision.models._registry import create_model, list_models, preset_arguments, register_model
from lightnet_vision.models.lightnet import LightNet
from lightnet_vision.models.lightnet_dit import LightNetDiT

if TYPE_CHECKING:
    from lightnet_vision.models.autoencoder import KLAutoencoder
    from lightnet_vision.models.diffusers_dit import DiffusersDiT
    from lightnet_vision.models.first_stage import FirstStage

# The autoencoders and the DiT peer (diffusers) are imported on first use; the backbones above register their
# presets now.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DiffusersDiT": "diffusers_dit",
        "FirstStage": "first_stage",
        "KLAutoencoder": "autoencoder",
    },
)

__all__ = [
    "DiffusersDiT",
    "FirstStage",
    "KLAutoencoder",
    "LightNet",
    "LightNetDiT",
    "create_model",
    "list_models",
    "preset_arguments",
    "register_model",
]
