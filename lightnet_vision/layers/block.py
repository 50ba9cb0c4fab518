"""The pre-norm LightNet block (arXiv 2405.21022): token mixing by LightNet attention, channel mixing by a GLU.

Layout: docs/method.md#block-and-glu.
"""

from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from lightnet_vision.layers.attention import LightNetAttention
from lightnet_vision.layers.fused import PreNorm
from lightnet_vision.layers.glu import GLU


class LightNetBlock(nn.Module):
    """`x ← x + DropPath(LNA(LN(x)))`, then `x ← x + DropPath(GLU(LN(x)))`.

    Args:
        dim: Model width D.
        num_heads: Attention heads H.
        drop_path: Probability of dropping a whole residual branch per sample while training.
        qkv_bias: Add a bias to the q, k and v projections.
        causal: Causal additive attention (raster order).
        lrpe: How the MD-LRPE angles act in the attention: "rotary" or "cosine" (see `MDLRPE`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        drop_path: float = 0.0,
        qkv_bias: bool = False,
        causal: bool = False,
        lrpe: str = "cosine",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LightNetAttention(dim, num_heads, qkv_bias=qkv_bias, causal=causal, lrpe=lrpe)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GLU(dim)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor, angles: Tensor | None = None) -> Tensor:
        # Each norm is applied inside the first projections of its branch: the backward keeps x, not LN(x).
        x = x + self.drop_path(self.attn(x, angles, norm=PreNorm(self.norm1.weight, self.norm1.bias, self.norm1.eps)))
        return x + self.drop_path(self.mlp(x, norm=PreNorm(self.norm2.weight, self.norm2.bias, self.norm2.eps)))
