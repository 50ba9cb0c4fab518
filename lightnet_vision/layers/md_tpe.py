"""MD-TPE, the multi-dimensional Toeplitz positional encoding of LightNet (arXiv 2405.21022; docs/method.md#md-tpe)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TPE_FORMS = ("symmetric", "asymmetric")


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


def toeplitz_along(x: Tensor, decay_forward: Tensor, decay_backward: Tensor, dim: int) -> Tensor:
    """`T x` along `dim` with `T_ij = decay_forward^(i-j)` for `i ≥ j` and `decay_backward^(j-i)` for `i < j`.

    A forward scan `f_i = x_i + λ_f f_{i-1}` plus a backward scan `b_i = x_i + λ_b b_{i+1}`, minus the diagonal
    counted twice. Each scan runs by doubling (`f ← f + λ^s shift(f, s)` for s = 1, 2, 4, ...), so an axis of length
    n costs log2(n) vectorised steps. The decays broadcast against `x` (one value per head group); equal decays give
    the paper's symmetric `λ^|i-j|`.

    Under `torch.export` (and so the ONNX exporter) the axis length is symbolic and the number of doubling steps
    cannot follow it: the matrix `T` is formed instead (`toeplitz_matrix_along`), so an exported model runs at any
    grid size.
    """
    if torch.compiler.is_exporting():
        return toeplitz_matrix_along(x, decay_forward, decay_backward, dim)
    forward, backward = x, x
    offset, power_forward, power_backward = 1, decay_forward, decay_backward
    while offset < x.shape[dim]:
        forward = forward + power_forward * _shift(forward, offset, dim)
        backward = backward + power_backward * _shift(backward, -offset, dim)
        offset, power_forward, power_backward = offset * 2, power_forward**2, power_backward**2
    return forward + backward - x


def toeplitz_matrix(decay_forward: Tensor, decay_backward: Tensor, n: int) -> Tensor:
    """The Toeplitz matrices `[..., n, n]`, `T_ij = decay_forward^(i-j)` for `i ≥ j` and `decay_backward^(j-i)` for
    `i < j`, one per element of the decays `[...]`."""
    index = torch.arange(n, device=decay_forward.device)
    offset = (index[:, None] - index[None, :]).to(decay_forward.dtype)  # [n, n], i - j
    below = decay_forward[..., None, None] ** offset.clamp(min=0)
    above = decay_backward[..., None, None] ** (-offset).clamp(min=0)
    return torch.where(offset >= 0, below, above)


def toeplitz_matrix_along(x: Tensor, decay_forward: Tensor, decay_backward: Tensor, dim: int) -> Tensor:
    """`toeplitz_along` with the n×n matrix `T` formed from the offsets `i - j`: O(n) work per element instead of
    O(log n), but no Python loop over n. The decays broadcast against the dims of `x` after `dim`."""
    matrix = toeplitz_matrix(decay_forward, decay_backward, x.shape[dim])  # [*decay, n, n]
    dtype = torch.promote_types(x.dtype, matrix.dtype)
    moved = x.movedim(dim, -1)[..., None].to(dtype)  # [..., n, 1]
    return (matrix.to(dtype) @ moved)[..., 0].movedim(-1, dim)


class MDTPE(nn.Module):
    """`MDTPE(x) = Linear(RMSNorm_per_head(Σ_a T^(a) x))` with a Toeplitz `T^(a)` along each grid axis `a`.

    "symmetric" (the paper's): `T^(a)_ij = λ_{a,h}^|i-j|`, the same decay both ways, so the operator cannot tell
    a token's left from its right. "asymmetric": a decay per direction, `λ_{a,h,→}^(i-j)` for `i ≥ j` and
    `λ_{a,h,←}^(j-i)` for `i < j`; the two start as the same range in opposite orders over the heads, so every head
    but the middle one leans one way from the start. Decays are `sigmoid` of learned logits per axis and head
    group; nothing depends on the grid size. The caller adds the result to its input: `x ← x + MDTPE(x)`.

    Args:
        dim: Channel width D.
        num_heads: Head groups sharing one decay per axis (and direction).
        num_axes: Number of grid axes (2 for images).
        decay_range: Initial decays, spread evenly over the heads in this range.
        form: "symmetric" or "asymmetric".
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_axes: int = 2,
        decay_range: tuple[float, float] = (0.5, 0.95),
        form: str = "symmetric",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MDTPE: dim {dim} is not divisible by num_heads {num_heads}")
        if form not in TPE_FORMS:
            raise ValueError(f"MDTPE form must be one of {TPE_FORMS}, got {form!r}")
        self.num_heads = num_heads
        self.num_axes = num_axes
        self.form = form
        decay = torch.logit(torch.linspace(*decay_range, num_heads))  # [H]
        if form == "symmetric":
            self.decay_logit = nn.Parameter(decay.repeat(num_axes, 1))  # [m, H]
        else:
            self.decay_logit = nn.Parameter(torch.stack([decay, decay.flip(0)]).repeat(num_axes, 1, 1))  # [m, 2, H]
        self.norm_weight = nn.Parameter(torch.ones(dim))
        self.proj = nn.Linear(dim, dim)

    def mix(self, x: Tensor, grid_size: tuple[int, ...]) -> Tensor:
        """`Σ_a T^(a) x` for `x` `[B, N, D]` on `grid_size`, returned as `[B, N, H, D/H]` (fp32 at least).

        Each `T^(a)` is formed as `[H, n_a, n_a]` matrices and applied by one batched matmul along its axis: n_a
        multiply-adds per value, which for the grids of images (n_a up to a few hundred) is cheaper than the
        2 log2(n_a) elementwise passes of `toeplitz_along`'s scans, and the backward keeps only x, not the scans'
        intermediates: its gradient with respect to x is `T^(a)ᵀ` applied the same way.
        """
        batch, n, dim = x.shape
        if len(grid_size) != self.num_axes or n != math.prod(grid_size):
            raise ValueError(f"MDTPE expects {self.num_axes} axes covering N={n} tokens, got grid_size {grid_size}")
        dtype = torch.promote_types(self.decay_logit.dtype, torch.float32)
        decay = torch.sigmoid(self.decay_logit.to(dtype))
        if self.form == "symmetric":
            decay = torch.stack([decay, decay], dim=1)  # [m, 2, H]: the same decay both ways
        x = x.reshape(batch, *grid_size, self.num_heads, dim // self.num_heads)  # [B, n_1, ..., n_m, H, D/H]
        axes = "ABCDEFGH"[: self.num_axes]  # one subscript per grid axis
        mixed = 0
        # The products in the decays' precision, as the scans' elementwise products were.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, dtype))
            for axis, length in enumerate(grid_size):
                matrix = toeplitz_matrix(decay[axis, 0], decay[axis, 1], length)  # [H, n_a, n_a]
                source = f"z{axes}hc"  # batch z, grid axes, head h, channel c
                target = source.replace(axes[axis], "y")
                mixed = mixed + torch.einsum(f"hy{axes[axis]},{source}->{target}", matrix, x)
        return mixed.reshape(batch, n, self.num_heads, dim // self.num_heads)

    def forward(self, x: Tensor, grid_size: tuple[int, ...]) -> Tensor:
        mixed = self.mix(x, grid_size)  # [B, N, H, D/H]
        normed = F.rms_norm(mixed, mixed.shape[-1:]).flatten(2) * self.norm_weight  # [B, N, D]
        return self.proj(normed.to(x.dtype))
