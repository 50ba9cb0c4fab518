"""Block helpers shared by the non-causal and causal Triton kernels: loads, stores and the two ways a state is used.

A token block is `[BT, BC]` (tokens × channels) of a contiguous `[B, N, H, C]` tensor, read in fp32. A state is the
pair `(s_cos, s_sin)` of `[BK, BV]` fp32 blocks: with MD-LRPE angles the rotated keys `[k cos Θ, k sin Θ]` give a
2K-wide state, held here as its two K-wide halves so that the rotated tensors never exist in global memory. The
kernels read `cos Θ` and `sin Θ` from a `[2, N, K]` fp32 table (`rotation_table`). Without angles only `s_cos` is
used. `PRECISION` is the `tl.dot` input precision: "ieee" for fp32 inputs, "tf32" for half ones.
`KernelConfig` is what a host wrapper chooses per launch (block sizes, warps, pipeline stages); the choice functions
of both wrappers return it, and `benchmarks/kernels_compile.py` compiles exactly those launches.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor


class KernelConfig(NamedTuple):
    """Block sizes of one launch: `bt` tokens, `bk` key channels, `bv` value channels; and its launch options."""

    bt: int
    bk: int
    bv: int
    num_warps: int
    num_stages: int

    def launch_args(self) -> dict[str, int]:
        """The keyword arguments of `kernel[grid](...)` that this config fixes."""
        return dict(BT=self.bt, BK=self.bk, BV=self.bv, num_warps=self.num_warps, num_stages=self.num_stages)


def padded(dim: int) -> int:
    """A head dim padded to the power of two `tl.arange` needs (at least 16, the smallest `tl.dot` operand)."""
    return max(16, triton.next_power_of_2(dim))


def tile(dim: int, largest: int) -> int:
    """Tile width (16, 32, ... up to `largest`) along a head dim that the grid cuts into tiles: the width that pads
    `dim` least (ties: the wider tile, fewer programs). A head dim of 72 gets tiles of 16 (80 padded, not 128)."""
    widths = [w for w in (16, 32, 64, 128) if w <= max(16, largest)]
    return min(widths, key=lambda w: (triton.cdiv(dim, w) * w, -w))


@triton.jit
def load_rows(base, t, offs_c, mask_t, mask_c, row_stride, other):
    """Tokens `t` × channels `offs_c` of a row-major tensor with `row_stride` elements per token, as fp32."""
    mask = mask_t[:, None] & mask_c[None, :]
    return tl.load(base + t[:, None] * row_stride + offs_c[None, :], mask=mask, other=other).to(tl.float32)


@triton.jit
def store_rows(base, t, offs_c, mask_t, mask_c, row_stride, block):
    """Writes a `[BT, BC]` block at tokens `t` × channels `offs_c`, cast to the tensor's dtype."""
    mask = mask_t[:, None] & mask_c[None, :]
    tl.store(base + t[:, None] * row_stride + offs_c[None, :], block.to(base.dtype.element_ty), mask=mask)


@triton.jit
def load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K: tl.constexpr):
    """`cos Θ` and `sin Θ` `[BT, BK]` of tokens t from the `[2, N, K]` fp32 table the host computes once per call.

    The kernels take no angles: the accurate `sinf`/`cosf` of CUDA carry a large-argument reduction whose inlined code
    per element cost far more registers than the state tiles (it made every kernel with angles spill)."""
    cos = load_rows(cos_sin, t, offs_k, mask_t, mask_k, K, 0.0)
    sin = load_rows(cos_sin + N * K, t, offs_k, mask_t, mask_k, K, 0.0)
    return cos, sin


@triton.jit
def accumulate_state(s_cos, s_sin, scale, weights, cos, sin, values, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`S ← scale ⊙ S + [w cos Θ, w sin Θ]ᵀ values` for weights `[BT, BK]`, values `[BT, BV]`, scale `[BK]`."""
    if USE_ANGLES:
        s_cos = scale[:, None] * s_cos + tl.dot(tl.trans(weights * cos), values, input_precision=PRECISION)
        s_sin = scale[:, None] * s_sin + tl.dot(tl.trans(weights * sin), values, input_precision=PRECISION)
    else:
        s_cos = scale[:, None] * s_cos + tl.dot(tl.trans(weights), values, input_precision=PRECISION)
    return s_cos, s_sin


@triton.jit
def apply_state(x, cos, sin, s_cos, s_sin, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`[x cos Θ, x sin Θ] S` for a `[BT, BK]` block x: `[BT, BV]`."""
    if USE_ANGLES:
        out = tl.dot(x * cos, s_cos, input_precision=PRECISION)
        out += tl.dot(x * sin, s_sin, input_precision=PRECISION)
    else:
        out = tl.dot(x, s_cos, input_precision=PRECISION)
    return out


@triton.jit
def apply_state_transposed(y, cos, sin, s_cos, s_sin, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`y Sᵀ` for a `[BT, BV]` block y, folded back through the rotation: `cos Θ ⊙ y s_cosᵀ + sin Θ ⊙ y s_sinᵀ`."""
    if USE_ANGLES:
        out = cos * tl.dot(y, tl.trans(s_cos), input_precision=PRECISION)
        out += sin * tl.dot(y, tl.trans(s_sin), input_precision=PRECISION)
    else:
        out = tl.dot(y, tl.trans(s_cos), input_precision=PRECISION)
    return out


def rotation_table(angles: Tensor) -> Tensor:
    """`[cos Θ, sin Θ]` `[2, N, K]` in fp32 (contiguous, no gradient) of angles `[N, K]`, as the kernels read them."""
    angles = angles.detach().float()
    return torch.stack([angles.cos(), angles.sin()]).contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs keep exact fp32 products; bf16/fp16 inputs already carry less precision than tf32."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
