"""Chunked Triton kernels for the causal additive attention of LightNet (arXiv 2405.21022), forward and backward.

One program per (batch, head) walks the tokens in chunks of `BT`. Inside a chunk the weight of token s at step t,
`exp(k_s − z_t)` for `s ≤ t`, is formed in log space as a `[BT, BT, K]` block (no factorisation into
`exp(k_s) · exp(−z_t)`, which overflows for key logits of ±1e4); across chunks an fp32 state is carried and rescaled
by `exp(z_before − z_t) ≤ 1`. The running log-normaliser `z_t` is kept as the pair (running max, log of the sum
relative to it). The maths of the backward is in README.md.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightnet_vision.kernels.additive.triton_blocks import (
    accumulate_state,
    apply_state,
    apply_state_transposed,
    dot_precision,
    load_rows,
    store_rows,
)
from lightnet_vision.kernels.additive.triton_noncausal import _empty, check_triton_inputs

# Tokens per chunk: the intra-chunk block holds BT * BT * K fp32 weights.
CHUNK_SIZE = 16


@triton.jit
def _chunk_normaliser(b_k, m_b, r_b, offs_t):
    # Log-normaliser z_t = logsumexp(z_before, k_s for s <= t of this chunk), as (max m_t, log-sum r_t), [BT, BK].
    causal = offs_t[:, None] >= offs_t[None, :]  # [BT(t), BT(s)]
    k_ts = tl.where(causal[:, :, None], b_k[None, :, :], float("-inf"))  # [BT, BT, BK]
    m_t = tl.maximum(tl.max(k_ts, axis=1), m_b[None, :])
    # Reference 0 for a channel that has seen only -inf (a padded channel): exp never evaluates -inf - (-inf).
    m_t = tl.where(m_t == float("-inf"), 0.0, m_t)
    l_t = tl.sum(tl.exp(k_ts - m_t[:, None, :]), axis=1) + tl.exp(m_b[None, :] - m_t + r_b[None, :])
    r_t = tl.log(tl.where(l_t > 0.0, l_t, 1.0))
    return m_t, r_t


@triton.jit
def _intra_weights(b_k, m_t, r_t, theta, offs_t, mask_t, USE_ANGLES: tl.constexpr):
    # w[t, s, c] = exp(k_s - z_t) for s <= t (0 otherwise), times cos(Θ_t - Θ_s) with angles: [BT, BT, BK].
    # Rows of tokens past N are masked too: their loaded normaliser is 0, which would make exp(k_s - z_t) overflow.
    causal = (offs_t[:, None] >= offs_t[None, :]) & mask_t[None, :] & mask_t[:, None]
    log_w = (b_k[None, :, :] - m_t[:, None, :]) - r_t[:, None, :]
    w = tl.exp(tl.where(causal[:, :, None], log_w, float("-inf")))
    if USE_ANGLES:
        w = w * tl.cos(theta[:, None, :] - theta[None, :, :])
    return w


@triton.jit
def _causal_fwd_kernel(
    q,
    k,
    v,
    angles,
    o,
    z_max,
    z_log,
    N,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V

    # Log-normaliser at the end of the previous chunk (none yet: -inf) and the state normalised by it.
    m_b = tl.full([BK], float("-inf"), tl.float32)
    r_b = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        b_q = load_rows(q + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        m_t, r_t = _chunk_normaliser(b_k, m_b, r_b, offs_t)
        store_rows(z_max + qk_offset, t, offs_k, mask_t, mask_k, H * K, m_t)
        store_rows(z_log + qk_offset, t, offs_k, mask_t, mask_k, H * K, r_t)

        # Intra-chunk: scores[t, s] = Σ_c q_tc w_tsc, then scores @ v.
        w = _intra_weights(b_k, m_t, r_t, theta, offs_t, mask_t, USE_ANGLES)
        scores = tl.sum(b_q[:, None, :] * w, axis=2)  # [BT, BT]
        b_o = tl.dot(scores, b_v, input_precision=PRECISION)
        # Inter-chunk: the state so far, rescaled from z_before to z_t.
        q_decay = b_q * tl.exp((m_b[None, :] - m_t) + (r_b[None, :] - r_t))
        b_o += apply_state(q_decay, theta, s_cos, s_sin, USE_ANGLES, PRECISION)
        store_rows(o + v_offset, t, offs_v, mask_t, mask_v, H * V, b_o)

        # Carry the state to the end of the chunk: the normaliser of its last real token.
        last = tl.minimum(BT, N - start) - 1
        is_last = (offs_t == last)[:, None]
        m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
        r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)
        carry = tl.exp((m_b - m_e) + (r_b - r_e))
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])  # [BT, BK], 0 for padded tokens
        s_cos, s_sin = accumulate_state(s_cos, s_sin, carry, k_end, theta, b_v, USE_ANGLES, PRECISION)
        m_b, r_b = m_e, r_e


@triton.jit
def _causal_bwd_kernel(
    q,
    k,
    v,
    angles,
    do,
    z_max,
    z_log,
    g,
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
    PRECISION: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V

    # Pass 1, forward in time: dq_t = Σ_{s<=t} w_ts rot_ts (do_t · v_s), and G = q ⊙ dq (the gradient through z_t).
    m_b = tl.full([BK], float("-inf"), tl.float32)
    r_b = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk = mask_t[:, None] & mask_k[None, :]
        b_q = load_rows(q + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        m_t = load_rows(z_max + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        r_t = load_rows(z_log + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        w = _intra_weights(b_k, m_t, r_t, theta, offs_t, mask_t, USE_ANGLES)
        do_v = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BT(t), BT(s)]
        b_dq = tl.sum(w * do_v[:, :, None], axis=1)
        # Rows past N read a normaliser of 0; they must not turn exp(z_before - z_t) into inf (and later 0 · inf).
        decay = tl.exp(tl.where(mask_tk, (m_b[None, :] - m_t) + (r_b[None, :] - r_t), float("-inf")))
        b_dq += decay * apply_state_transposed(b_do, theta, s_cos, s_sin, USE_ANGLES, PRECISION)
        store_rows(dq + qk_offset, t, offs_k, mask_t, mask_k, H * K, b_dq)
        store_rows(g + qk_offset, t, offs_k, mask_t, mask_k, H * K, b_q * b_dq)

        last = tl.minimum(BT, N - start) - 1
        is_last = (offs_t == last)[:, None]
        m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
        r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)
        carry = tl.exp((m_b - m_e) + (r_b - r_e))
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])
        s_cos, s_sin = accumulate_state(s_cos, s_sin, carry, k_end, theta, b_v, USE_ANGLES, PRECISION)
        m_b, r_b = m_e, r_e

    # Pass 2, backward in time. Carried, relative to z at the end of the current chunk (z_e):
    # dS = Σ_{t later} (q_t ⊙ exp(z_e - z_t) rot_t)ᵀ do_t and rg = Σ_{t later} exp(z_e - z_t) ⊙ G_t.
    ds_cos = tl.zeros([BK, BV], dtype=tl.float32)
    ds_sin = tl.zeros([BK, BV], dtype=tl.float32)
    rg = tl.zeros([BK], dtype=tl.float32)
    n_chunks = tl.cdiv(N, BT)
    for i in range(0, n_chunks):
        start = (n_chunks - 1 - i) * BT
        t = start + offs_t
        mask_t = t < N
        mask_tk = mask_t[:, None] & mask_k[None, :]
        b_q = load_rows(q + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_g = load_rows(g + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        m_t = load_rows(z_max + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        r_t = load_rows(z_log + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        last = tl.minimum(BT, N - start) - 1
        is_last = (offs_t == last)[:, None]
        m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
        r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)

        # Inter-chunk: tokens of this chunk seen by every later step, through the carried dS and rg.
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])  # exp(k_s - z_e), 0 for padded tokens
        b_dv = apply_state(k_end, theta, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        dk_num = apply_state_transposed(b_v, theta, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        b_dk = k_end * (dk_num - rg[None, :])

        # Intra-chunk, t >= s inside the chunk.
        w = _intra_weights(b_k, m_t, r_t, theta, offs_t, mask_t, USE_ANGLES)  # [BT(t), BT(s), BK]
        do_v = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BT(t), BT(s)]
        scores = tl.sum(b_q[:, None, :] * w, axis=2)  # [BT(t), BT(s)]
        b_dv += tl.dot(tl.trans(scores), b_do, input_precision=PRECISION)
        b_dk += tl.sum(w * (b_q[:, None, :] * do_v[:, :, None]), axis=0)
        # The z_t term: d z_t / d k_s = exp(k_s - z_t), without the rotation.
        w_plain = _intra_weights(b_k, m_t, r_t, theta, offs_t, mask_t, False)
        b_dk -= tl.sum(w_plain * b_g[:, None, :], axis=0)
        store_rows(dk + qk_offset, t, offs_k, mask_t, mask_k, H * K, b_dk)
        store_rows(dv + v_offset, t, offs_v, mask_t, mask_v, H * V, b_dv)

        # Move the carries from z_e to z at the end of the previous chunk (z_b; -inf before the first chunk).
        prev = tl.maximum(start - 1, 0)
        has_prev = start > 0
        prev_offset = qk_offset + prev * (H * K) + offs_k
        m_b = tl.load(z_max + prev_offset, mask=mask_k & has_prev, other=float("-inf"))
        r_b = tl.load(z_log + prev_offset, mask=mask_k & has_prev, other=0.0)
        carry = tl.exp((m_b - m_e) + (r_b - r_e))  # [BK]
        decay = tl.exp(tl.where(mask_tk, (m_b[None, :] - m_t) + (r_b[None, :] - r_t), float("-inf")))  # [BT, BK]
        q_decay = b_q * decay
        ds_cos, ds_sin = accumulate_state(ds_cos, ds_sin, carry, q_decay, theta, b_do, USE_ANGLES, PRECISION)
        rg = carry * rg + tl.sum(decay * b_g, axis=0)


def _block_sizes(k: int, v: int) -> tuple[int, int, int]:
    return CHUNK_SIZE, max(16, triton.next_power_of_2(k)), max(16, triton.next_power_of_2(v))


def causal_fwd(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Output `[B, N, H, V]` (dtype of v) and the running log-normaliser (max, log-sum) `[B, N, H, K]` in fp32."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    o = _empty((batch, n, heads, dim_v), v, v.dtype)
    z_max = _empty(k.shape, k, torch.float32)
    z_log = _empty(k.shape, k, torch.float32)
    bt, bk, bv = _block_sizes(dim_k, dim_v)
    _causal_fwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        angles,
        o,
        z_max,
        z_log,
        n,
        H=heads,
        K=dim_k,
        V=dim_v,
        BT=bt,
        BK=bk,
        BV=bv,
        USE_ANGLES=angles is not None,
        PRECISION=dot_precision(v.dtype),
    )
    return o, z_max, z_log


def causal_bwd(
    q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, do: Tensor, z_max: Tensor, z_log: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients `(dq, dk, dv)` in the dtypes of q, k, v, from the log-normaliser saved by `causal_fwd`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    dq, dk, dv = _empty(q.shape, q, q.dtype), _empty(k.shape, k, k.dtype), _empty(v.shape, v, v.dtype)
    g = _empty(k.shape, k, torch.float32)
    bt, bk, bv = _block_sizes(dim_k, dim_v)
    _causal_bwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        angles,
        do,
        z_max,
        z_log,
        g,
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
        PRECISION=dot_precision(v.dtype),
    )
    return dq, dk, dv


class CausalAdditiveAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None) -> Tensor:
        o, z_max, z_log = causal_fwd(q, k, v, angles)
        ctx.save_for_backward(q, k, v, angles, z_max, z_log)
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, angles, z_max, z_log = ctx.saved_tensors
        dq, dk, dv = causal_bwd(q, k, v, angles, do.contiguous(), z_max, z_log)
        return dq, dk, dv, None


def causal_additive_attention(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None = None) -> Tensor:
    """Causal additive attention `o_t = q̃_t S_t`, `S_t = diag(λ_t) S_{t−1} + k̃_t v_tᵀ`, in chunked Triton kernels.

    The softmax of every key channel runs over the prefix `s ≤ t` (raster order). The running log-normaliser, the
    state and every sum are fp32 whatever the input dtype; key logits of ±1e4 stay finite. The first token must be
    real (a padded first token has no normaliser). The layers reach this through
    `additive_attention(..., causal=True, impl="auto" | "triton")`, which also checks the shapes.

    Args:
        q: Activated queries `[B, N, H, K]`.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        angles: MD-LRPE angles `[N, K]`, fixed: no gradient flows to them.

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    angles = check_triton_inputs(k, v, angles)
    return CausalAdditiveAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), angles)
