"""Diffusion process (schedules, losses, samplers); no network code."""

from lightnet_vision.diffusion.gaussian import GaussianDiffusion

__all__ = ["GaussianDiffusion"]
