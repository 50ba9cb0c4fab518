"""Additive attention of LightNet (arXiv 2405.21022) in plain PyTorch: linear in N, no N×N matrix, fp32 normaliser."""

import functools
import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

# Input dtypes the Triton kernels accumulate in fp32 without loss; fp64 stays on the PyTorch path.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# How MD-LRPE angles act on q and on the normalised keys (README.md, "MD-LRPE").
LRPE_FORMS = ("cosine", "rotary")
# The feature map the op applies to q itself: "silu" takes pre-activation queries, so that the backward keeps those
# (which it needs anyway) instead of both them and their SiLU.
Q_ACTIVATIONS = ("none", "silu")


@functools.cache
def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Shape classes (device, dtype, K, V, MD-LRPE form) whose Triton kernels failed to compile or launch in this process:
# impl="auto" keeps them on the PyTorch path from then on.
_TRITON_FAILED: set[tuple] = set()


def _shape_class(q: Tensor, v: Tensor, angles: Tensor | None, lrpe: str) -> tuple:
    return (str(q.device), q.dtype, q.shape[-1], v.shape[-1], "none" if angles is None else lrpe)


def triton_failed(q: Tensor, v: Tensor, angles: Tensor | None, lrpe: str) -> bool:
    """Whether the Triton kernels of this shape class have failed in this process."""
    return _shape_class(q, v, angles, lrpe) in _TRITON_FAILED


def report_triton_failure(error: Exception, q: Tensor, v: Tensor, angles: Tensor | None, lrpe: str) -> None:
    """Records that the Triton kernels failed for this shape class and warns once, naming the class and the error.
    Out of memory is not a kernel failure: it is raised again, as the PyTorch path would need more memory still."""
    if isinstance(error, torch.OutOfMemoryError):
        raise error
    key = _shape_class(q, v, angles, lrpe)
    if key in _TRITON_FAILED:
        return
    _TRITON_FAILED.add(key)
    device, dtype, dim_k, dim_v, form = key
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    warnings.warn(
        f"additive_attention: the Triton kernels failed for {dtype} on {device} with K={dim_k}, V={dim_v}, "
        f"lrpe={form} ({type(error).__name__}: {message}); impl='auto' uses the PyTorch path for these shapes from "
        "now on (impl='triton' raises instead)",
        RuntimeWarning,
        stacklevel=3,
    )


def _triton_supports(q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, causal: bool, lrpe: str) -> bool:
    # The cases impl="auto" sends to Triton: non-causal calls on CUDA tensors, fp32 or narrower, head dims up to
    # 128. The causal kernels pass their CUDA tests but have not been timed on a GPU; "auto" keeps causal calls on
    # PyTorch until they are.
    if causal or not q.is_cuda or not _triton_imports():
        return False
    if any(x.dtype not in _TRITON_DTYPES for x in (q, k, v)) or max(k.shape[-1], v.shape[-1]) > 128:
        return False
    return angles is None or not (angles.requires_grad and torch.is_grad_enabled())


def activate(q: Tensor, q_activation: str) -> Tensor:
    """The query feature map inside the op: SiLU, or none."""
    return F.silu(q) if q_activation == "silu" else q


def activate_adjoint(grad: Tensor, q: Tensor, q_activation: str) -> Tensor:
    """A gradient with respect to the activated q back to the pre-activation q: `σ(q)(1 + q(1 − σ(q)))` for SiLU."""
    if q_activation != "silu":
        return grad
    if torch.is_grad_enabled():  # a differentiated backward: the fused silu_backward has no derivative of its own
        sigmoid = torch.sigmoid(q)
        return grad * sigmoid * (1 + q * (1 - sigmoid))
    return torch.ops.aten.silu_backward(grad, q)


def encode(x: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str) -> Tensor:
    """MD-LRPE on the last dim of x `[..., K]`: cosine `[x cos Θ, x sin Θ]` (2K wide), rotary pairs `(c, c + K/2)`
    turned by Θ (K wide), or x unchanged without angles. cos and sin broadcast against x (rotary: K/2 wide).

    Without a graph to record (the forward and backward of the autograd functions) the halves are written straight
    into one contiguous output, two passes instead of a product per half, their sum and a concatenation."""
    if cos is None:
        return x
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _encode_into(x, cos, sin, lrpe, adjoint=False)
    if lrpe == "cosine":
        return torch.cat([x * cos, x * sin], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def encode_adjoint(g: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str) -> Tensor:
    """The transpose of `encode`: a gradient with respect to the encoded x back to x."""
    if cos is None:
        return g
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _encode_into(g, cos, sin, lrpe, adjoint=True)
    g1, g2 = g.chunk(2, dim=-1)
    if lrpe == "cosine":
        return g1 * cos + g2 * sin
    return torch.cat([g1 * cos + g2 * sin, g2 * cos - g1 * sin], dim=-1)


def _encoded_queries(q: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str, q_activation: str) -> Tensor:
    # The encoded, activated queries, head-major [B, H, N, K'] from q [B, N, H, K], without autograd: SiLU writes a
    # contiguous head-major tensor (which the products then read without a copy), which is turned in place.
    heads_first = q.transpose(1, 2)
    if q_activation == "none":
        return encode(heads_first, cos, sin, lrpe)
    activated = torch.empty(heads_first.shape, dtype=q.dtype, device=q.device)
    torch.ops.aten.silu.out(heads_first, out=activated)
    return _encode_own(activated, cos, sin, lrpe)


def _encode_own(x: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str) -> Tensor:
    # `encode` of a tensor this code owns (no autograd): rotary pairs are turned in place, with a half-width
    # temporary, instead of into a new tensor.
    if cos is None or lrpe == "cosine":
        return encode(x, cos, sin, lrpe)
    first, second = x.chunk(2, dim=-1)
    copy = first.clone()
    first.mul_(cos).addcmul_(second, sin, value=-1.0)
    second.mul_(cos).addcmul_(copy, sin)
    return x


def _encode_into(x: Tensor, cos: Tensor, sin: Tensor, lrpe: str, adjoint: bool) -> Tensor:
    # `encode` (or its adjoint) into a fresh contiguous tensor with `out=` and in-place products; no autograd.
    dtype = torch.promote_types(x.dtype, cos.dtype)
    if lrpe == "cosine" and not adjoint:  # [x cos, x sin]
        out = torch.empty((*x.shape[:-1], 2 * x.shape[-1]), dtype=dtype, device=x.device)
        first, second = out.chunk(2, dim=-1)
        torch.mul(x, cos, out=first)
        torch.mul(x, sin, out=second)
        return out
    x1, x2 = x.chunk(2, dim=-1)
    if lrpe == "cosine":  # g1 cos + g2 sin
        out = torch.mul(x1, cos, out=torch.empty(x1.shape, dtype=dtype, device=x.device))
        return out.addcmul_(x2, sin)
    # Rotary: turn each pair (x1, x2) by +Θ, or by −Θ for the adjoint.
    sign = -1.0 if adjoint else 1.0
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    first, second = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=first).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin, value=sign)
    return out


def _angle_grad(grad_encoded: Tensor, x: Tensor, cos: Tensor, sin: Tensor, lrpe: str) -> Tensor:
    # d/dΘ of encode(x) against its gradient, summed over batch and heads (head-major [B, H, N, ·] layout).
    g1, g2 = grad_encoded.chunk(2, dim=-1)
    if lrpe == "cosine":
        return (x * (g2 * cos - g1 * sin)).sum(dim=(0, 1))  # [N, K]
    # A pair turned by Θ moves along (-r2, r1).
    r1, r2 = encode(x, cos, sin, lrpe).chunk(2, dim=-1)
    return (g2 * r1 - g1 * r2).sum(dim=(0, 1))  # [N, K/2]


class _NonCausal(torch.autograd.Function):
    """`o = q̃ (k̃ᵀ v)` with a hand-written backward that keeps only q (before its activation), k, v and the small
    `[B, H, K', V]` state: the activated q, the softmax-normalised keys and the encoded tensors are rebuilt in the
    backward instead of being stored per layer. The formulas are those of README.md (Triton kernels, non-causal).
    Inside, tensors are head-major `[B, H, N, ·]`, so that every product is one batched matmul over contiguous (or
    transposed) operands; the gradients go back as `[B, N, H, ·]` views. The backward is built from differentiable
    ops on the inputs, so second derivatives (`create_graph=True`: gradient penalties, Hessian-vector products) are
    right too."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, angles: Tensor | None, lrpe: str, q_activation: str) -> Tensor:
        cos, sin = _cos_sin(angles)
        ctx.lrpe, ctx.q_activation = lrpe, q_activation
        if torch.compiler.is_compiling():  # the compiler plans the memory: the plain products
            state = _key_state(_key_weights(k.transpose(1, 2)), v.transpose(1, 2), cos, sin, lrpe)
            ctx.save_for_backward(q, k, v, angles, state)
            encoded_q = encode(activate(q.transpose(1, 2), q_activation), cos, sin, lrpe)
            return (encoded_q @ state).transpose(1, 2)
        batch, n, heads, dim_k = k.shape
        dim_v = v.shape[-1]
        # The state (kept for the backward) and the output first, the temporaries after them: freed, these leave
        # the top of the heap instead of holes under what the backward keeps.
        width = 2 * dim_k if cos is not None and lrpe == "cosine" else dim_k
        state = v.new_empty(batch, heads, width, dim_v)  # [B, H, K', V]
        out = v.new_empty(batch, heads, n, dim_v)
        encoded_k = _encode_own(_key_weights(k.transpose(1, 2)), cos, sin, lrpe)  # [B, H, N, K']
        for head in range(heads):  # per head, so that the values are read in place, without a head-major copy
            torch.bmm(encoded_k[:, head].transpose(1, 2), v[:, :, head], out=state[:, head])
        del encoded_k
        torch.matmul(_encoded_queries(q, cos, sin, lrpe, q_activation), state, out=out)
        ctx.save_for_backward(q, k, v, angles, state)
        return out.transpose(1, 2)  # [B, N, H, V]

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, angles, state = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Differentiating this backward (create_graph=True): the saved state was built without a graph, so it
            # is rebuilt from k and v for the second derivative to reach them.
            state = None
        angle_grad = ctx.needs_input_grad[3]
        # In fp32 as the forward, also when the backward is called inside an autocast region.
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = noncausal_gradients(q, k, v, angles, ctx.lrpe, grad_out, angle_grad, state, ctx.q_activation)
        return (*grads, None, None)


def noncausal_gradients(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    angles: Tensor | None,
    lrpe: str,
    grad_out: Tensor,
    angle_grad: bool = False,
    state: Tensor | None = None,
    q_activation: str = "none",
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """`(dq, dk, dv, dΘ)` of the non-causal op for inputs `[B, N, H, ·]` (dΘ only with `angle_grad`; dq with respect
    to the q given, before `q_activation`), from the head-major state `[B, H, K', V]` of the forward, or rebuilt from
    k and v when not given. Computed in the inputs' dtype; the Triton op falls back on it when its backward kernels
    fail."""
    cos, sin = _cos_sin(angles)
    # Without a graph to record (no second derivative, no compilation) the products may write into buffers.
    own = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    tokens_q, tokens_v = q, v  # [B, N, H, ·]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, N, ·]
    grad_out = grad_out.transpose(1, 2)  # [B, H, N, V]
    if own:
        grad_out = grad_out.contiguous()  # once, for the two products below (a no-op for the layer's gradient)
    grad_angles = None
    # Each rebuilt tensor is dropped as soon as its last product is taken: what is alive here adds to the peak of
    # the step, which the backward of the last block reaches with every other block's saved tensors still held.
    if own and not angle_grad:
        activated_q, encoded_q = None, _encoded_queries(tokens_q, cos, sin, lrpe, q_activation)
    else:
        activated_q = activate(q, q_activation)
        encoded_q = encode(activated_q, cos, sin, lrpe)  # [B, H, N, K']
    grad_state = encoded_q.transpose(2, 3) @ grad_out  # [B, H, K', V]
    del encoded_q
    k_bar = _key_weights(k)  # [B, H, N, K]
    encoded_k = encode(k_bar, cos, sin, lrpe)  # [B, H, N, K']
    if state is None:
        state = _key_state(k_bar, v, cos, sin, lrpe, encoded_k)
    grad_q_encoded = grad_out @ state.transpose(2, 3)  # [B, H, N, K']
    if angle_grad:
        grad_angles = _angle_grad(grad_q_encoded, activated_q, cos, sin, lrpe)
    del activated_q
    grad_q = activate_adjoint(encode_adjoint(grad_q_encoded, cos, sin, lrpe), q, q_activation)
    del grad_q_encoded
    grad_v = encoded_k @ grad_state  # [B, H, N, V]
    del encoded_k
    if own:  # per head, so that the values are read in place, without a head-major copy
        grad_k_encoded = grad_state.new_empty(*v.shape[:3], grad_state.shape[2])  # [B, H, N, K']
        for head in range(v.shape[1]):
            torch.bmm(tokens_v[:, :, head], grad_state[:, head].transpose(1, 2), out=grad_k_encoded[:, head])
    else:
        grad_k_encoded = v @ grad_state.transpose(2, 3)  # gradient w.r.t. the encoded k̄
    if angle_grad:
        grad_angles = grad_angles + _angle_grad(grad_k_encoded, k_bar, cos, sin, lrpe)
    # Through the softmax over tokens, per channel: dk = k̄ ⊙ (dk̄ − Σ_n k̄ dk̄), one fused op.
    grad_k_bar = encode_adjoint(grad_k_encoded, cos, sin, lrpe)  # [B, H, N, K]
    del grad_k_encoded
    grad_k = torch._softmax_backward_data(grad_k_bar, k_bar, 2, k_bar.dtype)
    return grad_q.transpose(1, 2), grad_k.transpose(1, 2), grad_v.transpose(1, 2), grad_angles


def _cos_sin(angles: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    # [N, ·] angles broadcast over batch and heads in the head-major layout.
    return (None, None) if angles is None else (angles.cos(), angles.sin())


def _key_weights(k: Tensor) -> Tensor:
    # k̄: the softmax over the N tokens of every key channel, head-major [B, H, N, K] (one fused op; the backward
    # rebuilds it the same way rather than keeping it).
    return torch.softmax(k, dim=2)


def _key_state(
    k_bar: Tensor, v: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str, encoded_k: Tensor | None = None
) -> Tensor:
    # The state k̃ᵀ v [B, H, K', V] of the normalised keys (encoded_k: k̃ if already formed).
    encoded_k = encode(k_bar, cos, sin, lrpe) if encoded_k is None else encoded_k
    return encoded_k.transpose(2, 3) @ v


def _duplicate(x: Tensor, rotated: bool) -> Tensor:
    # A per-channel factor of k̄ applies to both halves [k̄ cos Θ, k̄ sin Θ] of the expanded key.
    return torch.cat([x, x], dim=-1) if rotated else x


def _causal_query(q: Tensor, cos: Tensor | None, sin: Tensor | None, lrpe: str) -> Tensor:
    # The causal state is always held in the cosine layout [k̄ cos Θ, k̄ sin Θ] (per key channel, so that it can be
    # rescaled channel by channel as the normaliser moves). A rotary query reads it through
    # q̂ = [q cos Θ + p sin Θ, q sin Θ − p cos Θ] with p = [−q2, q1] and Θ repeated for both halves of K:
    # then q̂ · [k̄ cos Θ_s, k̄ sin Θ_s] = rot_t(q) · rot_s(k̄) (README.md, "MD-LRPE").
    if cos is None or lrpe == "cosine":
        return encode(q, cos, sin, "cosine")
    q1, q2 = q.chunk(2, dim=-1)
    p = torch.cat([-q2, q1], dim=-1)
    return torch.cat([q * cos + p * sin, q * sin - p * cos], dim=-1)


def _causal(
    q: Tensor, k: Tensor, v: Tensor, cos: Tensor | None, sin: Tensor | None, chunk_size: int, lrpe: str
) -> Tensor:
    batch, n, heads, _ = k.shape
    # The running log-normaliser z_t = logcumsumexp_{s<=t} k_s is kept as m_t + r_t: the running maximum m_t (exact)
    # plus a small r_t in [0, log N] from a float64 scan. A single fp32 z of magnitude 1e4 would have an ulp of
    # 1e-3 and ruin the key gradients of large logits.
    m = torch.cummax(k, dim=1).values  # [B, N, H, K]
    r = (torch.logcumsumexp(k.double(), dim=1) - m.double()).to(k.dtype)  # [B, N, H, K]
    expanded_q = _causal_query(q, cos, sin, lrpe)  # [B, N, H, K']
    state = q.new_zeros(batch, heads, expanded_q.shape[-1], v.shape[-1])  # [B, H, K', V]
    # Log-normaliser at the end of the previous chunk (none yet: -inf).
    m_before, r_before = torch.full_like(m[:, 0], float("-inf")), torch.zeros_like(r[:, 0])  # [B, H, K]
    outputs = []
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        k_c, v_c, q_c = k[:, start:end], v[:, start:end], expanded_q[:, start:end]
        m_c, r_c = m[:, start:end], r[:, start:end]
        cos_c = None if cos is None else cos[:, start:end]
        sin_c = None if sin is None else sin[:, start:end]
        # Inter-chunk: the state so far, rescaled from the old normaliser to step t's: exp(z_before - z_t) <= 1.
        decay = torch.exp((m_before[:, None] - m_c) + (r_before[:, None] - r_c))  # [B, C, H, K]
        inter = torch.einsum("bthk,bhkv->bthv", q_c * _duplicate(decay, cos is not None), state)
        # Intra-chunk: weight of token s at step t is exp(k_s - z_t) for s <= t, formed in log space so that
        # key logits of ±1e4 neither overflow nor turn into 0·inf.
        log_w = (k_c[:, None] - m_c[:, :, None]) - r_c[:, :, None]  # [B, Ct, Cs, H, K]
        mask = torch.ones(end - start, end - start, dtype=torch.bool, device=k.device).tril()
        w = torch.exp(log_w.masked_fill(~mask[None, :, :, None, None], float("-inf")))
        if cos is not None:
            w = torch.cat([w * cos_c[:, None], w * sin_c[:, None]], dim=-1)  # [B, Ct, Cs, H, 2K]
        scores = torch.einsum("bthk,btshk->bhts", q_c, w)  # [B, H, Ct, Cs]
        intra = torch.einsum("bhts,bshv->bthv", scores, v_c)
        outputs.append(inter + intra)
        # Carry the state to the end of this chunk.
        m_end, r_end = m_c[:, -1], r_c[:, -1]  # [B, H, K]
        k_bar_end = encode(torch.exp((k_c - m_end[:, None]) - r_end[:, None]), cos_c, sin_c, "cosine")  # [B, C, H, K']
        carry = _duplicate(torch.exp((m_before - m_end) + (r_before - r_end)), cos is not None)  # [B, H, K']
        state = carry[..., None] * state + torch.einsum("bshk,bshv->bhkv", k_bar_end, v_c)
        m_before, r_before = m_end, r_end
    return torch.cat(outputs, dim=1)


def additive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    angles: Tensor | None = None,
    lrpe: str = "cosine",
    chunk_size: int = 64,
    impl: str = "auto",
    q_activation: str = "none",
) -> Tensor:
    """Additive (softmax-over-tokens) linear attention.

    Every key channel is normalised by a softmax over the tokens, `k̄ = softmax_N(k)`, and the output is
    `o = q (k̄ᵀ v)`: one reduction over the sequence, so the result does not depend on the scan order of a
    grid. Causal mode normalises over the prefix instead (`S_t = diag(λ_t) S_{t-1} + k̄_t v_tᵀ`). The
    log-normaliser, the state and every sum are kept in fp32 (or the input dtype if wider), also under autocast.

    Args:
        q: Queries `[B, N, H, K]`, activated unless `q_activation` names the activation to apply.
        k: Raw key logits `[B, N, H, K]`; `-inf` marks a padded token.
        v: Values `[B, N, H, V]`.
        causal: Normalise over the prefix `s <= t` (raster order) instead of over all tokens.
        angles: MD-LRPE angles, applied to q and to k̄ before the product as `lrpe` says.
        lrpe: `"cosine"`, the paper's form: angles `[N, K]`, `x ↦ [x cos Θ, x sin Θ]` (2K wide), even in the
            offset between two tokens; or `"rotary"`: angles `[N, K/2]`, channel pairs `(c, c + K/2)` turned by Θ
            (K wide), which also tells an offset from its mirror image; "none" for no angles.
        chunk_size: Tokens per chunk in causal mode; memory grows as `N · chunk_size`.
        impl: `"torch"` for this PyTorch code, `"triton"` for the fused kernels of `triton_noncausal.py` and
            `triton_causal.py` (no gradient for `angles`; `chunk_size` is fixed there), `"auto"` for Triton where
            the tensors are on CUDA, Triton imports and the case is supported (non-causal, fp32/bf16/fp16, K and V
            up to 128, fixed angles), else PyTorch. With "auto", a Triton compile or launch error (forward or
            backward) warns once, naming the shapes and the error, and those shapes use PyTorch from then on.
        q_activation: `"silu"` applies SiLU to q inside the op (the LightNet layer's `φ`), whose backward then keeps
            only the pre-activation q and recomputes its SiLU; `"none"` takes q as it is.

    Returns:
        `[B, N, H, V]` in the dtype of `v`.
    """
    if q.dim() != 4 or v.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"additive_attention expects q, k [B, N, H, K] and v [B, N, H, V]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    _check_angles(q, angles, lrpe)
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    if q_activation not in Q_ACTIVATIONS:
        raise ValueError(f"q_activation must be one of {Q_ACTIVATIONS}, got {q_activation!r}")
    if impl == "triton":
        _check_triton_runs(q)
        if causal:
            from lightnet_vision.kernels.additive.triton_causal import causal_additive_attention

            return causal_additive_attention(activate(q, q_activation), k, v, angles, lrpe)
        from lightnet_vision.kernels.additive.triton_noncausal import noncausal_additive_attention

        return noncausal_additive_attention(q, k, v, angles, lrpe, q_activation=q_activation)
    if impl == "auto" and _triton_supports(q, k, v, angles, causal, lrpe):
        from lightnet_vision.kernels.additive.triton_noncausal import noncausal_additive_attention

        # With fallback=True the op itself runs PyTorch for shape classes whose kernels failed, at run time, so
        # that this also holds inside a compiled graph.
        return noncausal_additive_attention(q, k, v, angles, lrpe, fallback=True, q_activation=q_activation)
    out_dtype, dtype = v.dtype, torch.promote_types(v.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        angles = None if angles is None else angles.to(dtype)
        if causal:
            cos = sin = None
            if angles is not None:
                # One angle per key channel: a rotary pair's angle serves both of its channels.
                per_channel = angles if lrpe == "cosine" else torch.cat([angles, angles], dim=-1)
                cos, sin = per_channel.cos()[None, :, None, :], per_channel.sin()[None, :, None, :]  # [1, N, 1, K]
            out = _causal(activate(q, q_activation), k, v, cos, sin, chunk_size, lrpe)
        else:
            out = _NonCausal.apply(q, k, v, angles, lrpe, q_activation)
    return out.to(out_dtype)


def _check_triton_runs(q: Tensor) -> None:
    # Without these checks Triton fails deep in its launcher ("0 active drivers") on a CPU tensor.
    if not _triton_imports():
        raise RuntimeError("impl='triton' needs Triton (pip install triton); impl='auto' or 'torch' runs without it")
    interpreted = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if not q.is_cuda and not interpreted:
        raise RuntimeError(
            f"impl='triton' runs the Triton kernels, which need CUDA tensors; these are on {q.device}. Use impl='auto' "
            "(Triton on CUDA, PyTorch elsewhere) or impl='torch', or set TRITON_INTERPRET=1 before Triton is imported "
            "to run the kernels in Triton's (slow) interpreter"
        )


def _check_angles(q: Tensor, angles: Tensor | None, lrpe: str) -> None:
    if lrpe not in (*LRPE_FORMS, "none"):
        raise ValueError(f"lrpe must be one of {(*LRPE_FORMS, 'none')}, got {lrpe!r}")
    if angles is None:
        return
    if lrpe == "none":
        raise ValueError("lrpe='none' takes no angles; pass lrpe='cosine' or 'rotary' with them")
    n, dim_k = q.shape[1], q.shape[3]
    if lrpe == "rotary" and dim_k % 2:
        raise ValueError(f"lrpe='rotary' turns channel pairs and needs an even head dim K, got K={dim_k}")
    expected = (n, dim_k) if lrpe == "cosine" else (n, dim_k // 2)
    if angles.shape != expected:
        what = "[N, K]" if lrpe == "cosine" else "[N, K/2]"
        raise ValueError(f"angles for lrpe={lrpe!r} must be {what} = {list(expected)}, got {list(angles.shape)}")
