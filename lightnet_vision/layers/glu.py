"""The channel mixer of LightNet blocks (arXiv 2405.21022; docs/method.md#block-and-glu): `W_3(SiLU(W_1 x) ⊙ W_2 x)`."""

import torch.nn.functional as F
from torch import Tensor, nn


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

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * value)
