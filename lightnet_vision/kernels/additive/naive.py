"""Dense reference for the additive attention of LightNet (arXiv 2405.21022). For tests only: O(N²) time and memory."""

import torch
from torch import Tensor


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """MD-LRPE expansion `x ↦ [x cos Θ, x sin Θ]` of `x` `[B, N, H, K]` with `angles` `[N, K]`."""
    cos = angles.cos()[None, :, None, :]  # [1, N, 1, K]
    sin = angles.sin()[None, :, None, :]
    return torch.cat([x * cos, x * sin], dim=-1)  # [B, N, H, 2K]


def naive_additive_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, angles: Tensor | None = None
) -> Tensor:
    """The formulas of SPEC §2 written out densely in (at least) fp32; returns `[B, N, H, V]` in `v.dtype`."""
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    n = q.shape[1]
    if not causal:
        k_bar = k.softmax(dim=1)  # softmax over the N tokens, per channel
        if angles is not None:
            q, k_bar = rotate(q, angles.to(dtype)), rotate(k_bar, angles.to(dtype))
        scores = torch.einsum("bthc,bshc->bhts", q, k_bar)  # [B, H, N, N]
        return torch.einsum("bhts,bshv->bthv", scores, v).to(v.dtype)

    outputs = []
    for t in range(n):
        # Softmax over the prefix s <= t only, again per channel.
        k_bar = k[:, : t + 1].softmax(dim=1)  # [B, t+1, H, K]
        q_t = q[:, t : t + 1]
        if angles is not None:
            q_t = rotate(q_t, angles[t : t + 1].to(dtype))
            k_bar = rotate(k_bar, angles[: t + 1].to(dtype))
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
