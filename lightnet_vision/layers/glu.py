"""The channel mixer of LightNet blocks (arXiv 2405.21022; docs/method.md#block-and-glu): `W_3(SiLU(W_1 x) ⊙ W_2 x)`."""

from torch import Tensor, nn

from lightnet_vision.layers.fused import PreNorm, glu_projection, layer_norm_linears


class GLU(nn.Module):
    """Gated linear unit; the default hidden width `round(8D/3)` matches the parameters of a 4D MLP.

    Args:
        dim: Input and output width D.
        hidden_dim: Hidden width; `round(8 * dim / 3)` when None.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or round(8 * dim / 3)
        self.up = nn.Linear(dim, 2 * hidden_dim)  # W_1 and W_2 in one matmul
        self.down = nn.Linear(hidden_dim, dim)  # W_3

    def forward(self, x: Tensor, norm: PreNorm | None = None) -> Tensor:
        """x `[B, N, D]` → `[B, N, D]`; with `norm`, x is the block's residual stream and `norm` its pre-norm,
        applied inside the up-projection (the backward then keeps x, not the norm's output)."""
        hidden = self.up(x) if norm is None else layer_norm_linears(x, norm, [(self.up.weight, self.up.bias)])[0]
        # SiLU, the product and the down-projection in one function that keeps only the up-projection's output.
        return glu_projection(hidden, self.down.weight, self.down.bias)
