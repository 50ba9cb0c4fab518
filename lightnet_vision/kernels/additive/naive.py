"""Dense reference for the additive attention of LightNet (arXiv 2405.21022). For tests only: O(N²) time and memory."""

import torch
import torch.nn.functional as F
from torch import Tensor

LRPE_FORMS = ("cosine", "rotary")


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """The paper's MD-LRPE expansion `x ↦ [x cos Θ, x sin Θ]` of `x` `[B, N, H, K]` with `angles` `[N, K]`."""
    cos = angles.cos()[None, :, None, :]  # [1, N, 1, K]
    sin = angles.sin()[None, :, None, :]
    return torch.cat([x * cos, x * sin], dim=-1)  # [B, N, H, 2K]


def rotate_pairs(x: Tensor, angles: Tensor) -> Tensor:
    """Rotary MD-LRPE: channel pairs `(c, c + K/2)` of `x` `[B, N, H, K]` turned by `angles` `[N, K/2]`.

    Written as 2×2 rotation matrices applied pair by pair, so that this reference shares no code with the fast path.
    """
    half = x.shape[-1] // 2
    pairs = torch.stack([x[..., :half], x[..., half:]], dim=-1)  # [B, N, H, K/2, 2]
    cos, sin = angles.cos(), angles.sin()  # [N, K/2]
    rows = [torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)]
    rotation = torch.stack(rows, dim=-2)  # [N, K/2, 2, 2]
    turned = torch.einsum("nkij,bnhkj->bnhki", rotation, pairs)  # [B, N, H, K/2, 2]
    return torch.cat([turned[..., 0], turned[..., 1]], dim=-1)  # [B, N, H, K]


def _encode(x: Tensor, angles: Tensor, lrpe: str) -> Tensor:
    return rotate(x, angles) if lrpe == "cosine" else rotate_pairs(x, angles)


def naive_additive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    angles: Tensor | None = None,
    lrpe: str = "cosine",
    q_activation: str = "none",
) -> Tensor:
    """The op written out densely in (at least) fp32; returns `[B, N, H, V]` in `v.dtype`.

    `lrpe` says how `angles` act on q and on the normalised keys: "cosine" (angles `[N, K]`, the paper's
    `[x cos Θ, x sin Θ]`) or "rotary" (angles `[N, K/2]`, channel pairs rotated). `q_activation` "silu" applies SiLU
    to q first.
    """
    if lrpe not in LRPE_FORMS:
        raise ValueError(f"lrpe must be one of {LRPE_FORMS}, got {lrpe!r}")
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q_activation == "silu":
        q = F.silu(q)
    n = q.shape[1]
    if not causal:
        k_bar = k.softmax(dim=1)  # softmax over the N tokens, per channel
        if angles is not None:
            q, k_bar = _encode(q, angles.to(dtype), lrpe), _encode(k_bar, angles.to(dtype), lrpe)
        scores = torch.einsum("bthc,bshc->bhts", q, k_bar)  # [B, H, N, N]
        return torch.einsum("bhts,bshv->bthv", scores, v).to(v.dtype)

    outputs = []
    for t in range(n):
        # Softmax over the prefix s <= t only, again per channel.
        k_bar = k[:, : t + 1].softmax(dim=1)  # [B, t+1, H, K]
        q_t = q[:, t : t + 1]
        if angles is not None:
            q_t = _encode(q_t, angles[t : t + 1].to(dtype), lrpe)
            k_bar = _encode(k_bar, angles[: t + 1].to(dtype), lrpe)
        scores = torch.einsum("bthc,bshc->bhts", q_t, k_bar)  # [B, H, 1, t+1]
        outputs.append(torch.einsum("bhts,bshv->bthv", scores, v[:, : t + 1]))
    return torch.cat(outputs, dim=1).to(v.dtype)


def naive_causal_states(k: Tensor, v: Tensor) -> Tensor:
    """The recurrent state `S_t = diag(λ_t) S_{t-1} + k̄_t v_tᵀ` of every step, `[B, N, H, K, V]`, by the recurrence."""
    dtype = torch.promote_types(v.dtype, torch.float32)
    k, v = k.to(dtype), v.to(dtype)
    z = torch.logcumsumexp(k, dim=1)  # [B, N, H, K]
    state = torch.zeros(*k.shape[:1], *k.shape[2:], v.shape[-1], dtype=dtype, device=k.device)  # [B, H, K, V]
    states = []
    for t in range(k.shape[1]):
        decay = torch.exp(z[:, t - 1] - z[:, t]) if t > 0 else torch.zeros_like(z[:, 0])  # [B, H, K]
        k_bar = torch.exp(k[:, t] - z[:, t])
        state = decay[..., None] * state + k_bar[..., None] * v[:, t, :, None, :]
        states.append(state)
    return torch.stack(states, dim=1)
