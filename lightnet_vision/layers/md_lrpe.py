"""MD-LRPE, the multi-dimensional linearised relative positional encoding of LightNet (arXiv 2405.21022, SPEC §3)."""

import math

import torch
from torch import Tensor, nn


class MDLRPE(nn.Module):
    """Rotation angles `Θ` `[N, K]` for the tokens of an m-dimensional grid, flattened row-major.

    The head dim is split into m contiguous slices, one per grid axis; slice `a` of token `(s_1, ..., s_m)` holds
    `s_a θ` with `θ_i = 10000^(-i/e)`, `e = ⌈K/m⌉`. Expanding q and k̄ to `[x cos Θ, x sin Θ]` makes their inner
    product depend only on the offset between two tokens along each axis. Extra tokens (class, condition) come
    first and get `Θ = 0`. Nothing here is learned, so any grid size works.

    Args:
        head_dim: K, the query/key width of one head.
        num_axes: m, the number of grid axes (2 for images).
        base: The frequency base of `θ`.
    """

    def __init__(self, head_dim: int, num_axes: int = 2, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_axes = num_axes
        slice_width = math.ceil(head_dim / num_axes)
        exponents = torch.arange(slice_width, dtype=torch.float64) / slice_width
        self.register_buffer("theta", (base**-exponents).float(), persistent=False)  # [e]

    def forward(self, grid_size: tuple[int, ...], num_extra_tokens: int = 0) -> Tensor:
        if len(grid_size) != self.num_axes:
            raise ValueError(f"MDLRPE was built for {self.num_axes} grid axes, got grid_size {tuple(grid_size)}")
        axes = [torch.arange(n, device=self.theta.device, dtype=torch.float32) for n in grid_size]
        positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.num_axes)  # [N, m]
        angles = positions[:, :, None] * self.theta  # [N, m, e]
        angles = angles.reshape(positions.shape[0], -1)[:, : self.head_dim]  # [N, K], one slice per axis
        extra = angles.new_zeros(num_extra_tokens, self.head_dim)
        return torch.cat([extra, angles], dim=0)  # [num_extra + N, K]
