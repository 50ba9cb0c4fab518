"""LightNet block with adaLN-Zero conditioning (arXiv 2405.21022), the building block of the LightNet-DiT denoiser.

Layout: docs/method.md#block-and-glu.
"""

from torch import Tensor, nn

from lightnet_vision.layers.attention import LightNetAttention
from lightnet_vision.layers.fused import PreNorm
from lightnet_vision.layers.glu import GLU


class LightNetDiTBlock(nn.Module):
    """Pre-norm LightNet block whose norms are shifted, scaled and gated per sample by a conditioning vector.

    The modulation layer starts at zero, so the gates are zero and a fresh block is the identity.

    Args:
        dim: Model width D.
        num_heads: Attention heads H.
        lrpe: How the MD-LRPE angles act in the attention: "rotary" or "cosine" (see `MDLRPE`).
        mlp_ratio: The GLU has the parameters of an MLP of hidden width `mlp_ratio · D` (DiT's keyword): hidden
            width `round(2 · mlp_ratio · D / 3)`, `round(8D/3)` at the default 4.
    """

    def __init__(self, dim: int, num_heads: int, lrpe: str = "cosine", mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = LightNetAttention(dim, num_heads, lrpe=lrpe)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GLU(dim, round(2 * mlp_ratio * dim / 3))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor, angles: Tensor | None = None) -> Tensor:
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        # modulate(norm(x), shift, scale) is applied inside the first projections of each branch: the backward
        # keeps x, not the modulated norm's output.
        norm_attn = PreNorm(1 + scale_attn[:, None], shift_attn[:, None], self.norm1.eps)
        x = x + gate_attn[:, None] * self.attn(x, angles, norm=norm_attn)
        norm_mlp = PreNorm(1 + scale_mlp[:, None], shift_mlp[:, None], self.norm2.eps)
        return x + gate_mlp[:, None] * self.mlp(x, norm=norm_mlp)
