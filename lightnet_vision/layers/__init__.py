"""Layers shared by every LightNet model; docs/method.md walks through them with the paper (arXiv 2405.21022)."""

from lightnet_vision.layers.adaln import LabelEmbedder, TimestepEmbedder, modulate
from lightnet_vision.layers.attention import LightNetAttention
from lightnet_vision.layers.block import LightNetBlock
from lightnet_vision.layers.dit_block import LightNetDiTBlock
from lightnet_vision.layers.glu import GLU
from lightnet_vision.layers.md_lrpe import MDLRPE
from lightnet_vision.layers.md_tpe import MDTPE
from lightnet_vision.layers.patch_embed import PatchEmbed

__all__ = [
    "GLU",
    "MDLRPE",
    "MDTPE",
    "LabelEmbedder",
    "LightNetAttention",
    "LightNetBlock",
    "LightNetDiTBlock",
    "PatchEmbed",
    "TimestepEmbedder",
    "modulate",
]
