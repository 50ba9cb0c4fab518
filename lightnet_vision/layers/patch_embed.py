"""Non-overlapping patch embedding: images `[B, C, H, W]` to tokens `[B, N, D]` on a `(H/p, W/p)` grid."""

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """A strided convolution; any input whose height and width divide by the patch size is accepted.

    Args:
        patch_size: Side p of a square patch.
        in_chans: Input channels C.
        embed_dim: Token width D.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input size {height}x{width} is not divisible by the patch size {p}")
        return height // p, width // p

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if x.dim() != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"PatchEmbed expects [B, {self.proj.in_channels}, H, W], got {tuple(x.shape)}")
        grid = self.grid_size(x.shape[2], x.shape[3])
        return self.proj(x).flatten(2).transpose(1, 2), grid  # [B, N, D], (h, w)
