"""The elementwise chains of the LightNet block (arXiv 2405.21022) as autograd functions that keep only their inputs.

In eager PyTorch every op of a chain saves what its own backward needs: the pre-norm keeps its input and the linear
maps after it keep its output; the per-head norm of the attention output keeps its input and its normalised output,
the sigmoid gate keeps its output, the product keeps both factors, the projection keeps the product; the GLU keeps
the up-projection, the SiLU of its gate half and their product. Each is a `[B, N, ·]` tensor per block that lives
until the backward reaches it. The functions here keep the inputs of a chain only and recompute the rest in the
backward, where it is a few elementwise passes (and, for the gate, one rank-K matmul) next to the block's matmuls:

| function                | computes                                             | keeps for the backward          |
|-------------------------|------------------------------------------------------|---------------------------------|
| `layer_norm_linears`    | `(LN(x) ⊙ w + b) W_iᵀ + b_i` for each linear map i   | x                               |
| `gated_norm_projection` | `(RMSNorm_head(o) ⊙ w ⊙ σ(h W_uᵀ + b_u)) W_oᵀ + b_o` | o, the gate's rank-K h, `1/rms` |
| `glu_projection`        | `(SiLU(a) ⊙ b) W_3ᵀ + b_3` for `[a, b] = h`          | h                               |

Each has a plain twin (`plain_*`): the same maths in differentiable PyTorch ops, which the tests compare outputs and
every gradient against, and which the backward differentiates instead when it is itself differentiated
(`create_graph=True`: gradient penalties), so second derivatives stay exact. `torch.compile` traces the functions
themselves (out-of-place where a buffer would be written through a strided view); its partitioner then has the last
word on what the compiled backward keeps, and may keep a recomputed tensor after all (benchmarks/models.py
`--compile` counts it). `torch.export` records the twins' ops, which its graph is differentiated through op by op.
The projections' gradients are taken in the dtype of the incoming gradient, as
`nn.Linear`'s are under autocast.

Where a function allocates matters on the CPU, whose allocator keeps the pages of a freed block: the outputs are
allocated before the temporaries and nothing small is kept after a large temporary, so that freed temporaries do
not leave holes under what the backward keeps (a step's peak of resident memory counts the holes too).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def plain_gated_norm_projection(
    o: Tensor,
    gate_hidden: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor | None,
    norm_weight: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """`(RMSNorm(o) ⊙ norm_weight ⊙ σ(gate_hidden gate_weightᵀ + gate_bias)) weightᵀ + bias`: o `[B, N, H, K]`
    normalised per head, the gate's logits `[B, N, H·K]` from its low-rank hidden `[B, N, R]`, norm_weight `[K]`,
    weight `[D_out, H·K]`."""
    normed = F.rms_norm(o, o.shape[-1:], norm_weight, eps)  # [B, N, H, K]
    gate = torch.sigmoid(F.linear(gate_hidden, gate_weight, gate_bias))  # [B, N, H·K]
    return F.linear(normed.flatten(2) * gate, weight, bias)


def plain_glu_projection(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`(SiLU(a) ⊙ b) weightᵀ + bias` with `a, b` the two halves of hidden `[..., 2F]`."""
    gate, value = hidden.chunk(2, dim=-1)
    return F.linear(F.silu(gate) * value, weight, bias)


class _GatedNormProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias, eps):
        batch, n, heads, dim_k = o.shape
        dtype = _compute_dtype(o)
        rstd = _inverse_rms(o, dtype, eps)  # [B, N, H, 1]
        ctx.save_for_backward(o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias, rstd)
        ctx.eps = eps
        out = _empty_linear_output(gate_hidden, weight)  # [B, N, D_out], before the temporary below
        # x̂ ⊙ w ⊙ σ(g) in the buffer of the gate's logits g: σ in place, then scaled in place.
        y = F.linear(gate_hidden, gate_weight, gate_bias).sigmoid_().view(o.shape).to(dtype)  # [B, N, H, K]
        y.mul_(o).mul_(rstd).mul_(norm_weight)
        return _linear_into(out, y.view(batch, n, heads * dim_k).to(o.dtype), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        with _without_autocast(grad_out):
            return _GatedNormProjection.gradients(ctx, grad_out)

    @staticmethod
    def gradients(ctx, grad_out):
        o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            inputs = (o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias)
            return (*_twin_gradients(plain_gated_norm_projection, inputs, needs[:7], grad_out, ctx.eps), None)
        batch, n, heads, dim_k = o.shape
        dtype = _compute_dtype(o)
        # The gate rebuilt from its low-rank hidden: one small matmul instead of a kept [B, N, D] tensor, in the
        # hidden's dtype as the forward's (under autocast) was.
        gate_linear = [t if t is None else t.to(gate_hidden.dtype) for t in (gate_weight, gate_bias)]
        sigmoid = F.linear(gate_hidden, *gate_linear).sigmoid_().view(o.shape).to(dtype)
        normed = torch.mul(o, rstd, out=torch.empty(o.shape, dtype=dtype, device=o.device))  # x̂, [B, N, H, K]
        scaled = normed * norm_weight  # x̂ ⊙ w
        grad_out_2d = grad_out.reshape(batch * n, -1)
        grad_weight = grad_bias = None
        if needs[5]:
            y = (scaled * sigmoid).reshape(batch * n, -1).to(grad_out.dtype)  # the projection's input, rebuilt
            grad_weight = (grad_out_2d.t() @ y).to(weight.dtype)
            del y
        if bias is not None and needs[6]:
            grad_bias = grad_out_2d.sum(dim=0).to(bias.dtype)
        grad_y = (grad_out_2d @ weight.to(grad_out.dtype)).view(o.shape).to(dtype)
        # Gate: dσ(g)/dg = σ(1 − σ), one fused op; then back through the gate's up-projection.
        grad_logits = torch.ops.aten.sigmoid_backward(scaled.mul_(grad_y), sigmoid).reshape(batch * n, -1)
        del scaled
        grad_gate_hidden = grad_gate_weight = grad_gate_bias = None
        if needs[1]:
            grad_gate_hidden = (grad_logits @ gate_weight.to(dtype)).view(gate_hidden.shape).to(gate_hidden.dtype)
        if needs[2]:
            hidden_2d = gate_hidden.reshape(batch * n, -1).to(dtype)
            grad_gate_weight = (grad_logits.t() @ hidden_2d).to(gate_weight.dtype)
        if gate_bias is not None and needs[3]:
            grad_gate_bias = grad_logits.sum(dim=0).to(gate_bias.dtype)
        del grad_logits
        grad_scaled = grad_y.mul_(sigmoid)  # with respect to x̂ ⊙ w
        product = grad_scaled * normed
        grad_norm_weight = product.sum(dim=(0, 1, 2)).to(norm_weight.dtype) if needs[4] else None
        # RMSNorm: do = (1/rms) (dx̂ − x̂ mean(dx̂ ⊙ x̂)), with dx̂ = w ⊙ grad_scaled.
        mean_product = (product @ norm_weight.to(dtype)).unsqueeze(-1).div_(dim_k)  # [B, N, H, 1]
        grad_scaled.mul_(norm_weight).sub_(normed.mul_(mean_product))
        # Laid out in memory as o is (head-major when o is the additive attention's output), so that the op's
        # backward reads it without a copy.
        grad_o = (
            grad_scaled * rstd
            if torch.compiler.is_compiling()
            else torch.mul(grad_scaled, rstd, out=torch.empty_like(o))
        )
        grads = (grad_o, grad_gate_hidden, grad_gate_weight, grad_gate_bias, grad_norm_weight)
        return (*grads, grad_weight, grad_bias, None)


def gated_norm_projection(
    o: Tensor,
    gate_hidden: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor | None,
    norm_weight: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """`plain_gated_norm_projection`, keeping only o, the gate's low-rank hidden and the per-head `1/rms` for the
    backward: the gate's logits (one small matmul) and the gated product, the projection's input, are rebuilt there.
    Returns `[B, N, D_out]`."""
    if torch.compiler.is_exporting():  # an exported graph is differentiated op by op: the twin's ops
        return plain_gated_norm_projection(o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias, eps)
    return _GatedNormProjection.apply(o, gate_hidden, gate_weight, gate_bias, norm_weight, weight, bias, eps)


class _GLUProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias):
        gate, value = hidden.chunk(2, dim=-1)
        ctx.save_for_backward(hidden, weight, bias)
        out = _empty_linear_output(value, weight)  # before the temporary product
        return _linear_into(out, F.silu(gate).mul_(value), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        with _without_autocast(grad_out):
            return _GLUProjection.gradients(ctx, grad_out)

    @staticmethod
    def gradients(ctx, grad_out):
        hidden, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            return _twin_gradients(plain_glu_projection, (hidden, weight, bias), needs, grad_out)
        gate, value = hidden.chunk(2, dim=-1)
        if torch.compiler.is_compiling():
            return _glu_projection_gradients(grad_out, gate, value, weight, bias, needs)
        # Both halves of the gradient go into one buffer (no concatenation); its gate half first holds SiLU(a),
        # needed by both the weight's gradient and the value's, and is overwritten last.
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        grad_gate, grad_value = grad_hidden.chunk(2, dim=-1)
        activated = torch.ops.aten.silu.out(gate, out=grad_gate)  # [..., F]
        grad_out_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_bias = None
        if needs[1]:
            product = (activated * value).reshape(-1, activated.shape[-1]).to(grad_out.dtype)  # rebuilt
            grad_weight = (grad_out_2d.t() @ product).to(weight.dtype)
            del product
        if bias is not None and needs[2]:
            grad_bias = grad_out_2d.sum(dim=0).to(bias.dtype)
        grad_product = (grad_out @ weight.to(grad_out.dtype)).to(hidden.dtype)  # [..., F]
        torch.mul(grad_product, activated, out=grad_value)
        grad_product.mul_(value)
        torch.ops.aten.silu_backward.grad_input(grad_product, gate, grad_input=grad_gate)  # ⊙ SiLU'(a)
        return grad_hidden, grad_weight, grad_bias


def _glu_projection_gradients(grad_out, gate, value, weight, bias, needs):
    # The GLU's backward in out-of-place ops, for torch.compile (which plans the buffers itself).
    activated = F.silu(gate)
    grad_out_2d = grad_out.reshape(-1, grad_out.shape[-1])
    grad_weight = grad_bias = None
    if needs[1]:
        product = (activated * value).reshape(-1, activated.shape[-1]).to(grad_out.dtype)
        grad_weight = (grad_out_2d.t() @ product).to(weight.dtype)
    if bias is not None and needs[2]:
        grad_bias = grad_out_2d.sum(dim=0).to(bias.dtype)
    grad_product = (grad_out @ weight.to(grad_out.dtype)).to(gate.dtype)
    grad_gate = torch.ops.aten.silu_backward(grad_product * value, gate)
    return torch.cat([grad_gate, grad_product * activated], dim=-1), grad_weight, grad_bias


def glu_projection(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`plain_glu_projection`, keeping only `hidden` for the backward (SiLU and the product are rebuilt there)."""
    if torch.compiler.is_exporting():
        return plain_glu_projection(hidden, weight, bias)
    return _GLUProjection.apply(hidden, weight, bias)


class _LayerNormLinears(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, *linears):
        pairs = list(zip(linears[::2], linears[1::2], strict=True))
        outs = [_empty_linear_output(x, w) for w, _ in pairs]  # before the temporary norm output
        # The norm's statistics are not kept either: small tensors kept from here, after the temporary normed x,
        # would pin its memory as a hole under the saved tensors. The backward recomputes all three in one op.
        normed = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)[0]  # [B, N, D]
        if weight is not None:
            normed.mul_(weight)
        if bias is not None:
            normed.add_(bias)
        ctx.save_for_backward(x, weight, bias, *linears)
        ctx.eps = eps
        return tuple(_linear_into(out, normed, w, b) for out, (w, b) in zip(outs, pairs, strict=True))

    @staticmethod
    def backward(ctx, *grad_outs):
        with _without_autocast(grad_outs[0]):
            return _LayerNormLinears.gradients(ctx, *grad_outs)

    @staticmethod
    def gradients(ctx, *grad_outs):
        x, weight, bias, *linears = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            inputs, twin_needs = (x, weight, bias, *linears), (*needs[:3], *needs[4:])
            grads = _twin_gradients(_plain_layer_norm_linears, inputs, twin_needs, grad_outs, ctx.eps)
            return (*grads[:3], None, *grads[3:])
        dim = x.shape[-1]
        normed, mean, rstd = torch.native_layer_norm(x, [dim], None, None, ctx.eps)  # x̂ and its statistics, rebuilt
        affine = _affine(normed, weight, bias)  # the norm's output, rebuilt: the input of every linear map
        grad_linears, grad_affine = [], None
        for grad_out, w, b, need_w, need_b in zip(
            grad_outs, linears[::2], linears[1::2], needs[4::2], needs[5::2], strict=True
        ):
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w = (grad_2d.t() @ affine.reshape(-1, dim).to(grad_out.dtype)).to(w.dtype) if need_w else None
            grad_b = grad_2d.sum(dim=0).to(b.dtype) if need_b and b is not None else None
            grad_linears += [grad_w, grad_b]
            if grad_affine is None:
                grad_affine = grad_out @ w.to(grad_out.dtype)  # [B, N, D]
            else:
                grad_affine.view(-1, dim).addmm_(grad_2d, w.to(grad_out.dtype))
        del affine
        grad_affine = grad_affine.to(normed.dtype)
        grad_bias = grad_affine.sum_to_size(bias.shape).to(bias.dtype) if bias is not None and needs[2] else None
        grad_weight = None
        if weight is not None and needs[1]:
            grad_weight = normed.mul_(grad_affine).sum_to_size(weight.shape).to(weight.dtype)
        grad_x = None
        if needs[0]:
            grad_normed = grad_affine if weight is None else grad_affine.mul_(weight)
            mask = [True, False, False]
            grad_x = torch.ops.aten.native_layer_norm_backward(
                grad_normed.to(x.dtype), x, [dim], mean, rstd, None, None, mask
            )[0]
        return grad_x, grad_weight, grad_bias, None, *grad_linears


class PreNorm(NamedTuple):
    """A LayerNorm to apply before the first linear maps of a branch: `LN(x) ⊙ weight + bias`, each broadcasting
    against x `[B, N, D]` (None: left out). A block's affine norm gives `[D]` ones, adaLN's modulation gives
    `1 + scale` and `shift` as `[B, 1, D]`."""

    weight: Tensor | None
    bias: Tensor | None
    eps: float


def plain_layer_norm_linears(
    x: Tensor, norm: PreNorm, linears: list[tuple[Tensor, Tensor | None]]
) -> tuple[Tensor, ...]:
    """`F.linear(LN(x) ⊙ norm.weight + norm.bias, w, b)` for each `(w, b)` of `linears`."""
    normed = F.layer_norm(x, x.shape[-1:], eps=norm.eps)
    if norm.weight is not None:
        normed = normed * norm.weight
    if norm.bias is not None:
        normed = normed + norm.bias
    return tuple(F.linear(normed, w, b) for w, b in linears)


def _plain_layer_norm_linears(x, weight, bias, *linears_and_eps):
    # plain_layer_norm_linears with the arguments in the autograd function's flat order (the twin of its backward).
    *linears, eps = linears_and_eps
    return plain_layer_norm_linears(x, PreNorm(weight, bias, eps), list(zip(linears[::2], linears[1::2], strict=True)))


def layer_norm_linears(x: Tensor, norm: PreNorm, linears: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, ...]:
    """`plain_layer_norm_linears`, keeping only x for the backward: the norm's output, the input of every linear map,
    is rebuilt there (with its statistics). One output `[B, N, D_out]` per linear map."""
    if torch.compiler.is_exporting():
        return plain_layer_norm_linears(x, norm, linears)
    flat = [tensor for pair in linears for tensor in pair]
    return _LayerNormLinears.apply(x, norm.weight, norm.bias, norm.eps, *flat)


def _empty_linear_output(x: Tensor, weight: Tensor) -> Tensor:
    # The output `[..., D_out]` of F.linear(x, weight), in the dtype it would have (autocast's, if enabled).
    device = x.device.type
    dtype = (
        torch.get_autocast_dtype(device)
        if torch.is_autocast_enabled(device)
        else torch.promote_types(x.dtype, weight.dtype)
    )
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=dtype, device=x.device)


def _linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # F.linear(x, weight, bias) written into `out`, which was allocated before the temporary x (module docstring).
    x_2d, out_2d = x.reshape(-1, x.shape[-1]).to(out.dtype), out.view(-1, out.shape[-1])
    weight_t = weight.to(out.dtype).t()
    if bias is None:
        torch.mm(x_2d, weight_t, out=out_2d)
    else:
        torch.addmm(bias.to(out.dtype), x_2d, weight_t, out=out_2d)
    return out


def _affine(normed: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    # normed ⊙ weight + bias as a new tensor (normed itself without either).
    if weight is not None and bias is not None:
        return torch.addcmul(bias, normed, weight)
    if weight is not None:
        return normed * weight
    return normed if bias is None else normed + bias


def _without_autocast(grad: Tensor) -> torch.autocast:
    # The backward in the dtypes it chooses itself, also when it is called inside an autocast region.
    return torch.autocast(grad.device.type, enabled=False)


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Norm statistics and the gated product in fp32 at least, whatever the activations' dtype.
    return torch.promote_types(x.dtype, torch.float32)


def _inverse_rms(x: Tensor, dtype: torch.dtype, eps: float) -> Tensor:
    # 1 / sqrt(mean(x²) + eps) over the last dim, [..., 1], from one reduction (no x² tensor).
    squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype).square_().div_(x.shape[-1])
    return squares.add_(eps).rsqrt_()


def _twin_gradients(plain, inputs: tuple, needs: tuple, grad_out, *options) -> tuple[Tensor | None, ...]:
    # Gradients of the plain twin at the saved inputs, with a graph (create_graph=True): a differentiated backward.
    # grad_out is one gradient, or a tuple of them for a twin with several outputs.
    wanted = [x for x, need in zip(inputs, needs, strict=True) if need]
    grads = iter(torch.autograd.grad(plain(*inputs, *options), wanted, grad_out, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)
