"""The LightNet token mixer (arXiv 2405.21022): additive attention with MD-LRPE and a low-rank output gate.

The layer and its formulas: docs/method.md#token-mixer.
"""

import torch
from torch import Tensor, nn

from lightnet_vision.kernels import additive_attention
from lightnet_vision.layers.fused import PreNorm, gated_norm_projection, layer_norm_linears


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

    def forward(self, x: Tensor, angles: Tensor | None = None, norm: PreNorm | None = None) -> Tensor:
        """x `[B, N, D]` → `[B, N, D]`; `angles` the MD-LRPE angles of the N tokens. With `norm`, x is the block's
        residual stream and `norm` its pre-norm, applied here inside the qkv and gate projections (so that the
        backward keeps x rather than the norm's output, which it rebuilds)."""
        batch, n, dim = x.shape
        if norm is None:
            qkv, gate_hidden = self.qkv(x), self.gate[0](x)
        else:
            linears = [(self.qkv.weight, self.qkv.bias), (self.gate[0].weight, self.gate[0].bias)]
            qkv, gate_hidden = layer_norm_linears(x, norm, linears)  # [B, N, 3D], [B, N, K]
        q, k, v = qkv.reshape(batch, n, 3, self.num_heads, self.head_dim).unbind(2)  # 3 × [B, N, H, K]
        # SiLU of q inside the op: its backward keeps q only, not q and SiLU(q).
        o = additive_attention(
            q, k, v, causal=self.causal, angles=angles, lrpe=self.lrpe, q_activation="silu"
        )  # [B, N, H, K]
        # Per-head norm, low-rank output gate and output projection in one function that keeps only o and the gate.
        # nn.RMSNorm's default eps: that of the dtype it computes in, fp32 at least (so also for bf16 activations).
        eps = self.out_norm.eps
        if eps is None:
            eps = torch.finfo(torch.promote_types(o.dtype, torch.float32)).eps
        gate = (self.gate[1].weight, self.gate[1].bias)  # the gate's logits are formed from its rank-K hidden inside
        return gated_norm_projection(o, gate_hidden, *gate, self.out_norm.weight, self.proj.weight, self.proj.bias, eps)
