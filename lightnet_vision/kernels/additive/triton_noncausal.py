"""Fused Triton kernels for the non-causal additive attention of LightNet (arXiv 2405.21022), forward and backward.

Three kernels, each a loop over the token blocks of one split of one (batch, head), and each cut into tiles along a
head dim so that no program holds more than a small fp32 state tile in registers:

- `_state_kernel`: a partial state `Σ x̃ᵀ y` over one split, one `[BK, BV]` tile of it per program. Forward: keys
  and values, with the per-channel running max and sum of `exp(k)` (the softmax over tokens, log-sum-exp style);
  backward: `dS = q̃ᵀ do`. The splits are merged on the host (a few `[S, K, V]` tensor ops).
- `_apply_kernel`: `x̃ S` for one `BV` tile of V with the whole K: the output `o = q̃ S`, and `dv = k̃ dS` from the
  key logits and the saved normaliser.
- `_apply_transposed_kernel`: `y Sᵀ` folded back through the rotation, for one `BK` tile of K with the whole V:
  `dq = do Sᵀ`, and `dk = k̄ ⊙ (v dSᵀ − Σ_n k̄ dk̄)`.

The rotation `[x cos Θ, x sin Θ]` is applied on the fly from a `[2, N, K]` table of `cos Θ` and `sin Θ` that the host
computes once per call; the rotated tensors are never materialised. Rotary angles are served by the same kernels
through host-side maps of the tiny states (`rotary_pairs`). Block sizes are chosen by `launch_config`. The maths is
in README.md.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightnet_vision.kernels.additive.pytorch import activate, activate_adjoint, report_triton_failure, triton_failed
from lightnet_vision.kernels.additive.triton_blocks import (
    KernelConfig,
    accumulate_state,
    apply_state,
    apply_state_transposed,
    dot_precision,
    load_rotation,
    load_rows,
    padded,
    rotation_table,
    store_rows,
    tile,
)

# Largest head dim (K or V): `_apply_kernel` holds a `[K, BV]` state tile, `_apply_transposed_kernel` a `[BK, V]` one.
MAX_HEAD_DIM = 128
# Tests set this to fill every output with NaN before a launch, so that a missed write cannot go unnoticed.
POISON_OUTPUTS = False
# With the automatic split, aim for this many programs per streaming multiprocessor...
PROGRAMS_PER_SM = 4
# ...but give each program at least this many token blocks (256 tokens), so that loading its state tile stays a small
# cost next to the tokens it streams.
MIN_BLOCKS_PER_SPLIT = 16
# How MD-LRPE angles act on q and on the normalised keys ("none": no angles).
LRPE_FORMS = ("cosine", "rotary", "none")


@triton.jit
def _state_kernel(
    x,
    y,
    cos_sin,
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
    SOFTMAX: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Grid (B * H, splits, K tiles * V tiles). x is [B, N, H, K] (key logits if SOFTMAX, else q), y is [B, N, H, V].
    i_bh, i_split, i_tile = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NV: tl.constexpr = (V + BV - 1) // BV
    i_k, i_v = i_tile // NV, i_tile % NV
    offs_t = tl.arange(0, BT)
    offs_k, offs_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    # x and y are contiguous [B, N, H, K|V]: one token is H * K (or H * V) elements.
    x_base = x + i_b * N * H * K + i_h * K
    y_base = y + i_b * N * H * V + i_h * V
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)

    # SOFTMAX: running max m, running sum of exp(x - m) and the state relative to m, rescaled whenever m grows.
    m = tl.full([BK], float("-inf"), tl.float32)
    l_sum = tl.zeros([BK], dtype=tl.float32)
    s_cos = tl.zeros([BK, BV], dtype=tl.float32)
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_y = load_rows(y_base, t, offs_v, mask_t, mask_v, H * V, 0.0)  # [BT, BV]
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)
        if SOFTMAX:
            b_x = load_rows(x_base, t, offs_k, mask_t, mask_k, H * K, float("-inf"))  # [BT, BK]
            m_new = tl.maximum(m, tl.max(b_x, axis=0))
            # A channel that has seen only -inf so far gets reference 0, so that exp never evaluates -inf - (-inf).
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            scale = tl.exp(m - m_ref)
            weights = tl.exp(b_x - m_ref[None, :])  # <= 1
            l_sum = l_sum * scale + tl.sum(weights, axis=0)
            m = m_new
        else:
            scale = tl.full([BK], 1.0, tl.float32)
            weights = load_rows(x_base, t, offs_k, mask_t, mask_k, H * K, 0.0)
        s_cos, s_sin = accumulate_state(s_cos, s_sin, scale, weights, cos, sin, b_y, USE_ANGLES, PRECISION)

    # part_max and part_sum are [B * H, S, K]; part_state is [B * H, S, 2, K, V]: the cos half, then the sin half.
    i_part = i_bh * tl.num_programs(1) + i_split
    if SOFTMAX:
        # Written once per K tile, by its first V tile. -inf where the split saw only padded keys.
        tl.store(part_max + i_part * K + offs_k, m, mask=mask_k & (i_v == 0))
        tl.store(part_sum + i_part * K + offs_k, l_sum, mask=mask_k & (i_v == 0))
    s_ptr = part_state + i_part * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    tl.store(s_ptr, s_cos, mask=mask_kv)
    tl.store(s_ptr + K * V, s_sin, mask=mask_kv)


@triton.jit
def _apply_kernel(
    x,
    cos_sin,
    row_max,
    log_sum,
    state,
    out,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SOFTMAX: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Grid (B * H, splits, V tiles); BK covers the whole K. out = x̃ S, with x = q, or (SOFTMAX) x̄ = the normalised
    # keys exp((k - max) - log-sum) from key logits x. state is [B * H, 2, K, V], out is [B, N, H, V].
    i_bh, i_split, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_k = tl.arange(0, BT), tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    x_base = x + i_b * N * H * K + i_h * K
    out_base = out + i_b * N * H * V + i_h * V
    s_ptr = state + i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    s_cos = tl.load(s_ptr, mask=mask_kv, other=0.0)  # [BK, BV]
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_ANGLES:
        s_sin = tl.load(s_ptr + K * V, mask=mask_kv, other=0.0)
    m = tl.zeros([BK], dtype=tl.float32)
    log_l = tl.zeros([BK], dtype=tl.float32)
    if SOFTMAX:
        m = tl.load(row_max + i_bh * K + offs_k, mask=mask_k, other=0.0)
        log_l = tl.load(log_sum + i_bh * K + offs_k, mask=mask_k, other=0.0)
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        if SOFTMAX:
            b_x = load_rows(x_base, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
            b_x = tl.exp((b_x - m[None, :]) - log_l[None, :])  # [BT, BK], 0 for padded tokens and channels
        else:
            b_x = load_rows(x_base, t, offs_k, mask_t, mask_k, H * K, 0.0)
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)
        b_out = apply_state(b_x, cos, sin, s_cos, s_sin, USE_ANGLES, PRECISION)  # [BT, BV]
        store_rows(out_base, t, offs_v, mask_t, mask_v, H * V, b_out)


@triton.jit
def _apply_transposed_kernel(
    y,
    cos_sin,
    state,
    k,
    row_max,
    log_sum,
    correction,
    out,
    N,
    tokens_per_split,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    KEY_GRAD: tl.constexpr,
    USE_ANGLES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Grid (B * H, splits, K tiles); BV covers the whole V. out = y Sᵀ folded back through the rotation: dq from
    # y = do and the state, or (KEY_GRAD) dk = k̄ ⊙ (dk̄ - corr) from y = v and dS, with dk̄ = v dSᵀ (folded back).
    i_bh, i_split, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    offs_t, offs_v = tl.arange(0, BT), tl.arange(0, BV)
    offs_k = i_k * BK + tl.arange(0, BK)
    mask_k, mask_v = offs_k < K, offs_v < V
    k_offset = i_b * N * H * K + i_h * K
    y_base = y + i_b * N * H * V + i_h * V
    s_ptr = state + i_bh * 2 * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_kv = mask_k[:, None] & mask_v[None, :]
    s_cos = tl.load(s_ptr, mask=mask_kv, other=0.0)  # [BK, BV]
    s_sin = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_ANGLES:
        s_sin = tl.load(s_ptr + K * V, mask=mask_kv, other=0.0)
    m = tl.zeros([BK], dtype=tl.float32)
    log_l = tl.zeros([BK], dtype=tl.float32)
    corr = tl.zeros([BK], dtype=tl.float32)
    if KEY_GRAD:
        m = tl.load(row_max + i_bh * K + offs_k, mask=mask_k, other=0.0)
        log_l = tl.load(log_sum + i_bh * K + offs_k, mask=mask_k, other=0.0)
        # Σ_n k̄[n, c] dk̄[n, c] = Σ_v (S ⊙ dS)[c, v] over both halves: the softmax's correction, formed on the host.
        corr = tl.load(correction + i_bh * K + offs_k, mask=mask_k, other=0.0)
    first = i_split * tokens_per_split
    end = tl.minimum(first + tokens_per_split, N)
    for start in range(first, end, BT):
        t = start + offs_t
        mask_t = t < end
        b_y = load_rows(y_base, t, offs_v, mask_t, mask_v, H * V, 0.0)  # [BT, BV]
        cos = tl.zeros([BT, BK], dtype=tl.float32)
        sin = cos
        if USE_ANGLES:
            cos, sin = load_rotation(cos_sin, t, offs_k, mask_t, mask_k, N, K)
        b_out = apply_state_transposed(b_y, cos, sin, s_cos, s_sin, USE_ANGLES, PRECISION)  # [BT, BK]
        if KEY_GRAD:
            b_k = load_rows(k + k_offset, t, offs_k, mask_t, mask_k, H * K, float("-inf"))
            k_bar = tl.exp((b_k - m[None, :]) - log_l[None, :])  # 0 for padded tokens: their dk is exactly 0
            b_out = k_bar * (b_out - corr[None, :])
        store_rows(out + k_offset, t, offs_k, mask_t, mask_k, H * K, b_out)


def _empty(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def launch_config(kernel: str, dim_k: int, dim_v: int, dtype: torch.dtype) -> KernelConfig:
    """Block sizes, warps and pipeline stages of one kernel ("state", "apply" or "apply_transposed") for head dims
    K, V and input dtype.

    Tokens go in blocks of 16, so that the fp32 products (`input_precision="ieee"`, done on CUDA cores, whose
    per-thread operand slices grow with the token block) fit in registers; 8 warps share the state tiles, up to
    `[64, 64]` (or the whole padded head dim where a product reduces over it, at most 128 × 64). The compile report
    (`benchmarks/kernels_compile.py`, README.md) shows every choice free of spills on sm_80 and sm_90.
    """
    if kernel == "state":
        # Both head dims cut into tiles: the softmax over tokens is per channel, the state has no reduction over K.
        bk, bv = tile(dim_k, 64), tile(dim_v, 64)
    elif kernel == "apply":
        # x̃ S reduces over K: the whole (padded) K, V in tiles.
        bk, bv = padded(dim_k), tile(dim_v, 64)
    elif kernel == "apply_transposed":
        # y Sᵀ reduces over V: the whole (padded) V, K in tiles; narrow ones for fp32, whose products on CUDA cores
        # spill with K tiles of 32 against 128 value channels.
        bk, bv = tile(dim_k, 16 if dtype == torch.float32 else 64), padded(dim_v)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return KernelConfig(bt=16, bk=bk, bv=bv, num_warps=8, num_stages=2)


def token_splits(n: int, programs: int, block: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """`(tokens_per_split, splits)`: whole blocks per split, as many splits as asked, or (None) enough splits that
    the `programs` per split and the splits together fill the GPU (1 off CUDA)."""
    blocks = triton.cdiv(max(n, 1), block)
    if num_splits is None:
        if device.type != "cuda":
            return blocks * block, 1
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
        num_splits = min(triton.cdiv(target, programs), triton.cdiv(blocks, MIN_BLOCKS_PER_SPLIT))
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


def rotary_pairs(state: Tensor) -> Tensor:
    """The host map of rotary MD-LRPE on a cosine-form state `[.., 2, K, V]` of duplicated angles `[Θ, Θ]`.

    With halves 1 = rows `[0, K/2)` and 2 = rows `[K/2, K)`: the rotary state is `S = [Sa; Sb]`,
    `Sa = C_cos1 − C_sin2`, `Sb = C_sin1 + C_cos2`, and the result is `(T_cos, T_sin) = ([Sa; Sb], [Sb; −Sa])`, for
    which the cosine-form product `[q cos Θ, q sin Θ] T` equals `rot(q) S`. The same map takes the gradient `dT`
    that the kernels return for such a T to the gradient of C (README.md, "Triton kernels (non-causal)").
    """
    c_cos, c_sin = state.unbind(dim=-3)  # [.., K, V] each
    cos1, cos2 = c_cos.chunk(2, dim=-2)
    sin1, sin2 = c_sin.chunk(2, dim=-2)
    s_a, s_b = cos1 - sin2, sin1 + cos2  # [.., K/2, V]
    return torch.stack([torch.cat([s_a, s_b], dim=-2), torch.cat([s_b, -s_a], dim=-2)], dim=-3)


def _launch_meta(dim_k: int, dim_v: int, heads: int, rotation: Tensor | None, dtype: torch.dtype) -> dict:
    return dict(H=heads, K=dim_k, V=dim_v, USE_ANGLES=rotation is not None, PRECISION=dot_precision(dtype))


def _grid(
    n: int, batch_heads: int, tiles: int, config: KernelConfig, device: torch.device, num_splits: int | None
) -> tuple[int, tuple[int, int, int]]:
    # (tokens per split, grid): programs over (batch · head, split, head-dim tile).
    tokens_per_split, splits = token_splits(n, batch_heads * tiles, config.bt, device, num_splits)
    return tokens_per_split, (batch_heads, splits, tiles)


def _state(x: Tensor, y: Tensor, rotation: Tensor | None, softmax: bool, num_splits: int | None):
    # Partial states of all splits: (part_max, part_sum, part_state) `[BH, S, K]`, `[BH, S, K]`, `[BH, S, 2, K, V]`.
    batch, n, heads, dim_k = x.shape
    dim_v = y.shape[-1]
    config = launch_config("state", dim_k, dim_v, y.dtype)
    tiles = triton.cdiv(dim_k, config.bk) * triton.cdiv(dim_v, config.bv)
    tokens_per_split, grid = _grid(n, batch * heads, tiles, config, x.device, num_splits)
    splits = grid[1]
    part_max = part_sum = None
    if softmax:
        part_max = _empty((batch * heads, splits, dim_k), x, torch.float32)
        part_sum = _empty((batch * heads, splits, dim_k), x, torch.float32)
    part_state = _empty((batch * heads, splits, 2, dim_k, dim_v), y, torch.float32)
    _state_kernel[grid](
        x,
        y,
        rotation,
        part_max,
        part_sum,
        part_state,
        n,
        tokens_per_split,
        SOFTMAX=softmax,
        **_launch_meta(dim_k, dim_v, heads, rotation, y.dtype),
        **config.launch_args(),
    )
    return part_max, part_sum, part_state


def _apply(x, rotation, row_max, log_sum, state, out, softmax: bool, num_splits: int | None) -> Tensor:
    # out = x̃ S ([B, N, H, V]); x is q, or the key logits (softmax) normalised with (row_max, log_sum).
    batch, n, heads, dim_k = x.shape
    dim_v = out.shape[-1]
    config = launch_config("apply", dim_k, dim_v, out.dtype)
    tokens_per_split, grid = _grid(n, batch * heads, triton.cdiv(dim_v, config.bv), config, x.device, num_splits)
    _apply_kernel[grid](
        x,
        rotation,
        row_max,
        log_sum,
        state,
        out,
        n,
        tokens_per_split,
        SOFTMAX=softmax,
        **_launch_meta(dim_k, dim_v, heads, rotation, out.dtype),
        **config.launch_args(),
    )
    return out


def _apply_transposed(y, rotation, state, k, row_max, log_sum, correction, out, num_splits: int | None) -> Tensor:
    # out = y Sᵀ folded back ([B, N, H, K]): dq, or dk when the key logits k (and the normaliser) are given.
    batch, n, heads, dim_v = y.shape
    dim_k = out.shape[-1]
    config = launch_config("apply_transposed", dim_k, dim_v, y.dtype)
    tokens_per_split, grid = _grid(n, batch * heads, triton.cdiv(dim_k, config.bk), config, y.device, num_splits)
    _apply_transposed_kernel[grid](
        y,
        rotation,
        state,
        k,
        row_max,
        log_sum,
        correction,
        out,
        n,
        tokens_per_split,
        KEY_GRAD=k is not None,
        **_launch_meta(dim_k, dim_v, heads, rotation, y.dtype),
        **config.launch_args(),
    )
    return out


def additive_fwd(
    q: Tensor, k: Tensor, v: Tensor, rotation: Tensor | None, num_splits: int | None = None, rotary: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, N, H, V]` (dtype of v), fp32 state `[B, H, 2, K, V]`, log-normaliser (max, log-sum) `[B, H, K]`.

    `rotation` is the `[2, N, K]` table of `check_triton_inputs`; `rotary` says it holds duplicated rotary angles.
    The state returned is the cosine-form key state C, also with `rotary` (the backward maps it again).
    """
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    state, row_max, log_sum = merge_partial_states(*_state(k, v, rotation, True, num_splits))  # [BH, 2, K, V]
    used = rotary_pairs(state) if rotary else state
    o = _apply(q, rotation, None, None, used, _empty((batch, n, heads, dim_v), v, v.dtype), False, num_splits)
    shape = (batch, heads, dim_k)
    return o, state.view(batch, heads, 2, dim_k, dim_v), row_max.view(shape), log_sum.view(shape)


def additive_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rotation: Tensor | None,
    do: Tensor,
    state: Tensor,
    row_max: Tensor,
    log_sum: Tensor,
    num_splits: int | None = None,
    rotary: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients `(dq, dk, dv)` in the dtypes of q, k, v, from the state and normaliser saved by `additive_fwd`."""
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    state = state.view(batch * heads, 2, dim_k, dim_v)
    dstate = _state(q, do, rotation, False, num_splits)[2].sum(dim=1)  # [BH, 2, K, V]: dS of the state used by o
    used = state
    if rotary:
        # The output used T = rotary_pairs(C); the gradient of C is the same map of dT.
        used, dstate = rotary_pairs(state), rotary_pairs(dstate)
    correction = (state * dstate).sum(dim=(1, 3))  # [BH, K]
    dq = _apply_transposed(do, rotation, used, None, None, None, None, _empty(q.shape, q, q.dtype), num_splits)
    dk = _empty(k.shape, k, k.dtype)
    dk = _apply_transposed(v, rotation, dstate, k, row_max, log_sum, correction, dk, num_splits)
    dv = _apply(k, rotation, row_max, log_sum, dstate, _empty(v.shape, v, v.dtype), True, num_splits)
    return dq, dk, dv


# The op is registered with torch.library, so that torch.compile sees one opaque operator (no graph break, its own
# shapes from the fake implementations) and eager mode runs the kernels as they are.
# With q_activation "silu" the ops take the pre-activation q, which is what the backward keeps: its SiLU is formed on
# the host for the kernels in the forward and again in the backward, whose dq goes back through SiLU's derivative.
@torch.library.custom_op("lightnet_vision::additive_noncausal_forward", mutates_args=())
def _forward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None,
    lrpe: str,
    num_splits: int | None,
    fallback: bool,
    q_activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q = activate(q, q_activation)
    if fallback and triton_failed(q, v, angles, lrpe):
        return _reference_forward(q, k, v, angles, lrpe)
    try:
        rotation = check_triton_inputs(k, v, angles, lrpe)
        return additive_fwd(q, k, v, rotation, num_splits, rotary=lrpe == "rotary" and angles is not None)
    except Exception as error:  # out of resources, a compilation error, no CUDA toolchain
        if not fallback:
            raise
        report_triton_failure(error, q, v, angles, lrpe)
        return _reference_forward(q, k, v, angles, lrpe)


@_forward_op.register_fake
def _(q, k, v, angles, lrpe, num_splits, fallback, q_activation):
    batch, n, heads, dim_k = k.shape
    dim_v = v.shape[-1]
    state = k.new_empty((batch, heads, 2, dim_k, dim_v), dtype=torch.float32)
    normaliser = k.new_empty((batch, heads, dim_k), dtype=torch.float32)
    return v.new_empty((batch, n, heads, dim_v)), state, normaliser, torch.empty_like(normaliser)


@torch.library.custom_op("lightnet_vision::additive_noncausal_backward", mutates_args=())
def _backward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None,
    lrpe: str,
    num_splits: int | None,
    fallback: bool,
    q_activation: str,
    do: Tensor,
    state: Tensor,
    row_max: Tensor,
    log_sum: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    if fallback and triton_failed(q, v, angles, lrpe):
        return _reference_backward(q, k, v, angles, lrpe, do, q_activation)
    try:
        rotation = check_triton_inputs(k, v, angles, lrpe)
        rotary = lrpe == "rotary" and angles is not None
        activated = activate(q, q_activation)
        dq, dk, dv = additive_bwd(activated, k, v, rotation, do, state, row_max, log_sum, num_splits, rotary)
        return activate_adjoint(dq, q, q_activation), dk, dv
    except Exception as error:
        if not fallback:
            raise
        report_triton_failure(error, q, v, angles, lrpe)
        return _reference_backward(q, k, v, angles, lrpe, do, q_activation)


@_backward_op.register_fake
def _(q, k, v, angles, lrpe, num_splits, fallback, q_activation, do, state, row_max, log_sum):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _reference_forward(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, lrpe: str) -> tuple[Tensor, ...]:
    # The output from the PyTorch path, for a shape class whose kernels failed; its backward falls back too, so the
    # state and normaliser are placeholders of the right shapes.
    from lightnet_vision.kernels.additive.pytorch import additive_attention

    batch, _, heads, dim_k = k.shape
    state = k.new_zeros((batch, heads, 2, dim_k, v.shape[-1]), dtype=torch.float32)
    normaliser = k.new_zeros((batch, heads, dim_k), dtype=torch.float32)
    with torch.no_grad():
        out = additive_attention(q, k, v, angles=angles, lrpe=lrpe, impl="torch")
    return out.contiguous(), state, normaliser, normaliser.clone()  # contiguous, as the kernels' (and fake) outputs


def _reference_backward(
    q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, lrpe: str, do: Tensor, q_activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    # (dq, dk, dv) from the PyTorch path's backward formulas, in fp32, cast to the dtypes of q, k, v.
    from lightnet_vision.kernels.additive.pytorch import noncausal_gradients

    dtype = torch.promote_types(v.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        angles = None if angles is None else angles.to(dtype)
        inputs = (q.to(dtype), k.to(dtype), v.to(dtype), angles, lrpe, do.to(dtype))
        grads = noncausal_gradients(*inputs, q_activation=q_activation)[:3]
    return tuple(grad.to(x.dtype).contiguous() for grad, x in zip(grads, (q, k, v), strict=True))


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, angles, lrpe, num_splits, fallback, q_activation = inputs
    _, state, row_max, log_sum = output
    ctx.save_for_backward(q, k, v, angles, state, row_max, log_sum)
    ctx.lrpe, ctx.num_splits, ctx.fallback, ctx.q_activation = lrpe, num_splits, fallback, q_activation


def _backward(ctx, do: Tensor, *unused: Tensor) -> tuple:
    q, k, v, angles, state, row_max, log_sum = ctx.saved_tensors
    if torch.is_grad_enabled():
        # Differentiating the backward (create_graph=True): the kernels' backward has no derivative of its own, so
        # the gradients come from the PyTorch path, whose backward is made of differentiable ops.
        return (*_differentiable_gradients(ctx, q, k, v, angles, do), None, None, None, None, None)
    options = (ctx.lrpe, ctx.num_splits, ctx.fallback, ctx.q_activation)
    args = (q, k, v, angles, *options, do.contiguous(), state, row_max, log_sum)
    return (*_backward_op(*args), None, None, None, None, None)


def _differentiable_gradients(ctx, q, k, v, angles, do) -> tuple[Tensor | None, ...]:
    # (dq, dk, dv) of the PyTorch path at the saved inputs, with a graph that reaches them.
    from lightnet_vision.kernels.additive.pytorch import additive_attention

    needed = ctx.needs_input_grad[:3]
    out = additive_attention(q, k, v, angles=angles, lrpe=ctx.lrpe, impl="torch", q_activation=ctx.q_activation)
    wanted = [x for x, need in zip((q, k, v), needed, strict=True) if need]
    grads = iter(torch.autograd.grad(out, wanted, do, create_graph=True))
    return tuple(next(grads) if need else None for need in needed)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def check_triton_inputs(
    k: Tensor, v: Tensor, angles: Tensor | None, lrpe: str = "cosine", table: bool = True
) -> Tensor | None:
    """Raises for what the kernels cannot do; returns the angles as the kernels read them: the `[2, N, K]` fp32
    table of `cos Θ` and `sin Θ` (no gradient), rotary angles `[N, K/2]` duplicated to `[Θ, Θ]` first."""
    if lrpe not in LRPE_FORMS:
        raise ValueError(f"lrpe must be one of {LRPE_FORMS}, got {lrpe!r}")
    if max(k.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton additive attention supports head dims up to {MAX_HEAD_DIM}, got K={k.shape[-1]}, "
            f"V={v.shape[-1]}"
        )
    if angles is None:
        return None
    if angles.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("the Triton additive attention has no gradient for angles; use impl='torch'")
    n, dim_k = k.shape[1], k.shape[-1]
    if lrpe == "none":
        raise ValueError("lrpe='none' takes no angles")
    if lrpe == "rotary":
        if dim_k % 2 or angles.shape != (n, dim_k // 2):
            raise ValueError(f"rotary angles must be [N, K/2] with K even; got {list(angles.shape)} for K={dim_k}")
        angles = torch.cat([angles, angles], dim=-1)
    elif angles.shape != (n, dim_k):
        raise ValueError(f"angles must be [N, K] = {[n, dim_k]}, got {list(angles.shape)}")
    return rotation_table(angles) if table else None


def noncausal_additive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None = None,
    lrpe: str = "cosine",
    num_splits: int | None = None,
    fallback: bool = False,
    q_activation: str = "none",
) -> Tensor:
    """Non-causal additive attention `o = q̃ (k̃ᵀ v)` with `k̄ = softmax_N(k)` per channel, in fused Triton kernels.

    Every sum, the log-normaliser and the state are fp32 whatever the input dtype (fp32, bf16 or fp16); key logits
    of ±1e4 stay finite. With `angles`, q and k̄ are rotated inside the kernels. The layers reach this through
    `additive_attention(..., impl="auto" | "triton")`, which also checks the shapes.

    Args:
        q: Queries `[B, N, H, K]`, activated unless `q_activation` says which activation to apply.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        angles: MD-LRPE angles, fixed: no gradient flows to them.
        lrpe: "cosine", the paper's `[x cos Θ, x sin Θ]` with angles `[N, K]`; "rotary", channel pairs
            `(c, c + K/2)` turned by angles `[N, K/2]`; "none" (no angles).
        num_splits: Programs per (batch, head) along the tokens; None picks enough to fill the GPU (1 off CUDA).
        fallback: When the kernels fail to compile or launch (forward or backward), warn once and compute this
            call and every later one of its shape class with the PyTorch path instead of raising (what
            `impl="auto"` asks for). The decision is taken at run time, so it holds inside a compiled graph too.
        q_activation: "silu" applies SiLU to q here (the backward keeps q before it), "none" takes q as it is.

    Second derivatives (`create_graph=True`) come from the PyTorch path, whose backward is differentiable.

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    check_triton_inputs(k, v, angles, lrpe, table=False)  # clear errors before the op is entered
    angles = None if angles is None else angles.detach()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _forward_op(q, k, v, angles, lrpe, num_splits, fallback, q_activation)[0]
