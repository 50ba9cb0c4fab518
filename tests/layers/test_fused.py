"""The block's autograd functions that keep only their inputs (layers/fused.py) against their plain twins: outputs,
every gradient, second derivatives, what the backward keeps; and the lean blocks against the plain composition."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.saved_bytes import saved_bytes
from lightnet_vision.kernels.additive.naive import naive_additive_attention
from lightnet_vision.layers import MDLRPE, LightNetBlock, LightNetDiTBlock, fused
from lightnet_vision.layers.adaln import modulate
from lightnet_vision.layers.fused import PreNorm


def gated_norm_projection_inputs(dtype=torch.float32, batch=2, n=63, heads=3, head_dim=8, rank=8, out=20):
    dim = heads * head_dim
    tensors = [
        torch.randn(batch, n, heads, head_dim) * 2,  # o
        torch.randn(batch, n, rank),  # the gate's low-rank hidden
        torch.randn(dim, rank) / rank**0.5,  # gate_weight
        torch.randn(dim),  # gate_bias
        torch.rand(head_dim) + 0.5,  # norm_weight
        torch.randn(out, dim) / dim**0.5,  # weight
        torch.randn(out),  # bias
    ]
    return [t.to(dtype).requires_grad_() for t in tensors], (1e-5,)


def glu_projection_inputs(dtype=torch.float32, batch=2, n=63, hidden=20, out=12):
    tensors = [torch.randn(batch, n, 2 * hidden) * 2, torch.randn(out, hidden) / hidden**0.5, torch.randn(out)]
    return [t.to(dtype).requires_grad_() for t in tensors], ()


def layer_norm_linears_inputs(dtype=torch.float32, batch=2, n=63, dim=16, affine="channels"):
    # affine: "channels" (a block's LayerNorm, [D]), "samples" (adaLN's modulation, [B, 1, D]) or "none".
    x = torch.randn(batch, n, dim) * 3 + 1
    shape = {"channels": (dim,), "samples": (batch, 1, dim)}.get(affine)
    weight = None if shape is None else torch.rand(shape) + 0.5
    bias = None if shape is None else torch.randn(shape)
    # Two maps, the second without a bias (as qkv and the gate's first map share the attention's norm).
    linears = [torch.randn(24, dim) / dim**0.5, torch.randn(24), torch.randn(5, dim) / dim**0.5, None]
    tensors = [x, weight, bias, *linears]
    return [None if t is None else t.to(dtype).requires_grad_() for t in tensors], (1e-5,)


def call_gated_norm_projection(function, *args):
    return function(*args)


def call_layer_norm_linears(function, x, weight, bias, *rest):
    *linears, eps = rest
    pairs = list(zip(linears[::2], linears[1::2], strict=True))
    return function(x, PreNorm(weight, bias, eps), pairs)


# name: (fused, plain twin, inputs, how to call either, the autograd function)
CASES = {
    "gated_norm_projection": (
        fused.gated_norm_projection,
        fused.plain_gated_norm_projection,
        gated_norm_projection_inputs,
        call_gated_norm_projection,
        fused._GatedNormProjection,
    ),
    "glu_projection": (
        fused.glu_projection,
        fused.plain_glu_projection,
        glu_projection_inputs,
        call_gated_norm_projection,
        fused._GLUProjection,
    ),
    "layer_norm_linears": (
        fused.layer_norm_linears,
        fused.plain_layer_norm_linears,
        layer_norm_linears_inputs,
        call_layer_norm_linears,
        fused._LayerNormLinears,
    ),
}


def outputs_and_gradients(function, call, inputs, options, seed=1):
    """Every output of `call(function, *inputs, *options)` and the gradient of every input that requires one, for a
    fixed random weighting of the outputs."""
    inputs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    outputs = call(function, *inputs, *options)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outputs]
    wanted = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(outputs, wanted, weights)
    return [o.detach() for o in outputs], list(grads)


def mismatches(fast, plain, ratio=1e-5):
    """Names of the outputs and gradients whose relative RMSE against the twin's exceeds `ratio`."""
    (fast_outs, fast_grads), (plain_outs, plain_grads) = fast, plain
    names = [f"output {i}" for i in range(len(fast_outs))] + [f"gradient {i}" for i in range(len(fast_grads))]
    found = []
    for name, a, b in zip(names, fast_outs + fast_grads, plain_outs + plain_grads, strict=True):
        error = (a.double() - b.double()).pow(2).mean().sqrt()
        scale = b.double().pow(2).mean().sqrt()
        if not torch.isfinite(a).all() or error > ratio * scale + 1e-12:
            found.append(name)
    return found


def variants(name):
    # The layer-norm maps with each kind of affine.
    if name == "layer_norm_linears":
        return [{"affine": affine} for affine in ("channels", "samples", "none")]
    return [{}]


@pytest.mark.parametrize("name", list(CASES))
def test_fused_equals_its_plain_twin(name):
    function, plain, make_inputs, call, _ = CASES[name]
    for kwargs in variants(name):
        inputs, options = make_inputs(**kwargs)
        fast = outputs_and_gradients(function, call, inputs, options)
        reference = outputs_and_gradients(plain, call, inputs, options)
        assert mismatches(fast, reference) == [], f"{name} {kwargs}"


@pytest.mark.parametrize("name", list(CASES))
def test_fused_passes_gradcheck_and_gradgradcheck_in_float64(name):
    function, _, make_inputs, call, _ = CASES[name]
    for kwargs in variants(name):
        inputs, options = make_inputs(dtype=torch.float64, batch=2, n=3, **kwargs)
        present = [t for t in inputs if t is not None]

        def fn(*tensors, inputs=inputs, options=options):
            tensors = iter(tensors)
            full = [None if t is None else next(tensors) for t in inputs]
            return call(function, *full, *options)

        assert torch.autograd.gradcheck(fn, present), f"{name} {kwargs}"
        # Second derivatives go through the plain twin (create_graph=True), so they must be exact too.
        assert torch.autograd.gradgradcheck(fn, present), f"{name} {kwargs}"


@pytest.mark.parametrize("name", list(CASES))
def test_the_comparison_catches_a_planted_bug_in_any_gradient(name, monkeypatch):
    # A backward that gets one gradient (or the output) 0.1% wrong must fail the comparison above: the test is
    # sensitive to every input's gradient, including the small ones (biases, norm weights).
    function, plain, make_inputs, call, autograd_function = CASES[name]
    inputs, options = make_inputs()
    reference = outputs_and_gradients(plain, call, inputs, options)
    count = sum(t is not None for t in inputs)
    backward, forward = autograd_function.backward, autograd_function.forward
    for planted in range(-1, count):
        if planted == -1:

            def wrong_forward(ctx, *args):
                result = forward(ctx, *args)
                if isinstance(result, tuple):
                    return (result[0] * 1.001, *result[1:])
                return result * 1.001

            monkeypatch.setattr(autograd_function, "forward", staticmethod(wrong_forward))
        else:
            position = [i for i, t in enumerate(inputs) if t is not None][planted]
            # The autograd function takes eps after the norm's weight and bias, before the linear maps.
            position += 1 if name == "layer_norm_linears" and position >= 3 else 0

            def wrong_backward(ctx, *grads, position=position):
                result = list(backward(ctx, *grads))
                result[position] = result[position] * 1.001
                return tuple(result)

            monkeypatch.setattr(autograd_function, "backward", staticmethod(wrong_backward))
        fast = outputs_and_gradients(function, call, inputs, options)
        expected = "output 0" if planted == -1 else f"gradient {planted}"
        assert mismatches(fast, reference) == [expected]
        monkeypatch.undo()


@pytest.mark.parametrize("name", list(CASES))
def test_the_backward_keeps_only_the_inputs(name):
    # What autograd keeps for the fused function is the storage of its inputs (and, for the gated norm, the small
    # per-head 1/rms); the plain twin keeps more.
    function, plain, make_inputs, call, _ = CASES[name]
    inputs, options = make_inputs()
    fused_bytes = saved_bytes(lambda: call(function, *inputs, *options))
    plain_bytes = saved_bytes(lambda: call(plain, *inputs, *options))
    activations = {
        "gated_norm_projection": inputs[:2],  # o and the gate's hidden
        "glu_projection": inputs[:1],
        "layer_norm_linears": inputs[:1],
    }[name]
    parameters = [t for t in inputs if t is not None and all(t is not a for a in activations)]
    expected = sum(t.untyped_storage().nbytes() for t in activations + parameters)
    if name == "gated_norm_projection":
        expected += inputs[0][..., :1].numel() * 4  # 1/rms per head, [B, N, H, 1]
    assert fused_bytes == expected
    assert plain_bytes > fused_bytes


def plain_lightnet_block(block: LightNetBlock, x, angles, shift_scale_gate=None):
    """A LightNet block (or, with `shift_scale_gate`, a LightNet-DiT block) as the plain composition of PyTorch ops on
    its own parameters, with the dense twin of the additive attention."""
    attn, mlp = block.attn, block.mlp
    batch, n, dim = x.shape
    if shift_scale_gate is None:
        norms = [block.norm1, block.norm2]
        gates = [1.0, 1.0]
    else:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = shift_scale_gate
        norms = [
            lambda y: modulate(block.norm1(y), shift_a, scale_a),
            lambda y: modulate(block.norm2(y), shift_m, scale_m),
        ]
        gates = [gate_a[:, None], gate_m[:, None]]
    h = norms[0](x)
    q, k, v = attn.qkv(h).reshape(batch, n, 3, attn.num_heads, attn.head_dim).unbind(2)
    o = naive_additive_attention(F.silu(q), k, v, angles=angles, lrpe=attn.lrpe)
    o = attn.out_norm(o).reshape(batch, n, dim)
    x = x + gates[0] * attn.proj(o * torch.sigmoid(attn.gate(h)))
    gate, value = mlp.up(norms[1](x)).chunk(2, dim=-1)
    return x + gates[1] * mlp.down(F.silu(gate) * value)


def randomise(module):
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3 + (1.0 if parameter.dim() == 1 else 0.0))


@pytest.mark.parametrize("lrpe", ["rotary", "cosine"])
@pytest.mark.parametrize("kind", ["classifier", "denoiser"])
def test_lean_block_equals_the_plain_composition(kind, lrpe):
    # Outputs, the input's gradient and every parameter's gradient of the block as built (norms inside the first
    # projections, SiLU inside the op, gate and GLU functions) against the same maths in plain ops, in float64.
    dim, heads, grid = 24, 3, (7, 9)
    extra = 1 if kind == "denoiser" else 0
    block = LightNetBlock(dim, heads, lrpe=lrpe) if kind == "classifier" else LightNetDiTBlock(dim, heads, lrpe=lrpe)
    randomise(block.double())
    angles = MDLRPE(dim // heads, form=lrpe)(grid, num_extra_tokens=extra).double()
    x = torch.randn(2, grid[0] * grid[1] + extra, dim, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, dim, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, grid[0] * grid[1] + extra, dim, dtype=torch.float64)
    parameters = list(block.parameters())

    def run(lean: bool):
        if kind == "classifier":
            out = block(x, angles) if lean else plain_lightnet_block(block, x, angles)
        else:
            modulation = block.adaLN_modulation(c).chunk(6, dim=-1)
            out = block(x, c, angles) if lean else plain_lightnet_block(block, x, angles, modulation)
        inputs = [x, *parameters] if kind == "classifier" else [x, c, *parameters]
        return out.detach(), torch.autograd.grad((out * weights).sum(), inputs)

    (out, grads), (expected, expected_grads) = run(lean=True), run(lean=False)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["classifier", "denoiser"])
def test_lean_block_under_bf16_autocast_follows_the_plain_composition(kind):
    # Under autocast the projections run in bf16 in the forward; the backward, which runs outside the autocast
    # region, must rebuild what it needs in the same dtypes (a recomputed projection in fp32 against a bf16 hidden
    # would raise) and give the gradients of the plain composition to bf16's precision.
    dim, heads, grid = 32, 2, (4, 5)
    extra = 1 if kind == "denoiser" else 0
    block = LightNetBlock(dim, heads, lrpe="rotary") if kind == "classifier" else LightNetDiTBlock(dim, heads)
    if kind == "denoiser":
        randomise(block.adaLN_modulation)  # zero at initialisation: the branches would not count
    # At initialisation the attention's output is small, where the per-head norm's eps matters.
    angles = MDLRPE(dim // heads, form=block.attn.lrpe)(grid, num_extra_tokens=extra)
    x = torch.randn(2, grid[0] * grid[1] + extra, dim, requires_grad=True)
    c = torch.randn(2, dim)
    parameters = list(block.parameters())

    def run(lean: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if kind == "classifier":
                out = block(x, angles) if lean else plain_lightnet_block(block, x, angles)
            else:
                modulation = block.adaLN_modulation(c).chunk(6, dim=-1)
                out = block(x, c, angles) if lean else plain_lightnet_block(block, x, angles, modulation)
        return out.float(), torch.autograd.grad(out.float().square().mean(), [x, *parameters])

    (out, grads), (expected, expected_grads) = run(lean=True), run(lean=False)
    assert mismatches(([out], list(grads)), ([expected], list(expected_grads)), ratio=3e-2) == []
    assert all(g.dtype == p.dtype for g, p in zip(grads[1:], parameters, strict=True))
