"""MD-TPE, the multi-dimensional Toeplitz positional encoding of LightNet (arXiv 2405.21022, SPEC §4)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _shift(x: Tensor, offset: int, dim: int) -> Tensor:
    # x moved by `offset` along `dim` (positive: towards higher indices), zero-filled.
    n = x.shape[dim]
    if offset > 0:
        body = x.narrow(dim, 0, n - offset)
        zeros = torch.zeros_like(x.narrow(dim, 0, offset))
        return torch.cat([zeros, body], dim=dim)
    body = x.narrow(dim, -offset, n + offset)
    zeros = torch.zeros_like(x.narrow(dim, 0, -offset))
    return torch.cat([body, zeros], dim=dim)


def symmetric_toeplitz_along(x: Tensor, decay: Tensor, dim: int) -> Tensor:
    """`T x` along `dim` with `T_ij = decay^|i-j|`, as a forward plus a backward scan minus the diagonal.

    Each scan `f_i = x_i + λ f_{i-1}` runs by doubling (`f ← f + λ^s shift(f, s)` for s = 1, 2, 4, ...), so an axis of
    length n costs log2(n) vectorised steps. `decay` broadcasts against `x` (one value per head group).
    """
    forward, backward = x, x
    offset, power = 1, decay
    while offset < x.shape[dim]:
        forward = forward + power * _shift(forward, offset, dim)
        backward = backward + power * _shift(backward, -offset, dim)
        offset, power = offset * 2, power * power
    return forward + backward - x


class MDTPE(nn.Module):
    """`MDTPE(x) = Linear(RMSNorm_per_head(Σ_a T^(a) x))` with `T^(a)_ij = λ_{a,h}^|i-j|` along grid axis `a`.

    The decays `λ_{a,h} = sigmoid(θ_{a,h})` are learned per axis and head group; nothing depends on the grid size.
    The caller adds the result to its input: `x ← x + MDTPE(x)`.

    Args:
        dim: Channel width D.
        num_heads: Head groups sharing one decay per axis.
        num_axes: Number of grid axes (2 for images).
        decay_range: Initial decays, spread evenly over the heads in this range.
    """

    def __init__(
        self, dim: int, num_heads: int, num_axes: int = 2, decay_range: tuple[float, float] = (0.5, 0.95)
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MDTPE: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_axes = num_axes
        decay = torch.linspace(*decay_range, num_heads)
        self.decay_logit = nn.Parameter(torch.logit(decay).repeat(num_axes, 1))  # [m, H]
        self.norm_weight = nn.Parameter(torch.ones(dim))
        self.proj = nn.Linear(dim, dim)

    def mix(self, x: Tensor, grid_size: tuple[int, ...]) -> Tensor:
        """`Σ_a T^(a) x` for `x` `[B, N, D]` on `grid_size`, returned as `[B, N, H, D/H]`."""
        batch, n, dim = x.shape
        if len(grid_size) != self.num_axes or n != math.prod(grid_size):
            raise ValueError(f"MDTPE expects {self.num_axes} axes covering N={n} tokens, got grid_size {grid_size}")
        x = x.reshape(batch, *grid_size, self.num_heads, dim // self.num_heads)  # [B, n_1, ..., n_m, H, D/H]
        decay = torch.sigmoid(self.decay_logit.to(torch.promote_types(self.decay_logit.dtype, torch.float32)))  # [m, H]
        mixed = 0
        for axis in range(self.num_axes):
            mixed = mixed + symmetric_toeplitz_along(x, decay[axis, :, None], dim=1 + axis)
        return mixed.reshape(batch, n, self.num_heads, dim // self.num_heads)

    def forward(self, x: Tensor, grid_size: tuple[int, ...]) -> Tensor:
        mixed = self.mix(x, grid_size)  # [B, N, H, D/H]
        normed = F.rms_norm(mixed, mixed.shape[-1:]).flatten(2) * self.norm_weight  # [B, N, D]
        return self.proj(normed.to(x.dtype))
