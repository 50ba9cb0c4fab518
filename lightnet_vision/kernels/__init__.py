"""Token-mixing ops of LightNet; each op is a folder with its maths (README.md) and a naive reference (naive.py)."""

from lightnet_vision.kernels.additive import additive_attention

__all__ = ["additive_attention"]
