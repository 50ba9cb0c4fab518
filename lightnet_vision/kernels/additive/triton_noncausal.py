"""Fused Triton kernels for the non-causal additive attention of LightNet (arXiv 2405.21022), forward and backward.

One program per (batch, head) streams the tokens twice: the forward builds the per-channel log-normaliser of k with an
online running max together with the state `S = k̃ᵀ v` (fp32, `[K, V]`, or two `[K, V]` halves with MD-LRPE angles),
then writes `o = q̃ S`. The rotation `[x cos Θ, x sin Θ]` is applied on the fly from the `[N, K]` angles, never
materialised. The maths of the backward is in README.md.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

# Largest head dim (K or V) one program holds: the state lives in registers.
MAX_HEAD_DIM = 128
# Tests set this to fill every output with NaN before a launch, so that a missed write cannot go unnoticed.
POISON_OUTPUTS = False


@triton.jit
def _additive_fwd_kernel(
    q,
    k,
    v,
    angles,
    o,
    state,
    row_max,
    log_sum,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    # q, k, v, o are contiguous [B, N, H, K|V]: token stride H * K (or H * V).
    qk_ptr = i_b * N * H * K + i_h * K + offs_k[None, :]
    v_ptr = i_b * N * H * V + i_h * V + offs_v[None, :]

    # Pass 1: running max m, running sum l of exp(k - m) and the unnormalised state, rescaled whenever m grows.
    m = tl.full([BK], float("-inf"), tl.float32)
    l_sum = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk, mask_tv = mask_t[:, None] & mask_k[None, :], mask_t[:, None] & mask_v[None, :]
        b_k = tl.load(k + qk_ptr + t[:, None] * (H * K), mask=mask_tk, other=float("-inf")).to(tl.float32)
        b_v = tl.load(v + v_ptr + t[:, None] * (H * V), mask=mask_tv, other=0.0).to(tl.float32)
        m_new = tl.maximum(m, tl.max(b_k, axis=0))
        # A channel that has seen only -inf so far gets reference 0, so that exp never evaluates -inf - (-inf).
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        p = tl.exp(b_k - m_ref[None, :])  # [BT, BK], <= 1
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        if USE_ANGLES:
            theta = tl.load(angles + t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0).to(tl.float32)
            s_cos = s_cos * alpha[:, None] + tl.dot(tl.trans(p * tl.cos(theta)), b_v, input_precision="ieee")
            s_sin = s_sin * alpha[:, None] + tl.dot(tl.trans(p * tl.sin(theta)), b_v, input_precision="ieee")
        else:
            s_cos = s_cos * alpha[:, None] + tl.dot(tl.trans(p), b_v, input_precision="ieee")
        m = m_new

    m_ref = tl.where(m == float("-inf"), 0.0, m)
    l_safe = tl.where(l_sum > 0.0, l_sum, 1.0)
    s_cos = s_cos / l_safe[:, None]
    s_sin = s_sin / l_safe[:, None]
    # The normaliser is kept as (max, log of the sum), not as one fp32 sum: at |k| = 1e4 its ulp would be 1e-3.
    tl.store(row_max + i_bh * K + offs_k, m_ref, mask=mask_k)
    tl.store(log_sum + i_bh * K + offs_k, tl.log(l_safe), mask=mask_k)
    # state is [B * H, 2, K, V] in fp32: the cos half (or the plain state), then the sin half.
    s_ptr = state + i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tl.store(s_ptr, s_cos, mask=mask_kv)
    tl.store(s_ptr + K * V, s_sin, mask=mask_kv)

    # Pass 2: o = q̃ S.
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk, mask_tv = mask_t[:, None] & mask_k[None, :], mask_t[:, None] & mask_v[None, :]
        b_q = tl.load(q + qk_ptr + t[:, None] * (H * K), mask=mask_tk, other=0.0).to(tl.float32)
        if USE_ANGLES:
            theta = tl.load(angles + t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0).to(tl.float32)
            b_o = tl.dot(b_q * tl.cos(theta), s_cos, input_precision="ieee")
            b_o += tl.dot(b_q * tl.sin(theta), s_sin, input_precision="ieee")
        else:
            b_o = tl.dot(b_q, s_cos, input_precision="ieee")
        tl.store(o + v_ptr + t[:, None] * (H * V), b_o.to(o.dtype.element_ty), mask=mask_tv)


@triton.jit
def _additive_bwd_kernel(
    q,
    k,
    v,
    angles,
    do,
    state,
    row_max,
    log_sum,
    dq,
    dk,
    dv,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_ptr = i_b * N * H * K + i_h * K + offs_k[None, :]
    v_ptr = i_b * N * H * V + i_h * V + offs_v[None, :]
    s_ptr = state + i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    s_cos = tl.load(s_ptr, mask=mask_kv, other=0.0)
    s_sin = tl.load(s_ptr + K * V, mask=mask_kv, other=0.0)
    m = tl.load(row_max + i_bh * K + offs_k, mask=mask_k, other=0.0)
    log_l = tl.load(log_sum + i_bh * K + offs_k, mask=mask_k, other=0.0)

    # Pass 1: dS = q̃ᵀ do.
    ds_cos = tl.zeros([BK, BV], dtype=tl.float32)
    ds_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk, mask_tv = mask_t[:, None] & mask_k[None, :], mask_t[:, None] & mask_v[None, :]
        b_q = tl.load(q + qk_ptr + t[:, None] * (H * K), mask=mask_tk, other=0.0).to(tl.float32)
        b_do = tl.load(do + v_ptr + t[:, None] * (H * V), mask=mask_tv, other=0.0).to(tl.float32)
        if USE_ANGLES:
            theta = tl.load(angles + t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0).to(tl.float32)
            ds_cos += tl.dot(tl.trans(b_q * tl.cos(theta)), b_do, input_precision="ieee")
            ds_sin += tl.dot(tl.trans(b_q * tl.sin(theta)), b_do, input_precision="ieee")
        else:
            ds_cos += tl.dot(tl.trans(b_q), b_do, input_precision="ieee")
    # Σ_n k̄[n, c] dk̄[n, c] = Σ_v (S ⊙ dS)[c, v] over both halves: the softmax correction without another pass.
    corr = tl.sum(s_cos * ds_cos + s_sin * ds_sin, axis=1)  # [BK]

    # Pass 2: dq = do Sᵀ (rotated back), dv = k̃ dS, dk = k̄ ⊙ (dk̄ - corr) with dk̄ = v dSᵀ (rotated back).
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk, mask_tv = mask_t[:, None] & mask_k[None, :], mask_t[:, None] & mask_v[None, :]
        b_k = tl.load(k + qk_ptr + t[:, None] * (H * K), mask=mask_tk, other=float("-inf")).to(tl.float32)
        b_v = tl.load(v + v_ptr + t[:, None] * (H * V), mask=mask_tv, other=0.0).to(tl.float32)
        b_do = tl.load(do + v_ptr + t[:, None] * (H * V), mask=mask_tv, other=0.0).to(tl.float32)
        k_bar = tl.exp((b_k - m[None, :]) - log_l[None, :])  # [BT, BK]
        if USE_ANGLES:
            theta = tl.load(angles + t[:, None] * K + offs_k[None, :], mask=mask_tk, other=0.0).to(tl.float32)
            cos, sin = tl.cos(theta), tl.sin(theta)
            b_dq = tl.dot(b_do, tl.trans(s_cos), input_precision="ieee") * cos
            b_dq += tl.dot(b_do, tl.trans(s_sin), input_precision="ieee") * sin
            b_dv = tl.dot(k_bar * cos, ds_cos, input_precision="ieee")
            b_dv += tl.dot(k_bar * sin, ds_sin, input_precision="ieee")
            dk_bar = tl.dot(b_v, tl.trans(ds_cos), input_precision="ieee") * cos
            dk_bar += tl.dot(b_v, tl.trans(ds_sin), input_precision="ieee") * sin
        else:
            b_dq = tl.dot(b_do, tl.trans(s_cos), input_precision="ieee")
            b_dv = tl.dot(k_bar, ds_cos, input_precision="ieee")
            dk_bar = tl.dot(b_v, tl.trans(ds_cos), input_precision="ieee")
        b_dk = k_bar * (dk_bar - corr[None, :])
        tl.store(dq + qk_ptr + t[:, None] * (H * K), b_dq.to(dq.dtype.element_ty), mask=mask_tk)
        tl.store(dk + qk_ptr + t[:, None] * (H * K), b_dk.to(dk.dtype.element_ty), mask=mask_tk)
        tl.store(dv + v_ptr + t[:, None] * (H * V), b_dv.to(dv.dtype.element_ty), mask=mask_tv)


def _empty(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _block_sizes(n: int, k: int, v: int) -> tuple[int, int, int]:
    # tl.dot needs every block dim >= 16; K and V are padded to a power of two and masked.
    return (
        max(16, min(64, triton.next_power_of_2(n))),
        max(16, triton.next_power_of_2(k)),
        max(16, triton.next_power_of_2(v)),
    )


def additive_fwd(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, N, H, V]` (dtype of v), fp32 state `[B, H, 2, K, V]`, log-normaliser (max, log-sum) `[B, H, K]`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    o = _empty((batch, n, heads, dim_v), v, v.dtype)
    state = _empty((batch, heads, 2, dim_k, dim_v), v, torch.float32)
    row_max = _empty((batch, heads, dim_k), v, torch.float32)
    log_sum = _empty((batch, heads, dim_k), v, torch.float32)
    bt, bk, bv = _block_sizes(n, dim_k, dim_v)
    _additive_fwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        angles,
        o,
        state,
        row_max,
        log_sum,
        n,
        H=heads,
        K=dim_k,
        V=dim_v,
        BT=bt,
        BK=bk,
        BV=bv,
        USE_ANGLES=angles is not None,
    )
    return o, state, row_max, log_sum


def additive_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None,
    do: Tensor,
    state: Tensor,
    row_max: Tensor,
    log_sum: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients `(dq, dk, dv)` in the dtypes of q, k, v, from the state and normaliser saved by `additive_fwd`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    dq, dk, dv = _empty(q.shape, q, q.dtype), _empty(k.shape, k, k.dtype), _empty(v.shape, v, v.dtype)
    bt, bk, bv = _block_sizes(n, dim_k, dim_v)
    _additive_bwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        angles,
        do,
        state,
        row_max,
        log_sum,
        dq,
        dk,
        dv,
        n,
        H=heads,
        K=dim_k,
        V=dim_v,
        BT=bt,
        BK=bk,
        BV=bv,
        USE_ANGLES=angles is not None,
    )
    return dq, dk, dv


class AdditiveAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None) -> Tensor:
        o, state, row_max, log_sum = additive_fwd(q, k, v, angles)
        ctx.save_for_backward(q, k, v, angles, state, row_max, log_sum)
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, angles, state, row_max, log_sum = ctx.saved_tensors
        dq, dk, dv = additive_bwd(q, k, v, angles, do.contiguous(), state, row_max, log_sum)
        return dq, dk, dv, None


def noncausal_additive_attention(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None = None) -> Tensor:
    """Non-causal additive attention `o = q̃ (k̃ᵀ v)` with `k̄ = softmax_N(k)` per channel, in two fused Triton kernels.

    Every sum, the log-normaliser and the state are fp32 whatever the input dtype (fp32, bf16 or fp16); key logits
    of ±1e4 stay finite. With `angles`, q and k̄ are rotated to `[x cos Θ, x sin Θ]` inside the kernels. The layers
    reach this through `additive_attention(..., impl="auto" | "triton")`, which also checks the shapes.

    Args:
        q: Activated queries `[B, N, H, K]`.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        angles: MD-LRPE angles `[N, K]`, fixed: no gradient flows to them.

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    if max(k.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton additive attention supports head dims up to {MAX_HEAD_DIM}, got K={k.shape[-1]}, "
            f"V={v.shape[-1]}"
        )
    if angles is not None and angles.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("the Triton additive attention has no gradient for angles; use impl='torch'")
    if angles is not None:
        angles = angles.detach().contiguous()
    return AdditiveAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), angles)
