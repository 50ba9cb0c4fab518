"""`additive_attention` against its dense twin `naive_additive_attention`: outputs and every gradient."""

import pytest
import torch
from torch import Tensor

from lightnet_vision.kernels import additive_attention
from lightnet_vision.kernels.additive import pytorch as additive_pytorch
from lightnet_vision.kernels.additive.naive import naive_additive_attention, naive_causal_states, rotate

# Relative-RMSE tolerance of each input dtype against the fp32 reference on the same (cast) inputs.
RATIO = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rmse(x: Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


def assert_close(name: str, ref: Tensor, out: Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Relative RMSE `rmse(ref - out) / rmse(ref) <= ratio`; `atol` only matters where `ref` is (near) zero.

    Both sides are compared on the CPU in float64, whichever devices they come from (a CUDA output against a CPU
    reference, or the other way round)."""
    ref, out = ref.detach().cpu().double(), out.detach().cpu().double()
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err, base = rmse(ref - out), rmse(ref)
    assert err <= max(ratio * base, atol), f"{name}: RMSE {err:.3e} vs reference RMSE {base:.3e}, ratio {ratio:.1e}"


def make_inputs(b: int, n: int, h: int, k: int, v: int, dtype: torch.dtype, key_scale: float = 1.0):
    q = torch.randn(b, n, h, k).sigmoid()  # activated queries
    key = torch.randn(b, n, h, k) * key_scale
    value = torch.randn(b, n, h, v)
    return [x.to(dtype).requires_grad_() for x in (q, key, value)]


def run_both(q, k, v, causal: bool, angles: Tensor | None = None, **kwargs):
    """Output and (dq, dk, dv) of the op and of the fp32 reference on the same inputs, for one random `do`."""
    do = torch.randn_like(v)
    out = additive_attention(q, k, v, causal=causal, angles=angles, **kwargs)
    out.backward(do)
    grads = [x.grad for x in (q, k, v)]
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = naive_additive_attention(*ref_inputs, causal=causal, angles=angles, lrpe=kwargs.get("lrpe", "cosine"))
    ref.backward(do.float())
    return (out, *grads), (ref, *(x.grad for x in ref_inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    ("b", "n", "h", "k", "v"), [(2, 1, 2, 16, 8), (1, 63, 2, 5, 7), (2, 64, 3, 16, 16), (1, 257, 1, 16, 8)]
)
def test_matches_naive(b, n, h, k, v, causal, use_angles, dtype):
    q, key, value = make_inputs(b, n, h, k, v, dtype)
    angles = torch.rand(n, k) * 6.3 if use_angles else None
    outs, refs = run_both(q, key, value, causal, angles, chunk_size=16)
    assert outs[0].shape == (b, n, h, v) and outs[0].dtype == dtype
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out, RATIO[dtype])


@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
@pytest.mark.parametrize(("n", "chunk_size"), [(63, 16), (63, 1), (63, 7), (40, 64), (64, 16)])
def test_causal_chunk_boundaries(n, chunk_size, use_angles):
    q, key, value = make_inputs(2, n, 2, 6, 5, torch.float32)
    angles = torch.rand(n, 6) * 6.3 if use_angles else None
    outs, refs = run_both(q, key, value, True, angles, chunk_size=chunk_size)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out, 1e-5)


def test_causal_chunk_size_does_not_change_output():
    q, key, value = (x.detach() for x in make_inputs(1, 63, 2, 8, 4, torch.float32))
    outs = [additive_attention(q, key, value, causal=True, chunk_size=c) for c in (1, 5, 16, 64, 100)]
    for out in outs[1:]:
        assert_close("o", outs[0], out, 1e-5)


def test_last_causal_state_is_the_non_causal_state():
    _, key, value = (x.detach() for x in make_inputs(2, 37, 3, 6, 5, torch.float32))
    states = naive_causal_states(key, value)  # [B, N, H, K, V]
    full = torch.einsum("bnhk,bnhv->bhkv", key.softmax(1), value)
    assert_close("S_N", full, states[:, -1], 1e-5)
    # A prefix state is not the full one, so the comparison above can fail.
    assert rmse(states[:, -2] - full) > 1e-3 * rmse(full)


@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
def test_causal_last_token_equals_non_causal(use_angles):
    q, key, value = (x.detach() for x in make_inputs(2, 45, 2, 8, 6, torch.float32))
    angles = torch.rand(45, 8) * 6.3 if use_angles else None
    causal = additive_attention(q, key, value, causal=True, angles=angles, chunk_size=16)
    full = additive_attention(q, key, value, causal=False, angles=angles)
    assert_close("o_N", full[:, -1], causal[:, -1], 1e-5)
    assert rmse(full[:, 0] - causal[:, 0]) > 1e-3 * rmse(full[:, 0])


def test_causal_equals_recurrence():
    q, key, value = (x.detach() for x in make_inputs(2, 30, 2, 5, 7, torch.float32))
    states = naive_causal_states(key, value)  # [B, N, H, K, V]
    expected = torch.einsum("bnhk,bnhkv->bnhv", q, states)
    assert_close("o", expected, additive_attention(q, key, value, causal=True, chunk_size=8), 1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("logits", ["randn", "plus_minus"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_extreme_logits(dtype, logits, causal):
    b, n, h, k, v = 2, 50, 2, 8, 4
    q, _, value = make_inputs(b, n, h, k, v, dtype)
    if logits == "randn":
        raw = (torch.randn(b, n, h, k) * 1e4).clamp(-3e4, 3e4)  # within the fp16 range
    else:
        raw = torch.where(torch.rand(b, n, h, k) < 0.5, 1e4, -1e4) + torch.randn(b, n, h, k)
    key = raw.to(dtype).requires_grad_()
    angles = torch.rand(n, k) * 6.3
    outs, refs = run_both(q, key, value, causal, angles, chunk_size=16)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert torch.isfinite(ref).all(), f"reference {name} is not finite"
        # Logits this far apart make every softmax (nearly) one-hot, so the exact dk is ~0: judge its error on the
        # scale of the other gradients instead of its own.
        atol = 2e-2 * rmse(refs[3]) if name == "dk" else 1e-6
        assert_close(name, ref, out, 2e-2, atol=atol)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_extreme_logits_key_gradient_precision(causal):
    # fp32 inputs, float64 truth: the dense twin in fp32 reaches ~1e-6 here, so 2e-2 is a loose bar.
    q, key, value = make_inputs(2, 50, 2, 8, 4, torch.float32, key_scale=1e4)
    do = torch.randn(2, 50, 2, 4)
    additive_attention(q, key, value, causal=causal, chunk_size=16).backward(do)
    ref_inputs = [x.detach().double().requires_grad_() for x in (q, key, value)]
    naive_additive_attention(*ref_inputs, causal=causal).backward(do.double())
    assert_close("dk", ref_inputs[1].grad, key.grad, 2e-2)


@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
def test_padded_tokens_contribute_nothing(use_angles):
    b, n, h, k, v = 2, 20, 2, 6, 5
    q, key, value = (x.detach() for x in make_inputs(b, n, h, k, v, torch.float32))
    padded = torch.zeros(n, dtype=torch.bool)
    padded[[0, 3, 4, 11, 19]] = True
    key = key.masked_fill(padded[None, :, None, None], float("-inf"))
    angles = torch.rand(n, k) * 6.3 if use_angles else None

    # Dense computation with the padded tokens removed from k and v (every query kept).
    kept_k, kept_v = key[:, ~padded].softmax(dim=1), value[:, ~padded]
    q_exp, k_exp = q, kept_k
    if angles is not None:
        q_exp, k_exp = rotate(q, angles), rotate(kept_k, angles[~padded])
    expected = torch.einsum("bthc,bshc,bshv->bthv", q_exp, k_exp, kept_v)

    q, key, value = (x.clone().requires_grad_() for x in (q, key, value))
    out = additive_attention(q, key, value, angles=angles)
    assert_close("o", expected, out, 1e-5)
    out.backward(torch.randn_like(out))
    for name, x in zip(["dq", "dk", "dv"], (q, key, value), strict=True):
        assert torch.isfinite(x.grad).all(), f"{name} is not finite"
    assert (key.grad[:, padded] == 0).all() and (value.grad[:, padded] == 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_autocast_is_disabled_inside(causal):
    q, key, value = (x.detach() for x in make_inputs(2, 63, 2, 16, 16, torch.float32))
    ref = naive_additive_attention(q, key, value, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = additive_attention(q, key, value, causal=causal, chunk_size=16)
        # The dense reference does not opt out of autocast: its einsums run in bf16, visibly less accurate.
        leaky = naive_additive_attention(q, key, value, causal=causal)
    assert out.dtype == torch.float32
    assert_close("o", ref, out, 1e-5)
    assert rmse(leaky - ref) > 1e-4 * rmse(ref)

    # bf16 inputs (as a linear layer under autocast produces): fp32 maths, one rounding of the output to bf16.
    q16, k16, v16 = (x.bfloat16() for x in (q, key, value))
    ref16 = naive_additive_attention(q16.float(), k16.float(), v16.float(), causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = additive_attention(q16, k16, v16, causal=causal, chunk_size=16)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref16, rtol=2**-8, atol=1e-5)


@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "causal"])
def test_gradcheck(causal):
    b, n, h, k, v = 1, 5, 2, 3, 4
    q, key, value = (x.detach().double().requires_grad_() for x in make_inputs(b, n, h, k, v, torch.float32))
    angles = torch.rand(n, k, dtype=torch.float64) * 6.3

    def fn(q, key, value):
        return additive_attention(q, key, value, causal=causal, angles=angles, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (q, key, value))


def test_gradcheck_angles():
    q, key, value = (x.detach().double() for x in make_inputs(1, 5, 2, 3, 4, torch.float32))
    angles = (torch.rand(5, 3, dtype=torch.float64) * 6.3).requires_grad_()
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, causal=causal: additive_attention(q, key, value, causal=causal, angles=a, chunk_size=2),
            (angles,),
        )


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape"),
    [
        ((2, 8, 2, 4), (2, 8, 2, 5), (2, 8, 2, 4)),  # K of q and k differ
        ((2, 8, 2, 4), (2, 7, 2, 4), (2, 8, 2, 4)),  # N of k differs
        ((2, 8, 2, 4), (2, 8, 2, 4), (2, 8, 3, 4)),  # H of v differs
        ((2, 8, 4), (2, 8, 4), (2, 8, 4)),  # no head axis
    ],
)
def test_bad_shapes_raise(q_shape, k_shape, v_shape):
    q, key, value = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    with pytest.raises(ValueError) as info:
        additive_attention(q, key, value)
    for shape in (q_shape, k_shape, v_shape):
        assert str(shape) in str(info.value)


@pytest.mark.parametrize("v_shape", [(2, 8, 2), (2, 8, 2, 4, 1)])
def test_bad_value_rank_raises(v_shape):
    with pytest.raises(ValueError, match="got q"):
        additive_attention(torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 4), torch.randn(v_shape))


def test_bad_angles_raise():
    q = torch.randn(1, 6, 2, 4)
    with pytest.raises(ValueError, match=r"\[6, 4\]"):
        additive_attention(q, q, q, angles=torch.zeros(6, 8))


def lrpe_angles(n: int, k: int, lrpe: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Random MD-LRPE angles of the shape each form takes: `[N, K]` (cosine) or `[N, K/2]` (rotary)."""
    return torch.rand(n, k if lrpe == "cosine" else k // 2, dtype=dtype) * 6.3


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(("b", "n", "h", "k", "v"), [(2, 1, 2, 16, 8), (1, 63, 2, 6, 7), (1, 257, 1, 16, 8)])
def test_rotary_matches_naive(b, n, h, k, v, causal):
    q, key, value = make_inputs(b, n, h, k, v, torch.float32)
    outs, refs = run_both(q, key, value, causal, lrpe_angles(n, k, "rotary"), lrpe="rotary", chunk_size=16)
    for name, ref, out in zip(["o", "dq", "dk", "dv"], refs, outs, strict=True):
        assert_close(name, ref, out, 1e-5)


@pytest.mark.parametrize("lrpe", ["cosine", "rotary"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_lrpe_depends_only_on_offsets(causal, lrpe):
    # Adding the same angle to every token leaves every offset Θ_t − Θ_s, hence the output, unchanged.
    q, key, value = (x.detach() for x in make_inputs(2, 20, 2, 8, 4, torch.float32))
    angles = lrpe_angles(20, 8, lrpe)
    out = additive_attention(q, key, value, causal=causal, angles=angles, lrpe=lrpe, chunk_size=8)
    shifted = additive_attention(q, key, value, causal=causal, angles=angles + 1.3, lrpe=lrpe, chunk_size=8)
    assert_close("o", out, shifted, 1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_only_rotary_tells_an_offset_from_its_mirror(causal):
    # Negating every angle mirrors every offset. The paper's cosine form is even in the offset and cannot see it;
    # the rotary form's sine term can.
    q, key, value = (x.detach() for x in make_inputs(2, 20, 2, 8, 4, torch.float32))
    for lrpe, mirror_blind in (("cosine", True), ("rotary", False)):
        angles = lrpe_angles(20, 8, lrpe)
        out = additive_attention(q, key, value, causal=causal, angles=angles, lrpe=lrpe, chunk_size=8)
        mirrored = additive_attention(q, key, value, causal=causal, angles=-angles, lrpe=lrpe, chunk_size=8)
        difference = rmse(out - mirrored) / rmse(out)
        assert (difference < 1e-6) == mirror_blind, f"{lrpe}: relative change {difference:.2e} under mirroring"


@pytest.mark.parametrize("lrpe", ["cosine", "rotary"])
@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "causal"])
def test_second_derivatives(causal, lrpe):
    # create_graph=True through the hand-written backward: gradient penalties and Hessian-vector products.
    q, key, value = (x.detach().double().requires_grad_() for x in make_inputs(1, 5, 2, 4, 3, torch.float32))
    angles = lrpe_angles(5, 4, lrpe, torch.float64).requires_grad_()

    def fn(q, key, value, angles):
        return additive_attention(q, key, value, causal=causal, angles=angles, lrpe=lrpe, chunk_size=2)

    assert torch.autograd.gradgradcheck(fn, (q, key, value, angles))


def test_bad_lrpe_raises():
    q = torch.randn(1, 6, 2, 4)
    with pytest.raises(ValueError, match=r"rotary.*\[6, 2\]"):
        additive_attention(q, q, q, angles=torch.zeros(6, 4), lrpe="rotary")
    with pytest.raises(ValueError, match="even head dim"):
        additive_attention(*(torch.randn(1, 6, 2, 5),) * 3, angles=torch.zeros(6, 2), lrpe="rotary")
    with pytest.raises(ValueError, match="lrpe"):
        additive_attention(q, q, q, lrpe="sine")


def silu_inputs(b: int, n: int, h: int, k: int, v: int) -> list[Tensor]:
    # Pre-activation queries of both signs (SiLU is not monotone below zero), keys and values.
    return [torch.randn(b, n, h, dim).requires_grad_() for dim in (k, k, v)]


@pytest.mark.parametrize("lrpe", ["cosine", "rotary", "none"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_silu_inside_the_op_matches_silu_before_it(causal, lrpe):
    # q_activation="silu": the op applies SiLU to q itself; the output and every gradient (dq with respect to the
    # pre-activation q) equal the dense twin's, which applies SiLU first.
    q, key, value = silu_inputs(2, 63, 2, 8, 6)
    angles = None if lrpe == "none" else lrpe_angles(63, 8, lrpe)
    do = torch.randn(2, 63, 2, 6)
    out = additive_attention(q, key, value, causal=causal, angles=angles, lrpe=lrpe, q_activation="silu", chunk_size=16)
    out.backward(do)
    reference = [x.detach().requires_grad_() for x in (q, key, value)]
    form = "cosine" if lrpe == "none" else lrpe
    ref = naive_additive_attention(*reference, causal=causal, angles=angles, lrpe=form, q_activation="silu")
    ref.backward(do)
    assert_close("o", ref, out, 1e-5)
    for name, x, r in zip(["dq", "dk", "dv"], (q, key, value), reference, strict=True):
        assert_close(name, r.grad, x.grad, 1e-5)


def test_silu_inside_the_op_passes_gradcheck_and_gradgradcheck():
    q, key, value = (x.detach().double().requires_grad_() for x in silu_inputs(1, 5, 2, 4, 3))
    angles = lrpe_angles(5, 4, "rotary", torch.float64).requires_grad_()

    def fn(q, key, value, angles):
        return additive_attention(q, key, value, angles=angles, lrpe="rotary", q_activation="silu")

    assert torch.autograd.gradcheck(fn, (q, key, value, angles))
    assert torch.autograd.gradgradcheck(fn, (q, key, value, angles))


@pytest.mark.parametrize(
    "planted",
    ["no SiLU derivative", "rotation turned the wrong way"],
)
def test_the_silu_comparison_catches_a_planted_bug(planted, monkeypatch):
    # The equality above fails when the backward forgets SiLU's derivative, or when the in-place rotation of the
    # forward turns the pairs by -Θ: the test would catch either.
    if planted == "no SiLU derivative":
        monkeypatch.setattr(additive_pytorch, "activate_adjoint", lambda grad, q, q_activation: grad)
    else:
        original = additive_pytorch._encode_own
        monkeypatch.setattr(additive_pytorch, "_encode_own", lambda x, cos, sin, lrpe: original(x, cos, -sin, lrpe))
    q, key, value = silu_inputs(2, 20, 2, 8, 6)
    angles = lrpe_angles(20, 8, "rotary")
    out = additive_attention(q, key, value, angles=angles, lrpe="rotary", q_activation="silu")
    out.backward(torch.ones_like(out))
    reference = [x.detach().requires_grad_() for x in (q, key, value)]
    ref = naive_additive_attention(*reference, angles=angles, lrpe="rotary", q_activation="silu")
    ref.backward(torch.ones_like(ref))
    with pytest.raises(AssertionError):
        assert_close("o", ref, out, 1e-5)
        assert_close("dq", reference[0].grad, q.grad, 1e-5)


@pytest.mark.parametrize("lrpe", ["cosine", "rotary", "none"])
def test_the_op_keeps_the_pre_activation_qkv_and_the_state_only(lrpe):
    # q, k and v cut out of one qkv tensor, as the layer does: the backward keeps that storage, the [B, H, K', V]
    # state and the angles, nothing [B, N, ·]-sized besides; SiLU applied before the op adds a q-sized tensor.
    from benchmarks.saved_bytes import saved_bytes

    batch, n, heads, dim = 2, 50, 3, 8
    qkv = torch.randn(batch, n, 3, heads, dim, requires_grad=True)
    q, key, value = qkv.unbind(2)
    angles = None if lrpe == "none" else lrpe_angles(n, dim, lrpe)
    width = 2 * dim if lrpe == "cosine" else dim
    state_bytes = batch * heads * width * dim * 4
    expected = qkv.numel() * 4 + state_bytes + (0 if angles is None else angles.numel() * 4)
    inside = saved_bytes(lambda: additive_attention(q, key, value, angles=angles, lrpe=lrpe, q_activation="silu"))
    assert inside == expected
    before = saved_bytes(lambda: additive_attention(torch.nn.functional.silu(q), key, value, angles=angles, lrpe=lrpe))
    assert before == expected + q.numel() * 4
