"""The LightNet token mixer (arXiv 2405.21022): additive attention with MD-LRPE and a low-rank output gate.

The layer and its formulas: docs/method.md#token-mixer.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from lightnet_vision.kernels import additive_attention


class LightNetAttention(nn.Module):
    """`out = W_o (Norm(additive_attention(SiLU(x W_q), x W_k, x W_v, Θ)) ⊙ sigmoid(x W_u1 W_u2))`.

    Args:
        dim: Model width D.
        num_heads: H; the head dim K = V = D / H is also the rank of the output gate.
        qkv_bias: Add a bias to the q, k and v projections.
        causal: Normalise the keys over the prefix (raster order) instead of over all tokens.
        lrpe: How the MD-LRPE angles given to `forward` act: "rotary" or "cosine" (see `MDLRPE`).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = False, causal: bool = False, lrpe: str = "cosine"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LightNetAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.lrpe = lrpe
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.gate = nn.Sequential(nn.Linear(dim, self.head_dim, bias=False), nn.Linear(self.head_dim, dim))
        self.out_norm = nn.RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, angles: Tensor | None = None) -> Tensor:
        batch, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim).unbind(2)  # 3 × [B, N, H, K]
        o = additive_attention(F.silu(q), k, v, causal=self.causal, angles=angles, lrpe=self.lrpe)  # [B, N, H, K]
        o = self.out_norm(o).reshape(batch, n, dim)  # per-head norm
        return self.proj(o * self.gate(x).sigmoid())  # low-rank output gate
