"""Diffusion process (schedules, losses, samplers); no network code."""

from typing import TYPE_CHECKING

from lightnet_vision.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lightnet_vision.diffusion.gaussian import GaussianDiffusion

# Imported on first use: diffusers' schedulers load only when a diffusion process is built.
__getattr__, __dir__ = lazy_exports(__name__, {"GaussianDiffusion": "gaussian"})

__all__ = ["GaussianDiffusion"]
