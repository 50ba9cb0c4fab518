"""The Triton kernels of the additive attention (non-causal and causal) against the dense twin: outputs, gradients.

Without a GPU the kernels run through Triton's interpreter (`TRITON_INTERPRET=1`, set below before Triton is imported).
"""

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads the flag when a kernel is defined, i.e. when the kernel module is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip(
    "triton", reason="Triton is not installed: the fused kernels cannot be built or interpreted"
)

from test_additive_attention import RATIO, assert_close, make_inputs, rmse  # noqa: E402

from lightnet_vision.kernels import additive_attention  # noqa: E402
from lightnet_vision.kernels.additive import pytorch as additive_pytorch  # noqa: E402
from lightnet_vision.kernels.additive import triton_causal, triton_noncausal  # noqa: E402
from lightnet_vision.kernels.additive.naive import naive_additive_attention, rotate_pairs  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    # Every buffer the kernels fill starts as NaN: an element a kernel forgets to write fails the finiteness checks.
    monkeypatch.setattr(triton_noncausal, "POISON_OUTPUTS", True)


def run_triton_and_naive(q, k, v, angles=None, do=None, causal=False):
    """Output and (dq, dk, dv) of the Triton path and of the fp32 (or wider) dense reference, for one `do`."""
    q, k, v = (x.detach().to(DEVICE).requires_grad_() for x in (q, k, v))
    angles = None if angles is None else angles.to(DEVICE)
    do = torch.randn(v.shape, device=DEVICE).to(v.dtype) if do is None else do.to(DEVICE)
    out = additive_attention(q, k, v, causal=causal, angles=angles, impl="triton")
    out.backward(do)
    ref_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    ref_inputs = [x.detach().to(ref_dtype).requires_grad_() for x in (q, k, v)]
    ref = naive_additive_attention(*ref_inputs, causal=causal, angles=angles)
    ref.backward(do.to(ref_dtype))
    return (out, q.grad, k.grad, v.grad), (ref, *(x.grad for x in ref_inputs))


def key_gradient_floor(ratio: float, q, k, v, do) -> float:
    """An absolute floor for the error of dk, on the scale of the terms it is the difference of.

    `dk = k̄ ⊙ (dk̄ − Σ_n k̄ dk̄)` with `dk̄ = v (q̃ᵀ do)ᵀ` of typical size rms(v) rms(q) rms(do) √(N V), so the terms
    are of size rms(k̄) times that; the rounding of bf16/TF32 products is relative to them, not to dk. With one token
    the exact dk is 0 (a softmax over one token has no gradient) and the kernels leave ~1e-4 of that scale: a floor
    of `ratio` times it still fails on a wrong correction term, or on dk = 0 with more tokens, whose errors are of
    the order of the scale itself.
    """
    n, dim_v = v.shape[1], v.shape[-1]
    k_bar = k.detach().float().softmax(dim=1)
    return ratio * rmse(k_bar) * rmse(q) * rmse(v) * rmse(do) * (n * dim_v) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
@pytest.mark.parametrize(("k", "v"), [(16, 16), (5, 7)], ids=["k16v16", "k5v7"])
@pytest.mark.parametrize(("b", "n", "h"), [(2, 1, 2), (2, 63, 2), (1, 257, 1)], ids=["n1", "n63", "n257"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.slow
def test_matches_naive(causal, b, n, h, k, v, use_angles, dtype):
    q, key, value = make_inputs(b, n, h, k, v, dtype)
    angles = torch.rand(n, k) * 6.3 if use_angles else None
    do = torch.randn(b, n, h, v).to(dtype)
    outs, refs = run_triton_and_naive(q, key, value, angles, do=do, causal=causal)
    assert outs[0].shape == (b, n, h, v) and outs[0].dtype == dtype
    floors = {"dk": key_gradient_floor(RATIO[dtype], q, key, value, do)}
    for name, ref, out, x in zip(["o", "dq", "dk", "dv"], refs, outs, (value, q, key, value), strict=True):
        assert out.dtype == x.dtype, f"{name} has dtype {out.dtype}"
        assert_close(name, ref, out, RATIO[dtype], atol=floors.get(name, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.slow
def test_several_tiles_match_naive(causal, dtype):
    # K = 40 and V = 72 are cut into several tiles by every kernel: the state tiles and the V tiles of the output
    # (non-causal), K tiles of the gradients, K and V tiles whose partial sums the host adds (causal).
    dim_k, dim_v = 40, 72
    configs = [
        triton_noncausal.launch_config(name, dim_k, dim_v, dtype) for name in ("state", "apply", "apply_transposed")
    ]
    configs += [triton_causal.launch_config(name, dim_k, dim_v, dtype) for name in ("forward", "dq", "dk", "dv")]
    assert all(triton.cdiv(dim_k, c.bk) > 1 or triton.cdiv(dim_v, c.bv) > 1 for c in configs)
    q, key, value = make_inputs(1, 37, 2, dim_k, dim_v, dtype)
    outs, refs = run_triton_and_naive(q, key, value, torch.rand(37, dim_k) * 6.3, causal=causal)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out, RATIO[dtype])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("logits", ["randn", "plus_minus"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.slow
def test_extreme_logits(dtype, logits, causal):
    b, n, h, k, v = 1, 50, 2, 8, 4
    q, _, value = make_inputs(b, n, h, k, v, dtype)
    if logits == "randn":
        raw = (torch.randn(b, n, h, k) * 1e4).clamp(-3e4, 3e4)  # within the fp16 range
    else:
        raw = torch.where(torch.rand(b, n, h, k) < 0.5, 1e4, -1e4) + torch.randn(b, n, h, k)
    angles = torch.rand(n, k) * 6.3
    outs, refs = run_triton_and_naive(q, raw.to(dtype), value, angles, causal=causal)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert torch.isfinite(ref).all(), f"reference {name} is not finite"
        # Nearly one-hot softmaxes make the exact dk ~0: judge its error on the scale of dv instead of its own.
        atol = 2e-2 * rmse(refs[3]) if name == "dk" else 1e-6
        assert_close(name, ref, out, 2e-2, atol=atol)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.slow
def test_extreme_logits_key_gradient_precision(causal):
    # fp32 inputs, float64 truth: the fp32 normaliser is kept as (max, log-sum), so large logits keep precise dk.
    q, key, value = make_inputs(2, 50, 2, 8, 4, torch.float32, key_scale=1e4)
    do = torch.randn(2, 50, 2, 4)
    outs, _ = run_triton_and_naive(q, key, value, do=do, causal=causal)
    ref_inputs = [x.detach().double().requires_grad_() for x in (q, key, value)]
    naive_additive_attention(*ref_inputs, causal=causal).backward(do.double())
    assert_close("dk", ref_inputs[1].grad, outs[2].cpu(), 2e-2)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
@pytest.mark.slow
def test_padded_tokens_contribute_nothing(use_angles, causal):
    b, n, h, k, v = 1, 20, 2, 6, 5
    q, key, value = (x.detach() for x in make_inputs(b, n, h, k, v, torch.float32))
    padded = torch.zeros(n, dtype=torch.bool)
    # The causal normaliser needs a real first token.
    padded[[3, 4, 11, 16, 19] if causal else [0, 3, 4, 11, 19]] = True
    key = key.masked_fill(padded[None, :, None, None], float("-inf"))
    angles = torch.rand(n, k) * 6.3 if use_angles else None
    outs, refs = run_triton_and_naive(q, key, value, angles, causal=causal)
    # The dense twin agrees on the output and every gradient; its dk and dv at -inf logits are 0 as well.
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out.cpu(), 1e-5)
    dk, dv = outs[2].cpu(), outs[3].cpu()
    assert (dk[:, padded] == 0).all() and (dv[:, padded] == 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.slow
def test_non_contiguous_inputs(causal):
    base = make_inputs(2, 33, 2, 12, 12, torch.float32)
    # Every other head dim: strided views the op must not read as if they were contiguous.
    q, key, value = (x.detach()[..., ::2] for x in base)
    assert not q.is_contiguous()
    outs, refs = run_triton_and_naive(q, key, value, torch.rand(33, 6) * 6.3, causal=causal)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out.cpu(), 1e-5)


def run_split_and_naive(q, k, v, angles, num_splits, lrpe="cosine", do=None):
    """`run_triton_and_naive` for the non-causal kernel with a fixed number of programs along the tokens."""
    q, k, v = (x.detach().to(DEVICE).requires_grad_() for x in (q, k, v))
    angles = None if angles is None else angles.to(DEVICE)
    do = torch.randn(v.shape, device=DEVICE).to(v.dtype) if do is None else do.to(DEVICE)
    out = triton_noncausal.noncausal_additive_attention(q, k, v, angles, lrpe=lrpe, num_splits=num_splits)
    out.backward(do)
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = naive_additive_attention(*ref_inputs, angles=angles, lrpe=lrpe)
    ref.backward(do.float())
    return (out, q.grad, k.grad, v.grad), (ref, *(x.grad for x in ref_inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_splits", [2, 3, 5, 100])
@pytest.mark.slow
def test_token_splits_match_naive(num_splits, dtype):
    # 257 tokens are 17 blocks of 16: splits of 9 and 8 blocks, 6, 4 (and 1) blocks, and more splits than blocks.
    q, key, value = make_inputs(2, 257, 1, 10, 6, dtype)
    outs, refs = run_split_and_naive(q, key, value, torch.rand(257, 10) * 6.3, num_splits)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out.cpu(), RATIO[dtype])


@pytest.mark.slow
def test_token_splits_with_a_split_of_padded_keys_only():
    # The first split sees nothing but -inf keys in every channel: the merge must give it weight 0, not NaN.
    q, key, value = (x.detach() for x in make_inputs(1, 200, 2, 8, 8, torch.float32))
    key[:, :70] = float("-inf")
    key[:, 150:] -= 50.0  # far below the first split's fallback reference of 0
    outs, refs = run_split_and_naive(q, key, value, None, num_splits=4)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out.cpu(), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("n", "dim_k", "dim_v", "num_splits"), [(63, 16, 8, None), (257, 16, 8, 3), (257, 40, 24, 2), (1, 8, 5, None)]
)
@pytest.mark.slow
def test_rotary_matches_naive(n, dim_k, dim_v, num_splits, dtype):
    # Rotary MD-LRPE through the cosine-form kernels and the host maps of the states, against the dense twin that
    # turns channel pairs with 2x2 rotations. The cosine form of the duplicated angles gives another output. One
    # token of bf16 has an exact dk of 0 again.
    q, key, value = make_inputs(2, n, 2, dim_k, dim_v, dtype)
    angles = torch.rand(n, dim_k // 2) * 6.3
    do = torch.randn(2, n, 2, dim_v).to(dtype)
    outs, refs = run_split_and_naive(q, key, value, angles, num_splits, lrpe="rotary", do=do)
    floors = {"dk": key_gradient_floor(RATIO[dtype], q, key, value, do)}
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out, RATIO[dtype], atol=floors.get(name, 1e-6))
    if n > 1:  # with one token every offset is 0, where both forms agree
        cosine = naive_additive_attention(q.float(), key.float(), value.float(), angles=torch.cat([angles, angles], -1))
        assert rmse(cosine - refs[0].cpu()) > 1e-2 * rmse(refs[0])


def test_rotary_pairs_maps_the_cosine_state_to_the_rotary_product():
    # The host map in float64: [q cos Θ', q sin Θ'] T = rot(q) S with Θ' = [Θ, Θ], T = rotary_pairs(C), and the map
    # is its own adjoint, which is why it also takes dT back to the gradient of C.
    n, dim_k, dim_v = 7, 6, 5
    q, v = torch.randn(n, dim_k, dtype=torch.float64), torch.randn(n, dim_v, dtype=torch.float64)
    k_bar = torch.rand(n, dim_k, dtype=torch.float64)
    theta = torch.rand(n, dim_k // 2, dtype=torch.float64) * 6.3
    full = torch.cat([theta, theta], dim=-1)  # [N, K]
    c = torch.stack([(k_bar * full.cos()).T @ v, (k_bar * full.sin()).T @ v])  # [2, K, V]
    t = triton_noncausal.rotary_pairs(c)
    turned_q, turned_k = (rotate_pairs(x[None, :, None], theta)[0, :, 0] for x in (q, k_bar))  # [N, K]
    torch.testing.assert_close((q * full.cos()) @ t[0] + (q * full.sin()) @ t[1], turned_q @ (turned_k.T @ v))
    d = torch.randn_like(c)
    torch.testing.assert_close(
        (triton_noncausal.rotary_pairs(c) * d).sum(), (c * triton_noncausal.rotary_pairs(d)).sum()
    )


def test_rotary_public_op_matches_naive():
    q, key, value = make_inputs(1, 20, 2, 8, 6, torch.float32)
    angles = torch.rand(20, 4) * 6.3
    out = additive_attention(
        *(x.detach().to(DEVICE) for x in (q, key, value)), angles=angles.to(DEVICE), lrpe="rotary", impl="triton"
    )
    ref = naive_additive_attention(q.detach(), key.detach(), value.detach(), angles=angles, lrpe="rotary")
    assert_close("o", ref, out, 1e-5)


def test_rotary_needs_pairs_of_channels_and_half_angles():
    q, key, value = (x.detach().to(DEVICE) for x in make_inputs(1, 8, 1, 6, 4, torch.float32))
    with pytest.raises(ValueError, match="K/2"):
        triton_noncausal.noncausal_additive_attention(q, key, value, torch.rand(8, 6, device=DEVICE), lrpe="rotary")
    odd = [x.detach().to(DEVICE) for x in make_inputs(1, 8, 1, 5, 4, torch.float32)]
    with pytest.raises(ValueError, match="even"):
        triton_noncausal.noncausal_additive_attention(*odd, torch.rand(8, 2, device=DEVICE), lrpe="rotary")
    with pytest.raises(ValueError, match="lrpe"):
        triton_noncausal.noncausal_additive_attention(q, key, value, lrpe="learned")


def test_causal_rotary_is_not_implemented():
    q, key, value = (x.detach().to(DEVICE) for x in make_inputs(1, 8, 1, 4, 4, torch.float32))
    with pytest.raises(NotImplementedError, match="rotary"):
        triton_causal.causal_additive_attention(q, key, value, torch.rand(8, 2, device=DEVICE), lrpe="rotary")


@pytest.mark.parametrize(
    ("n", "num_splits", "expected"),
    [(1, None, (64, 1)), (257, 1, (320, 1)), (257, 2, (192, 2)), (257, 3, (128, 3)), (257, 9, (64, 5))],
)
def test_token_splits_cover_the_sequence_in_whole_blocks(n, num_splits, expected):
    tokens_per_split, splits = triton_noncausal.token_splits(n, 4, 64, torch.device("cpu"), num_splits)
    assert (tokens_per_split, splits) == expected
    assert tokens_per_split % 64 == 0 and (splits - 1) * tokens_per_split < n <= splits * tokens_per_split


def test_merge_of_partial_states_equals_one_pass():
    # Partials of 3 splits, built by hand in float64, merge into softmax_N(k)ᵀ v and its log-sum-exp.
    k, v = torch.randn(30, 4, dtype=torch.float64) * 5, torch.randn(30, 3, dtype=torch.float64)
    parts = [slice(0, 7), slice(7, 20), slice(20, 30)]
    part_max = torch.stack([k[s].amax(0) for s in parts])[None]  # [1, 3, K]
    part_sum = torch.stack([(k[s] - k[s].amax(0)).exp().sum(0) for s in parts])[None]
    part_state = torch.stack([((k[s] - k[s].amax(0)).exp().T @ v[s]) for s in parts])
    part_state = torch.stack([part_state, torch.zeros_like(part_state)], dim=1)[None]  # [1, 3, 2, K, V]
    state, row_max, log_sum = triton_noncausal.merge_partial_states(part_max, part_sum, part_state)
    torch.testing.assert_close(state[0, 0], k.softmax(0).T @ v)
    torch.testing.assert_close(row_max[0] + log_sum[0], k.logsumexp(0))


def test_poisoned_buffers_start_as_nan():
    # The hook the autouse fixture relies on: without it a missed write could read back stale zeros.
    buffer = triton_noncausal._empty((3, 4), torch.empty(0), torch.bfloat16)
    assert buffer.isnan().all()


@pytest.mark.parametrize("n", [15, 16, 17, 32, 33])
def test_causal_chunk_boundaries(n):
    # Sequences that end just before, at and just after a boundary of the kernel's chunks.
    assert triton_causal.CHUNK_SIZE == 16, "the lengths above are chosen around multiples of the chunk size"
    q, key, value = make_inputs(1, n, 1, 6, 5, torch.float32)
    outs, refs = run_triton_and_naive(q, key, value, torch.rand(n, 6) * 6.3, causal=True)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out.cpu(), 1e-5)


def test_angle_gradient_is_not_implemented():
    q, key, value = make_inputs(1, 8, 1, 4, 4, torch.float32)
    angles = torch.rand(8, 4).requires_grad_()
    with pytest.raises(NotImplementedError, match="angles"):
        additive_attention(q, key, value, angles=angles, impl="triton")


def test_unknown_impl_raises():
    q, key, value = make_inputs(1, 8, 1, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="impl"):
        additive_attention(q, key, value, impl="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of impl='auto'")
def test_auto_stays_on_pytorch_for_cpu_tensors(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("impl='auto' sent CPU tensors to the Triton kernel")

    monkeypatch.setattr(triton_noncausal, "noncausal_additive_attention", fail)
    q, key, value = (x.detach() for x in make_inputs(1, 9, 2, 4, 3, torch.float32))
    assert_close("o", naive_additive_attention(q, key, value), additive_attention(q, key, value), 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="impl='auto' picks Triton only for CUDA tensors")
def test_auto_uses_triton_on_cuda(monkeypatch):
    # Dispatch seen through the public op: the non-causal kernel is called for what "auto" supports, and only then.
    calls = []
    kernel = triton_noncausal.noncausal_additive_attention

    def record(*args, **kwargs):
        calls.append(args[0].dtype)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(triton_noncausal, "noncausal_additive_attention", record)
    q, key, value = (x.detach().cuda() for x in make_inputs(1, 9, 2, 4, 3, torch.float32))
    angles = torch.rand(9, 4, device="cuda")
    out = additive_attention(q, key, value, angles=angles)
    assert calls == [torch.float32], "fp32 CUDA tensors with fixed angles should reach the Triton kernel"
    assert_close("o", naive_additive_attention(q, key, value, angles=angles), out, 1e-5)
    additive_attention(q.bfloat16(), key.bfloat16(), value.bfloat16())
    assert calls[1:] == [torch.bfloat16]
    # Angles that need a gradient, fp64 tensors and causal calls stay on PyTorch.
    additive_attention(q, key, value, angles=angles.clone().requires_grad_())
    additive_attention(q.double(), key.double(), value.double())
    additive_attention(q, key, value, causal=True)
    assert len(calls) == 2


@pytest.fixture
def auto_takes_triton(monkeypatch):
    """impl="auto" sends these test tensors to the Triton kernels (on CPU: through the interpreter), with a clean
    record of failed shape classes."""
    monkeypatch.setattr(additive_pytorch, "_triton_supports", lambda *args: True)
    monkeypatch.setattr(additive_pytorch, "_TRITON_FAILED", set())


def out_of_resources(*args, **kwargs):
    raise RuntimeError("out of resource: shared memory, Required: 425984, Hardware limit: 232448")


@pytest.mark.parametrize("lrpe", ["cosine", "rotary"])
@pytest.mark.slow
def test_second_derivatives_through_the_triton_path(lrpe):
    # A gradient penalty (create_graph=True) through impl="triton" equals the PyTorch path's: the backward of the
    # kernels is differentiated through the PyTorch path rather than returning a wrong number.
    q, key, value = (x.detach().to(DEVICE) for x in make_inputs(2, 40, 2, 8, 8, torch.float32))
    angles = (torch.rand(40, 8 if lrpe == "cosine" else 4) * 6.3).to(DEVICE)
    results = []
    for impl in ("triton", "torch"):
        inputs = [x.clone().requires_grad_() for x in (q, key, value)]
        out = additive_attention(*inputs, angles=angles, lrpe=lrpe, impl=impl)
        (grad_q,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
        results.append(torch.autograd.grad(grad_q.square().sum(), inputs))
    for name, triton_grad, torch_grad in zip(["dq", "dk", "dv"], *results, strict=True):
        assert_close(name, torch_grad, triton_grad, 1e-4)


def test_auto_falls_back_when_the_forward_kernels_fail(monkeypatch, auto_takes_triton):
    monkeypatch.setattr(triton_noncausal, "additive_fwd", out_of_resources)
    q, key, value = (x.detach() for x in make_inputs(1, 9, 2, 4, 3, torch.float32))
    with pytest.warns(RuntimeWarning, match=r"K=4, V=3.*out of resource"):
        out = additive_attention(q, key, value)
    assert_close("o", naive_additive_attention(q, key, value), out, 1e-5)

    # The failed shape class is not tried again (no second warning), and impl="triton" still raises.
    calls = []
    monkeypatch.setattr(triton_noncausal, "additive_fwd", lambda *args, **kwargs: calls.append(args) or 1 / 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        additive_attention(q, key, value)
    assert calls == []
    with pytest.raises(ZeroDivisionError):
        additive_attention(q, key, value, impl="triton")


def test_auto_falls_back_when_the_backward_kernels_fail(monkeypatch, auto_takes_triton):
    monkeypatch.setattr(triton_noncausal, "additive_bwd", out_of_resources)
    q, key, value = make_inputs(2, 20, 2, 8, 4, torch.float32)
    angles = torch.rand(20, 4) * 6.3
    do = torch.randn(2, 20, 2, 4)
    with pytest.warns(RuntimeWarning, match="out of resource"):
        additive_attention(q, key, value, angles=angles, lrpe="rotary").backward(do)
    reference = [x.detach().requires_grad_() for x in (q, key, value)]
    naive_additive_attention(*reference, angles=angles, lrpe="rotary").backward(do)
    for name, x, ref in zip(["dq", "dk", "dv"], (q, key, value), reference, strict=True):
        assert_close(name, ref.grad, x.grad, 1e-5)


@pytest.mark.slow
def test_a_fit_goes_on_when_the_kernels_fail(monkeypatch, auto_takes_triton):
    # A few optimiser steps of a tiny classifier whose Triton kernels fail to launch give the same losses as the
    # PyTorch path.
    from lightnet_vision.models import LightNet

    def losses(impl_fails: bool) -> list[float]:
        torch.manual_seed(0)
        model = LightNet(patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
        values = []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(loss.item())
        return values

    with monkeypatch.context() as patch:
        patch.setattr(additive_pytorch, "_triton_supports", lambda *args: False)
        expected = losses(impl_fails=False)
    monkeypatch.setattr(triton_noncausal, "additive_fwd", out_of_resources)
    with pytest.warns(RuntimeWarning, match="out of resource"):
        assert losses(impl_fails=True) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_compiled_model_on_the_triton_op_has_one_graph(auto_takes_triton):
    # The Triton path is one torch.library op to torch.compile: fullgraph=True traces a model that uses it, and the
    # compiled forward and backward equal the eager ones.
    from lightnet_vision.models import LightNet

    torch.manual_seed(0)
    model = LightNet(patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    images = torch.randn(2, 1, 8, 12)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    eager_out = model(images)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    out = compiled(images)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert_close("logits", eager_out, out, 1e-5)
    for grad, eager_grad in zip(grads, eager_grads, strict=True):
        assert_close("grad", eager_grad, grad, 1e-4)


def test_causal_kernels_refuse_second_derivatives():
    q, key, value = (x.detach().to(DEVICE).requires_grad_() for x in make_inputs(1, 20, 1, 4, 4, torch.float32))
    out = additive_attention(q, key, value, causal=True, impl="triton")
    (grad_q,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_q.sum().backward()


@pytest.mark.slow
def test_compiled_graph_falls_back_when_the_kernels_fail(monkeypatch, auto_takes_triton):
    # The fallback is decided inside the op at run time, so a compiled graph (the GPU configs compile) goes on too.
    monkeypatch.setattr(triton_noncausal, "additive_fwd", out_of_resources)
    monkeypatch.setattr(triton_noncausal, "additive_bwd", out_of_resources)
    q, key, value = make_inputs(1, 12, 2, 8, 4, torch.float32)
    angles = torch.rand(12, 4) * 6.3
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: additive_attention(q, k, v, angles=angles, lrpe="rotary"), fullgraph=True)
    with pytest.warns(RuntimeWarning, match="out of resource"):
        out = compiled(q, key, value)
        out.backward(torch.ones_like(out))
    reference = [x.detach().requires_grad_() for x in (q, key, value)]
    expected = naive_additive_attention(*reference, angles=angles, lrpe="rotary")
    expected.backward(torch.ones_like(expected))
    assert_close("o", expected, out, 1e-5)
    for name, x, ref in zip(["dq", "dk", "dv"], (q, key, value), reference, strict=True):
        assert_close(name, ref.grad, x.grad, 1e-5)


def test_out_of_memory_is_not_taken_for_a_kernel_failure(monkeypatch, auto_takes_triton):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(triton_noncausal, "additive_fwd", out_of_memory)
    q, key, value = (x.detach() for x in make_inputs(1, 9, 2, 4, 3, torch.float32))
    with pytest.raises(torch.OutOfMemoryError):
        additive_attention(q, key, value)
    assert not additive_pytorch._TRITON_FAILED


@pytest.mark.parametrize("lrpe", ["cosine", "rotary", "none"])
@pytest.mark.slow
def test_custom_ops_pass_torch_library_checks(lrpe):
    # Schema, fake (meta) shapes and strides, autograd registration and AOT dispatch of the registered op.
    q, key, value = (x.detach().to(DEVICE).requires_grad_() for x in make_inputs(2, 20, 2, 8, 4, torch.float32))
    angles = None if lrpe == "none" else (torch.rand(20, 8 if lrpe == "cosine" else 4) * 6.3).to(DEVICE)
    torch.library.opcheck(triton_noncausal._forward_op, (q, key, value, angles, lrpe, None, False, "none"))
    torch.library.opcheck(triton_noncausal._forward_op, (q, key, value, angles, lrpe, None, False, "silu"))


@pytest.mark.parametrize("lrpe", ["rotary", "none"])
def test_silu_inside_the_op_matches_naive(lrpe):
    # q_activation="silu" through the kernels: the output and every gradient (dq with respect to the pre-activation
    # q, which is what the op keeps) equal the dense twin's with SiLU applied first.
    q, key, value = (torch.randn(2, 20, 2, dim) for dim in (8, 8, 6))
    angles = None if lrpe == "none" else torch.rand(20, 4) * 6.3
    do = torch.randn(2, 20, 2, 6)
    inputs = [x.to(DEVICE).requires_grad_() for x in (q, key, value)]
    device_angles = None if angles is None else angles.to(DEVICE)
    out = additive_attention(*inputs, angles=device_angles, lrpe=lrpe, impl="triton", q_activation="silu")
    out.backward(do.to(DEVICE))
    reference = [x.requires_grad_() for x in (q, key, value)]
    form = "cosine" if lrpe == "none" else lrpe
    ref = naive_additive_attention(*reference, angles=angles, lrpe=form, q_activation="silu")
    ref.backward(do)
    assert_close("o", ref, out, 1e-5)
    for name, x, r in zip(["dq", "dk", "dv"], inputs, reference, strict=True):
        assert_close(name, r.grad, x.grad, 1e-5)
