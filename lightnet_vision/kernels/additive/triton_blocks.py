"""Block helpers shared by the non-causal and causal Triton kernels: loads, stores and the two ways a state is used.

A token block is `[BT, BC]` (tokens × channels) of a contiguous `[B, N, H, C]` tensor, read in fp32. A state is the
pair `(s_cos, s_sin)` of `[BK, BV]` fp32 blocks: with MD-LRPE angles the rotated keys `[k cos Θ, k sin Θ]` give a
2K-wide state, held here as its two K-wide halves so that the rotated tensors never exist in global memory. Without
angles only `s_cos` is used. `PRECISION` is the `tl.dot` input precision: "ieee" for fp32 inputs, "tf32" for half ones.
"""

import torch
import triton
import triton.language as tl


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
def accumulate_state(s_cos, s_sin, scale, weights, theta, values, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`S ← scale ⊙ S + [w cos Θ, w sin Θ]ᵀ values` for weights `[BT, BK]`, values `[BT, BV]`, scale `[BK]`."""
    if USE_ANGLES:
        s_cos = scale[:, None] * s_cos + tl.dot(tl.trans(weights * tl.cos(theta)), values, input_precision=PRECISION)
        s_sin = scale[:, None] * s_sin + tl.dot(tl.trans(weights * tl.sin(theta)), values, input_precision=PRECISION)
    else:
        s_cos = scale[:, None] * s_cos + tl.dot(tl.trans(weights), values, input_precision=PRECISION)
    return s_cos, s_sin


@triton.jit
def apply_state(x, theta, s_cos, s_sin, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`[x cos Θ, x sin Θ] S` for a `[BT, BK]` block x: `[BT, BV]`."""
    if USE_ANGLES:
        out = tl.dot(x * tl.cos(theta), s_cos, input_precision=PRECISION)
        out += tl.dot(x * tl.sin(theta), s_sin, input_precision=PRECISION)
    else:
        out = tl.dot(x, s_cos, input_precision=PRECISION)
    return out


@triton.jit
def apply_state_transposed(y, theta, s_cos, s_sin, USE_ANGLES: tl.constexpr, PRECISION: tl.constexpr):
    """`y Sᵀ` for a `[BT, BV]` block y, folded back through the rotation: `cos Θ ⊙ y s_cosᵀ + sin Θ ⊙ y s_sinᵀ`."""
    if USE_ANGLES:
        out = tl.cos(theta) * tl.dot(y, tl.trans(s_cos), input_precision=PRECISION)
        out += tl.sin(theta) * tl.dot(y, tl.trans(s_sin), input_precision=PRECISION)
    else:
        out = tl.dot(y, tl.trans(s_cos), input_precision=PRECISION)
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs keep exact fp32 products; bf16/fp16 inputs already carry less precision than tf32."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
