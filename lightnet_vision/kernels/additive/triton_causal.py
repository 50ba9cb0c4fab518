"""Chunked Triton kernels for the causal additive attention of LightNet (arXiv 2405.21022), forward and backward.

The softmax over the prefix is per key channel, so every channel carries its own normaliser and its own rows of the
state, and every value channel its own columns: one program per (batch · head, tile of `BK` key channels, tile of
`BV` value channels) walks the tokens in chunks of `BT`. Inside a chunk the weight of token s at step t,
`exp(k_s − z_t)` for `s ≤ t`, is formed in log space as a `[BT, BT, BK]` block (no factorisation into
`exp(k_s) · exp(−z_t)`, which overflows for key logits of ±1e4); across chunks an fp32 `[BK, BV]` state tile is
carried and rescaled by `exp(z_before − z_t) ≤ 1`. The running log-normaliser `z_t` is kept as the pair (running max,
log of the sum relative to it). What sums over key channels (o, dv) or over value channels (dq, dk) gets one fp32
partial per tile, added on the host. The maths of the backward is in README.md.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightnet_vision.kernels.additive.triton_blocks import (
    KernelConfig,
    accumulate_state,
    apply_state,
    apply_state_transposed,
    dot_precision,
    load_rotation,
    load_rows,
    store_rows,
    tile,
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
def _intra_weights(b_k, m_t, r_t, offs_t, mask_t):
    # w[t, s, c] = exp(k_s - z_t) for s <= t (0 otherwise): [BT, BT, BK].
    # Rows of tokens past N are masked too: their loaded normaliser is 0, which would make exp(k_s - z_t) overflow.
    causal = (offs_t[:, None] >= offs_t[None, :]) & mask_t[None, :] & mask_t[:, None]
    log_w = (b_k[None, :, :] - m_t[:, None, :]) - r_t[:, None, :]
    return tl.exp(tl.where(causal[:, :, None], log_w, float("-inf")))


@triton.jit
def _rotate_weights(w, cos, sin, USE_ANGLES: tl.constexpr):
    # With angles, w[t, s, c] cos(Θ_t - Θ_s), where cos(Θ_t - Θ_s) = cos Θ_t cos Θ_s + sin Θ_t sin Θ_s.
    if USE_ANGLES:
        w = w * (cos[:, None, :] * cos[None, :, :] + sin[:, None, :] * sin[None, :, :])
    return w


@triton.jit
def _causal_fwd_kernel(
    q,
    k,
    v,
    cos_sin,
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
    # Grid (B * H, K tiles * V tiles). The output's columns of this V tile get this K tile's share of their sum over
    # the key channels: a partial [B, N, H, V] at index i_k of o, [K tiles, B, N, H, V] (the output for 1 K tile).
    i_bh, i_tile = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = (i_tile // NV).to(tl.int64), i_tile % NV
    offs_t = tl.arange(0, BT)
    offs_k, offs_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V
    o_offset = i_k * tl.num_programs(0) * N * V + v_offset

    # Log-normaliser at the end of the previous chunk (none yet: -inf) and the state tile normalised by it.
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
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)
        m_t, r_t = _chunk_normaliser(b_k, m_b, r_b, offs_t)
        # Every V tile of a K tile forms the same normaliser; the first one writes it.
        store_rows(z_max + qk_offset, t, offs_k, mask_t & (i_v == 0), mask_k, H * K, m_t)
        store_rows(z_log + qk_offset, t, offs_k, mask_t & (i_v == 0), mask_k, H * K, r_t)

        # Intra-chunk: scores[t, s] = Σ_c q_tc w_tsc rot_tsc, then scores @ v.
        w = _rotate_weights(_intra_weights(b_k, m_t, r_t, offs_t, mask_t), cos, sin, USE_ANGLES)
        scores = tl.sum(b_q[:, None, :] * w, axis=2)  # [BT, BT]
        b_o = tl.dot(scores, b_v, input_precision=PRECISION)
        # Inter-chunk: the state so far, rescaled from z_before to z_t.
        q_decay = b_q * tl.exp((m_b[None, :] - m_t) + (r_b[None, :] - r_t))
        b_o += apply_state(q_decay, cos, sin, s_cos, s_sin, USE_ANGLES, PRECISION)
        store_rows(o + o_offset, t, offs_v, mask_t, mask_v, H * V, b_o)

        # Carry the state to the end of the chunk: the normaliser of its last real token.
        last = tl.minimum(BT, N - start) - 1
        is_last = (offs_t == last)[:, None]
        m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
        r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)
        carry = tl.exp((m_b - m_e) + (r_b - r_e))
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])  # [BT, BK], 0 for padded tokens
        s_cos, s_sin = accumulate_state(s_cos, s_sin, carry, k_end, cos, sin, b_v, USE_ANGLES, PRECISION)
        m_b, r_b = m_e, r_e


@triton.jit
def _causal_dq_kernel(
    q,
    k,
    v,
    cos_sin,
    do,
    z_max,
    z_log,
    dq,
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
    # Backward pass 1, forward in time: dq_t = Σ_{s<=t} w_ts rot_ts (do_t · v_s) plus the carried state's part.
    # Grid (B * H, K tiles * V tiles): this V tile's share of the sum over v, a partial at index i_v of dq, fp32
    # [V tiles, B, N, H, K].
    i_bh, i_tile = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = i_tile // NV, (i_tile % NV).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_k, offs_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V
    dq_offset = i_v * tl.num_programs(0) * N * K + qk_offset

    m_b = tl.full([BK], float("-inf"), tl.float32)
    r_b = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(0, N, BT):
        t = start + offs_t
        mask_t = t < N
        mask_tk = mask_t[:, None] & mask_k[None, :]
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        m_t = load_rows(z_max + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        r_t = load_rows(z_log + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)
        w = _rotate_weights(_intra_weights(b_k, m_t, r_t, offs_t, mask_t), cos, sin, USE_ANGLES)
        do_v = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BT(t), BT(s)], this V tile's share
        b_dq = tl.sum(w * do_v[:, :, None], axis=1)
        # Rows past N read a normaliser of 0; they must not turn exp(z_before - z_t) into inf (and later 0 · inf).
        decay = tl.exp(tl.where(mask_tk, (m_b[None, :] - m_t) + (r_b[None, :] - r_t), float("-inf")))
        b_dq += decay * apply_state_transposed(b_do, cos, sin, s_cos, s_sin, USE_ANGLES, PRECISION)
        store_rows(dq + dq_offset, t, offs_k, mask_t, mask_k, H * K, b_dq)

        last = tl.minimum(BT, N - start) - 1
        is_last = (offs_t == last)[:, None]
        m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
        r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)
        carry = tl.exp((m_b - m_e) + (r_b - r_e))
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])
        s_cos, s_sin = accumulate_state(s_cos, s_sin, carry, k_end, cos, sin, b_v, USE_ANGLES, PRECISION)
        m_b, r_b = m_e, r_e


@triton.jit
def _chunk_bounds(z_max, z_log, qk_offset, t, offs_k, mask_t, mask_k, start, N, H: tl.constexpr, K: tl.constexpr):
    # The saved normaliser of the chunk's tokens (m_t, r_t) [BT, BK], at its last real token (m_e, r_e) and at the
    # end of the previous chunk (m_b, r_b; -inf before the first chunk), [BK] each.
    m_t = load_rows(z_max + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
    r_t = load_rows(z_log + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
    is_last = (t == tl.minimum(start + t.shape[0], N) - 1)[:, None]
    m_e = tl.sum(tl.where(is_last, m_t, 0.0), axis=0)
    r_e = tl.sum(tl.where(is_last, r_t, 0.0), axis=0)
    prev_offset = qk_offset + tl.maximum(start - 1, 0) * (H * K) + offs_k
    m_b = tl.load(z_max + prev_offset, mask=mask_k & (start > 0), other=float("-inf"))
    r_b = tl.load(z_log + prev_offset, mask=mask_k & (start > 0), other=0.0)
    return m_t, r_t, m_e, r_e, m_b, r_b


@triton.jit
def _causal_dk_kernel(
    q,
    k,
    v,
    cos_sin,
    do,
    z_max,
    z_log,
    g,
    dk,
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
    # Backward pass 2 for dk, backward in time. Grid (B * H, K tiles * V tiles): this V tile's share of the sum over
    # v, a partial at index i_v of dk, [V tiles, B, N, H, K] (dk itself for one V tile). Carried, relative to z at
    # the end of the current chunk (z_e): dS = Σ_{t later} (q_t ⊙ exp(z_e - z_t) rot_t)ᵀ do_t (this V tile) and
    # rg = Σ_{t later} exp(z_e - z_t) ⊙ G_t.
    i_bh, i_tile = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = i_tile // NV, (i_tile % NV).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_k, offs_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V
    dk_offset = i_v * tl.num_programs(0) * N * K + qk_offset
    # The terms through z_t (G and rg) do not depend on v: the first V tile adds them, once.
    g_share = tl.where(i_v == 0, 1.0, 0.0)

    ds_cos = tl.zeros([BK, BV], dtype=tl.float32)
    ds_sin = tl.zeros([BK, BV], dtype=tl.float32)
    rg = tl.zeros([BK], dtype=tl.float32)
    n_chunks = tl.cdiv(N, BT)
    for i in range(0, n_chunks):
        start = (n_chunks - 1 - i) * BT
        t = start + offs_t
        mask_t = t < N
        b_q = load_rows(q + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_g = g_share * load_rows(g + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        m_t, r_t, m_e, r_e, m_b, r_b = _chunk_bounds(z_max, z_log, qk_offset, t, offs_k, mask_t, mask_k, start, N, H, K)
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)

        # Later chunks, through the carries: dk_s = exp(k_s - z_e) ⊙ (rotated v_s dSᵀ - rg).
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])  # exp(k_s - z_e), 0 for padded tokens
        dk_num = apply_state_transposed(b_v, cos, sin, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        b_dk = k_end * (dk_num - rg[None, :])
        # This chunk, t >= s: dk_sc += Σ_t w_tsc (q_tc rot_tsc (do_t · v_s) - G_tc) (the z_t term, no rotation).
        w = _intra_weights(b_k, m_t, r_t, offs_t, mask_t)  # [BT(t), BT(s), BK]
        do_v = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BT(t), BT(s)], this V tile's share
        qw = b_q[:, None, :] * _rotate_weights(w, cos, sin, USE_ANGLES)
        b_dk += tl.sum(qw * do_v[:, :, None] - w * b_g[:, None, :], axis=0)
        store_rows(dk + dk_offset, t, offs_k, mask_t, mask_k, H * K, b_dk)

        # Move the carries from z_e to z_b and add this chunk's steps.
        carry = tl.exp((m_b - m_e) + (r_b - r_e))  # [BK]
        mask_tk = mask_t[:, None] & mask_k[None, :]
        decay = tl.exp(tl.where(mask_tk, (m_b[None, :] - m_t) + (r_b[None, :] - r_t), float("-inf")))  # [BT, BK]
        ds_cos, ds_sin = accumulate_state(ds_cos, ds_sin, carry, b_q * decay, cos, sin, b_do, USE_ANGLES, PRECISION)
        rg = carry * rg + tl.sum(decay * b_g, axis=0)


@triton.jit
def _causal_dv_kernel(
    q,
    k,
    cos_sin,
    do,
    z_max,
    z_log,
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
    # Backward pass 2 for dv, backward in time. Grid (B * H, K tiles * V tiles): this K tile's share of the sum over
    # the key channels, a partial at index i_k of dv, [K tiles, B, N, H, V] (dv itself for one K tile). Carried, as
    # for dk: dS = Σ_{t later} (q_t ⊙ exp(z_e - z_t) rot_t)ᵀ do_t.
    i_bh, i_tile = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = (i_tile // NV).to(tl.int64), i_tile % NV
    offs_t = tl.arange(0, BT)
    offs_k, offs_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V
    dv_offset = i_k * tl.num_programs(0) * N * V + v_offset

    ds_cos = tl.zeros([BK, BV], dtype=tl.float32)
    ds_sin = tl.zeros([BK, BV], dtype=tl.float32)
    n_chunks = tl.cdiv(N, BT)
    for i in range(0, n_chunks):
        start = (n_chunks - 1 - i) * BT
        t = start + offs_t
        mask_t = t < N
        b_q = load_rows(q + qk_offset, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        m_t, r_t, m_e, r_e, m_b, r_b = _chunk_bounds(z_max, z_log, qk_offset, t, offs_k, mask_t, mask_k, start, N, H, K)
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)

        # Later chunks: dv_s = (exp(k_s - z_e) ⊙ [cos, sin]) dS. This chunk: dv_s += Σ_t (Σ_c q_tc w_tsc rot_tsc) do_t.
        k_end = tl.exp((b_k - m_e[None, :]) - r_e[None, :])
        b_dv = apply_state(k_end, cos, sin, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        w = _rotate_weights(_intra_weights(b_k, m_t, r_t, offs_t, mask_t), cos, sin, USE_ANGLES)
        scores = tl.sum(b_q[:, None, :] * w, axis=2)  # [BT(t), BT(s)]
        b_dv += tl.dot(tl.trans(scores), b_do, input_precision=PRECISION)
        store_rows(dv + dv_offset, t, offs_v, mask_t, mask_v, H * V, b_dv)

        carry = tl.exp((m_b - m_e) + (r_b - r_e))
        mask_tk = mask_t[:, None] & mask_k[None, :]
        decay = tl.exp(tl.where(mask_tk, (m_b[None, :] - m_t) + (r_b[None, :] - r_t), float("-inf")))
        ds_cos, ds_sin = accumulate_state(ds_cos, ds_sin, carry, b_q * decay, cos, sin, b_do, USE_ANGLES, PRECISION)


def launch_config(kernel: str, dim_k: int, dim_v: int, dtype: torch.dtype) -> KernelConfig:
    """Block sizes, warps and pipeline stages of one kernel ("forward", "dq", "dk" or "dv") for head dims K, V and
    input dtype: chunks of `CHUNK_SIZE` tokens, K and V in tiles, so that the `[BT, BT, BK]` weights, the `[BK, BV]`
    state tiles and the `[BT, BV]` operands of the products over v stay in registers without spills (README.md,
    compile report)."""
    if kernel not in ("forward", "dq", "dk", "dv"):
        raise ValueError(f"unknown kernel {kernel!r}")
    # dk, the largest kernel, takes value tiles of 16; the others fit tiles of 32.
    bv = tile(dim_v, 16 if kernel == "dk" else 32)
    return KernelConfig(bt=CHUNK_SIZE, bk=tile(dim_k, 16), bv=bv, num_warps=4, num_stages=1)


def _partials(shape: tuple[int, ...], like: Tensor, tiles: int) -> Tensor:
    # Where the tiles write their shares of a sum (over key channels or over v): the result itself for one tile.
    return _empty(shape, like, like.dtype) if tiles == 1 else _empty((tiles, *shape), like, torch.float32)


def _total(partials: Tensor, like: Tensor, tiles: int) -> Tensor:
    return partials if tiles == 1 else partials.sum(dim=0).to(like.dtype)


def _launch(kernel, config: KernelConfig, q: Tensor, v: Tensor, rotation: Tensor | None, *args) -> None:
    # One program per (batch · head, K tile, V tile).
    batch, n, heads, dim_k = q.shape
    dim_v = v.shape[-1]
    grid = (batch * heads, triton.cdiv(dim_k, config.bk) * triton.cdiv(dim_v, config.bv))
    kernel[grid](
        *args,
        n,
        H=heads,
        K=dim_k,
        V=dim_v,
        USE_ANGLES=rotation is not None,
        PRECISION=dot_precision(v.dtype),
        **config.launch_args(),
    )


def causal_fwd(q: Tensor, k: Tensor, v: Tensor, rotation: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Output `[B, N, H, V]` (dtype of v) and the running log-normaliser (max, log-sum) `[B, N, H, K]` in fp32."""
    config = launch_config("forward", k.shape[-1], v.shape[-1], v.dtype)
    k_tiles = triton.cdiv(k.shape[-1], config.bk)
    o = _partials((*q.shape[:3], v.shape[-1]), v, k_tiles)
    z_max, z_log = _empty(k.shape, k, torch.float32), _empty(k.shape, k, torch.float32)
    _launch(_causal_fwd_kernel, config, q, v, rotation, q, k, v, rotation, o, z_max, z_log)
    return _total(o, v, k_tiles), z_max, z_log


def causal_bwd(
    q: Tensor, k: Tensor, v: Tensor, rotation: Tensor | None, do: Tensor, z_max: Tensor, z_log: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients `(dq, dk, dv)` in the dtypes of q, k, v, from the log-normaliser saved by `causal_fwd`."""
    dim_k, dim_v = k.shape[-1], v.shape[-1]
    config = launch_config("dq", dim_k, dim_v, v.dtype)
    dq = _empty((triton.cdiv(dim_v, config.bv), *q.shape), q, torch.float32)  # fp32 shares of the V tiles
    _launch(_causal_dq_kernel, config, q, v, rotation, q, k, v, rotation, do, z_max, z_log, dq)
    dq = dq.sum(dim=0)
    g = q * dq  # G = q ⊙ dq, the gradient through the normaliser z_t, in fp32
    config = launch_config("dk", dim_k, dim_v, v.dtype)
    v_tiles = triton.cdiv(dim_v, config.bv)
    dk = _partials(k.shape, k, v_tiles)
    _launch(_causal_dk_kernel, config, q, v, rotation, q, k, v, rotation, do, z_max, z_log, g, dk)
    config = launch_config("dv", dim_k, dim_v, v.dtype)
    k_tiles = triton.cdiv(dim_k, config.bk)
    dv = _partials(v.shape, v, k_tiles)
    _launch(_causal_dv_kernel, config, q, v, rotation, q, k, rotation, do, z_max, z_log, dv)
    return dq.to(q.dtype), _total(dk, k, v_tiles), _total(dv, v, k_tiles)


class CausalAdditiveAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, rotation: Tensor | None) -> Tensor:
        o, z_max, z_log = causal_fwd(q, k, v, rotation)
        ctx.save_for_backward(q, k, v, rotation, z_max, z_log)
        return o

    @staticmethod
    @once_differentiable  # second derivatives raise a clear error instead of coming out wrong; impl="torch" has them
    def backward(ctx, do: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, rotation, z_max, z_log = ctx.saved_tensors
        dq, dk, dv = causal_bwd(q, k, v, rotation, do.contiguous(), z_max, z_log)
        return dq, dk, dv, None


def causal_additive_attention(
    q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None = None, lrpe: str = "cosine"
) -> Tensor:
    """Causal additive attention `o_t = q̃_t S_t`, `S_t = diag(λ_t) S_{t−1} + k̃_t v_tᵀ`, in chunked Triton kernels.

    The softmax of every key channel runs over the prefix `s ≤ t` (raster order). The running log-normaliser, the
    state and every sum are fp32 whatever the input dtype; key logits of ±1e4 stay finite. The first token must be
    real (a padded first token has no normaliser). The layers reach this through
    `additive_attention(..., causal=True, impl="auto" | "triton")`, which also checks the shapes.

    Args:
        q: Activated queries `[B, N, H, K]`.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        angles: MD-LRPE angles `[N, K]` of the paper's cosine form, fixed: no gradient flows to them.
        lrpe: "cosine" or "none"; rotary angles are not implemented in the causal kernels.

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    if lrpe == "rotary" and angles is not None:
        raise NotImplementedError(
            "the causal Triton kernels implement cosine MD-LRPE only; use impl='torch' for causal rotary angles"
        )
    rotation = check_triton_inputs(k, v, angles, lrpe)
    return CausalAdditiveAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), rotation)
