"""Fused Triton kernels for the non-causal additive attention of LightNet (arXiv 2405.21022), forward and backward.

The tokens of each (batch, head) are cut into `S` contiguous splits, one program per (batch · head, split), so that a
long sequence with few heads still fills the GPU. Forward: each program builds, over its split, the per-channel
running max and sum of `exp(k)` and the unnormalised state `Σ exp(k − max) vᵀ` (fp32, `[K, V]`, or two `[K, V]`
halves with MD-LRPE angles); the splits are merged (log-sum-exp style, a few `[S, K, V]` tensor ops) into the
normalised state `S = k̃ᵀ v`; a second kernel writes `o = q̃ S`, again one program per split. The backward has the
same shape: partial `dS = q̃ᵀ do` per split, summed, then dq, dk, dv per split. The rotation `[x cos Θ, x sin Θ]` is
applied on the fly from the `[N, K]` angles, never materialised. The maths is in README.md.
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

# Largest head dim (K or V) one program holds: the state lives in registers.
MAX_HEAD_DIM = 128
# Tests set this to fill every output with NaN before a launch, so that a missed write cannot go unnoticed.
POISON_OUTPUTS = False
# With the automatic split, aim for this many programs per streaming multiprocessor...
PROGRAMS_PER_SM = 4
# ...but give each program at least this many token blocks, so that loading its state stays a small cost.
MIN_BLOCKS_PER_SPLIT = 4


@triton.jit
def _partial_state_kernel(
    k,
    v,
    angles,
    part_max,
    part_sum,
    part_state,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_bh, i_split = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    # k and v are contiguous [B, N, H, K|V]: one token is H * K (or H * V) elements.
    k_base = k + i_b * N * H * K + i_h * K
    v_base = v + i_b * N * H * V + i_h * V
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)

    # Running max m, running sum of exp(k - m) and the state relative to m, rescaled whenever m grows.
    m = tl.full([BK], float("-inf"), tl.float32)
    l_sum = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_k = load_rows(k_base, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v_base, t, offs_v, mask_t, mask_v, H * V, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        m_new = tl.maximum(m, tl.max(b_k, axis=0))
        # A channel that has seen only -inf so far gets reference 0, so that exp never evaluates -inf - (-inf).
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        p = tl.exp(b_k - m_ref[None, :])  # [BT, BK], <= 1
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        s_cos, s_sin = accumulate_state(s_cos, s_sin, alpha, p, theta, b_v, USE_ANGLES, PRECISION)
        m = m_new

    # part_max and part_sum are [B * H, S, K]; part_state is [B * H, S, 2, K, V]: the cos half, then the sin half.
    i_part = i_bh * tl.num_programs(1) + i_split
    tl.store(part_max + i_part * K + offs_k, m, mask=mask_k)  # -inf where the split saw only padded keys
    tl.store(part_sum + i_part * K + offs_k, l_sum, mask=mask_k)
    s_ptr = part_state + i_part * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tl.store(s_ptr, s_cos, mask=mask_kv)
    tl.store(s_ptr + K * V, s_sin, mask=mask_kv)


@triton.jit
def _output_kernel(
    q,
    angles,
    state,
    o,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_bh, i_split = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    q_base = q + i_b * N * H * K + i_h * K
    o_base = o + i_b * N * H * V + i_h * V
    s_ptr = state + i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    s_cos = tl.load(s_ptr, mask=mask_kv, other=0.0)
    s_sin = tl.load(s_ptr + K * V, mask=mask_kv, other=0.0)
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_q = load_rows(q_base, t, offs_k, mask_t, mask_k, H * K, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        b_o = apply_state(b_q, theta, s_cos, s_sin, USE_ANGLES, PRECISION)
        store_rows(o_base, t, offs_v, mask_t, mask_v, H * V, b_o)


@triton.jit
def _partial_dstate_kernel(
    q,
    angles,
    do,
    part_dstate,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_bh, i_split = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    q_base = q + i_b * N * H * K + i_h * K
    do_base = do + i_b * N * H * V + i_h * V
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)

    # dS = q̃ᵀ do over this split.
    ones = tl.full([BK], 1.0, tl.float32)
    ds_cos = tl.zeros([BK, BV], dtype=tl.float32)
    ds_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_q = load_rows(q_base, t, offs_k, mask_t, mask_k, H * K, 0.0)
        b_do = load_rows(do_base, t, offs_v, mask_t, mask_v, H * V, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        ds_cos, ds_sin = accumulate_state(ds_cos, ds_sin, ones, b_q, theta, b_do, USE_ANGLES, PRECISION)

    i_part = i_bh * tl.num_programs(1) + i_split
    s_ptr = part_dstate + i_part * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tl.store(s_ptr, ds_cos, mask=mask_kv)
    tl.store(s_ptr + K * V, ds_sin, mask=mask_kv)


@triton.jit
def _grads_kernel(
    q,
    k,
    v,
    angles,
    do,
    state,
    dstate,
    row_max,
    log_sum,
    correction,
    dq,
    dk,
    dv,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_bh, i_split = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k, offs_v = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    qk_offset = i_b * N * H * K + i_h * K
    v_offset = i_b * N * H * V + i_h * V
    s_ptr = i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    s_cos = tl.load(state + s_ptr, mask=mask_kv, other=0.0)
    s_sin = tl.load(state + s_ptr + K * V, mask=mask_kv, other=0.0)
    ds_cos = tl.load(dstate + s_ptr, mask=mask_kv, other=0.0)
    ds_sin = tl.load(dstate + s_ptr + K * V, mask=mask_kv, other=0.0)
    m = tl.load(row_max + i_bh * K + offs_k, mask=mask_k, other=0.0)
    log_l = tl.load(log_sum + i_bh * K + offs_k, mask=mask_k, other=0.0)
    # Σ_n k̄[n, c] dk̄[n, c] = Σ_v (S ⊙ dS)[c, v] over both halves: the softmax's correction, computed once.
    corr = tl.load(correction + i_bh * K + offs_k, mask=mask_k, other=0.0)
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)

    # dq = do Sᵀ (rotated back), dv = k̃ dS, dk = k̄ ⊙ (dk̄ - corr) with dk̄ = v dSᵀ (rotated back).
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_k = load_rows(k + qk_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
        b_v = load_rows(v + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        b_do = load_rows(do + v_offset, t, offs_v, mask_t, mask_v, H * V, 0.0)
        theta = tl.zeros([BT, BK], dtype=tl.float32)
        if USE_ANGLES:
            theta = load_rows(angles, t, offs_k, mask_t, mask_k, K, 0.0)
        k_bar = tl.exp((b_k - m[None, :]) - log_l[None, :])  # [BT, BK]
        b_dq = apply_state_transposed(b_do, theta, s_cos, s_sin, USE_ANGLES, PRECISION)
        b_dv = apply_state(k_bar, theta, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        dk_bar = apply_state_transposed(b_v, theta, ds_cos, ds_sin, USE_ANGLES, PRECISION)
        store_rows(dq + qk_offset, t, offs_k, mask_t, mask_k, H * K, b_dq)
        store_rows(dk + qk_offset, t, offs_k, mask_t, mask_k, H * K, k_bar * (dk_bar - corr[None, :]))
        store_rows(dv + v_offset, t, offs_v, mask_t, mask_v, H * V, b_dv)


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


def token_splits(n: int, batch_heads: int, block: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """`(tokens_per_split, splits)`: whole blocks per split, as many splits as asked (or enough to fill the GPU)."""
    blocks = triton.cdiv(max(n, 1), block)
    if num_splits is None:
        if device.type != "cuda":
            return blocks * block, 1
        programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
        num_splits = min(triton.cdiv(programs, batch_heads), triton.cdiv(blocks, MIN_BLOCKS_PER_SPLIT))
    blocks_per_split = triton.cdiv(blocks, max(1, min(num_splits, blocks)))
    return blocks_per_split * block, triton.cdiv(blocks, blocks_per_split)


def merge_partial_states(part_max: Tensor, part_sum: Tensor, part_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised state `[.., 2, K, V]` and normaliser (max, log-sum) `[.., K]` from per-split partials.

    Split s holds, per channel, its max `m_s` (-inf if it saw no real key), `l_s = Σ exp(k - m_s)` and
    `P_s = Σ exp(k - m_s) vᵀ`; with `m = max_s m_s` the whole sequence has `l = Σ_s exp(m_s - m) l_s` and
    `S = Σ_s exp(m_s - m) P_s / l`. Inputs are `[BH, S, K]` and `[BH, S, 2, K, V]`.
    """
    row_max = part_max.amax(dim=1)
    row_max = torch.where(row_max == float("-inf"), 0.0, row_max)
    weight = torch.exp(part_max - row_max[:, None])  # [BH, S, K], 0 for a split without real keys
    total = (weight * part_sum).sum(dim=1)
    total = torch.where(total > 0.0, total, 1.0)
    state = (weight[:, :, None, :, None] * part_state).sum(dim=1) / total[:, None, :, None]
    return state, row_max, total.log()


def additive_fwd(
    q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, num_splits: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, N, H, V]` (dtype of v), fp32 state `[B, H, 2, K, V]`, log-normaliser (max, log-sum) `[B, H, K]`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    bt, bk, bv = _block_sizes(n, dim_k, dim_v)
    tokens_per_split, splits = token_splits(n, batch * heads, bt, k.device, num_splits)
    part_max = _empty((batch * heads, splits, dim_k), k, torch.float32)
    part_sum = _empty((batch * heads, splits, dim_k), k, torch.float32)
    part_state = _empty((batch * heads, splits, 2, dim_k, dim_v), v, torch.float32)
    meta = dict(H=heads, K=dim_k, V=dim_v, BT=bt, BK=bk, BV=bv, USE_ANGLES=angles is not None)
    meta["PRECISION"] = dot_precision(v.dtype)
    grid = (batch * heads, splits)
    _partial_state_kernel[grid](k, v, angles, part_max, part_sum, part_state, n, tokens_per_split, **meta)
    state, row_max, log_sum = merge_partial_states(part_max, part_sum, part_state)
    o = _empty((batch, n, heads, dim_v), v, v.dtype)
    _output_kernel[grid](q, angles, state, o, n, tokens_per_split, **meta)
    shape = (batch, heads, dim_k)
    return o, state.view(batch, heads, 2, dim_k, dim_v), row_max.view(shape), log_sum.view(shape)


def additive_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None,
    do: Tensor,
    state: Tensor,
    row_max: Tensor,
    log_sum: Tensor,
    num_splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients `(dq, dk, dv)` in the dtypes of q, k, v, from the state and normaliser saved by `additive_fwd`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    bt, bk, bv = _block_sizes(n, dim_k, dim_v)
    tokens_per_split, splits = token_splits(n, batch * heads, bt, k.device, num_splits)
    meta = dict(H=heads, K=dim_k, V=dim_v, BT=bt, BK=bk, BV=bv, USE_ANGLES=angles is not None)
    meta["PRECISION"] = dot_precision(v.dtype)
    grid = (batch * heads, splits)
    part_dstate = _empty((batch * heads, splits, 2, dim_k, dim_v), v, torch.float32)
    _partial_dstate_kernel[grid](q, angles, do, part_dstate, n, tokens_per_split, **meta)
    dstate = part_dstate.sum(dim=1)  # [BH, 2, K, V]
    correction = (state.view_as(dstate) * dstate).sum(dim=(1, 3))  # [BH, K]
    dq, dk, dv = _empty(q.shape, q, q.dtype), _empty(k.shape, k, k.dtype), _empty(v.shape, v, v.dtype)
    _grads_kernel[grid](
        q, k, v, angles, do, state, dstate, row_max, log_sum, correction, dq, dk, dv, n, tokens_per_split, **meta
    )
    return dq, dk, dv


class AdditiveAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, num_splits: int | None) -> Tensor:
        o, state, row_max, log_sum = additive_fwd(q, k, v, angles, num_splits)
        ctx.save_for_backward(q, k, v, angles, state, row_max, log_sum)
        ctx.num_splits = num_splits
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, angles, state, row_max, log_sum = ctx.saved_tensors
        dq, dk, dv = additive_bwd(q, k, v, angles, do.contiguous(), state, row_max, log_sum, ctx.num_splits)
        return dq, dk, dv, None, None


def check_triton_inputs(k: Tensor, v: Tensor, angles: Tensor | None) -> Tensor | None:
    """Raises for what the kernels cannot do; returns the angles as the kernels read them (detached, contiguous)."""
    if max(k.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton additive attention supports head dims up to {MAX_HEAD_DIM}, got K={k.shape[-1]}, "
            f"V={v.shape[-1]}"
        )
    if angles is not None and angles.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("the Triton additive attention has no gradient for angles; use impl='torch'")
    return None if angles is None else angles.detach().contiguous()


def noncausal_additive_attention(
    q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None = None, num_splits: int | None = None
) -> Tensor:
    """Non-causal additive attention `o = q̃ (k̃ᵀ v)` with `k̄ = softmax_N(k)` per channel, in fused Triton kernels.

    Every sum, the log-normaliser and the state are fp32 whatever the input dtype (fp32, bf16 or fp16); key logits
    of ±1e4 stay finite. With `angles`, q and k̄ are rotated to `[x cos Θ, x sin Θ]` inside the kernels. The layers
    reach this through `additive_attention(..., impl="auto" | "triton")`, which also checks the shapes.

    Args:
        q: Activated queries `[B, N, H, K]`.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        angles: MD-LRPE angles `[N, K]`, fixed: no gradient flows to them.
        num_splits: Programs per (batch, head) along the tokens; None picks enough to fill the GPU (1 off CUDA).

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    angles = check_triton_inputs(k, v, angles)
    return AdditiveAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), angles, num_splits)
