"""MD-LRPE, the multi-dimensional linearised relative positional encoding of LightNet (arXiv 2405.21022).

Two forms share the angles below. "cosine" is the paper's: q and k̄ become `[x cos Θ, x sin Θ]`, so
`q̃·k̃ = Σ_c q_c k̄_c cos(Θ_t,c − Θ_s,c)`, an even function of each offset: a token cannot tell a neighbour on its left
from one on its right. "rotary" turns channel pairs `(c, c + K/2)` by Θ (RoFormer's rotation, one angle per pair), so
`q̃·k̃ = Σ_pairs (q₁k̄₁ + q₂k̄₂) cos Δ + (q₁k̄₂ − q₂k̄₁) sin Δ`: the sine term is odd in the offset, and the encoded
tensors stay K wide instead of 2K. docs/method.md#md-lrpe explains both forms and why rotary is the default; the
kernel README (lightnet_vision/kernels/additive/README.md) has the maths of the op.
"""

import math

import torch
from torch import Tensor, nn

LRPE_FORMS = ("rotary", "cosine")


class MDLRPE(nn.Module):
    """Rotation angles `Θ` for the tokens of an m-dimensional grid, flattened row-major.

    The angle channels (K for "cosine", one per pair, K/2, for "rotary") are split into m contiguous slices, one
    per grid axis; slice `a` of token `(s_1, ..., s_m)` holds `s_a θ` with `θ_i = 10000^(-i/e)`, `e = ⌈width/m⌉`.
    Encoding q and k̄ with them makes their inner product depend only on the offset between two tokens along each
    axis. Extra tokens (class, condition) come first and get `Θ = 0`. Nothing here is learned, so any grid size works.

    Args:
        head_dim: K, the query/key width of one head ("rotary" needs it even).
        num_axes: m, the number of grid axes (2 for images).
        base: The frequency base of `θ`.
        form: "rotary" (angles `[N, K/2]`) or "cosine" (the paper's, angles `[N, K]`).
    """

    def __init__(self, head_dim: int, num_axes: int = 2, base: float = 10000.0, form: str = "cosine") -> None:
        super().__init__()
        if form not in LRPE_FORMS:
            raise ValueError(f"MDLRPE form must be one of {LRPE_FORMS}, got {form!r}")
        if form == "rotary" and head_dim % 2:
            raise ValueError(f"rotary MD-LRPE turns channel pairs and needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.num_axes = num_axes
        self.form = form
        self.width = head_dim if form == "cosine" else head_dim // 2
        slice_width = math.ceil(self.width / num_axes)
        exponents = torch.arange(slice_width, dtype=torch.float64) / slice_width
        self.register_buffer("theta", (base**-exponents).float(), persistent=False)  # [e]

    def forward(self, grid_size: tuple[int, ...], num_extra_tokens: int = 0) -> Tensor:
        if len(grid_size) != self.num_axes:
            raise ValueError(f"MDLRPE was built for {self.num_axes} grid axes, got grid_size {tuple(grid_size)}")
        axes = [torch.arange(n, device=self.theta.device, dtype=torch.float32) for n in grid_size]
        positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.num_axes)  # [N, m]
        angles = positions[:, :, None] * self.theta  # [N, m, e]
        angles = angles.reshape(positions.shape[0], -1)[:, : self.width]  # [N, width], one slice per axis
        extra = angles.new_zeros(num_extra_tokens, self.width)
        return torch.cat([extra, angles], dim=0)  # [num_extra + N, width]
