"""Conditioning layers of the LightNet-DiT denoiser: timestep and class embeddings, adaLN-Zero modulation."""

import math

import torch
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """`x (1 + scale) + shift` with one shift/scale per sample: x `[B, N, D]`, shift and scale `[B, D]`."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (possibly fractional) diffusion timestep, then a two-layer MLP.

    Args:
        hidden_size: Output width D.
        frequency_size: Width of the sinusoidal features.
        max_period: Longest period of the sinusoids.
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def sinusoids(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(self.max_period) * exponents)  # [F/2]
        args = t.float()[:, None] * freqs[None]  # [B, F/2]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, F]

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoids(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings with one extra learned "null" class, index `num_classes`, for classifier-free guidance.

    Args:
        num_classes: Real classes; 0 makes the embedder a single learned unconditional vector.
        hidden_size: Output width D.
        dropout_prob: Probability, while training, of replacing a label by the null class.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: Tensor, force_drop: Tensor | None = None) -> Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        if force_drop is not None:
            labels = torch.where(force_drop, self.num_classes, labels)
        return self.table(labels)
