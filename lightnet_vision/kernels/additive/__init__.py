from lightnet_vision.kernels.additive.pytorch import additive_attention

__all__ = ["additive_attention"]
