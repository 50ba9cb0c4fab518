"""MD-TPE (arXiv 2405.21022) against the dense Toeplitz operator it must equal exactly, in both forms."""

import math

import pytest
import torch
from torch import Tensor

from lightnet_vision.layers import MDTPE
from lightnet_vision.layers.md_tpe import toeplitz_along


def toeplitz(n: int, decay: float, decay_backward: float | None = None) -> Tensor:
    """`T_ij = decay^(i-j)` for `i ≥ j`, `decay_backward^(j-i)` (default: `decay`) for `i < j`; `[n, n]`, float64."""
    index = torch.arange(n, dtype=torch.float64)
    offset = index[:, None] - index[None, :]
    backward = decay if decay_backward is None else decay_backward
    return torch.where(offset >= 0, decay ** offset.clamp(min=0), backward ** (-offset).clamp(min=0))


def dense_operator(grid: tuple[int, ...], decays: Tensor) -> Tensor:
    """`Σ_a I ⊗ … ⊗ T^(a) ⊗ … ⊗ I` for every head, from `decays` `[m, H]` (symmetric) or `[m, 2, H]`
    (forward, backward); returns `[H, N, N]` in float64."""
    if decays.dim() == 2:
        decays = torch.stack([decays, decays], dim=1)
    operators = []
    for h in range(decays.shape[-1]):
        total = torch.zeros(math.prod(grid), math.prod(grid), dtype=torch.float64)
        for axis in range(len(grid)):
            forward, backward = decays[axis, 0, h].item(), decays[axis, 1, h].item()
            factors = [toeplitz(n, forward, backward) if a == axis else torch.eye(n) for a, n in enumerate(grid)]
            kron = factors[0].double()
            for factor in factors[1:]:
                kron = torch.kron(kron, factor.double())  # row-major flattening: the last axis varies fastest
            total += kron
        operators.append(total)
    return torch.stack(operators)


def make_module(dim: int, heads: int, num_axes: int, form: str = "symmetric") -> MDTPE:
    module = MDTPE(dim, heads, num_axes=num_axes, form=form)
    with torch.no_grad():
        module.decay_logit.copy_(torch.randn_like(module.decay_logit) * 1.5)  # away from the evenly spread defaults
        module.norm_weight.copy_(torch.rand(dim) + 0.5)
    return module


@pytest.mark.parametrize("length", [1, 2, 3, 17, 64])
def test_toeplitz_along(length):
    forward = torch.tensor([0.3, 0.8, 0.99])  # one per head group, broadcast over the channels of a group
    backward = torch.tensor([0.9, 0.2, 0.5])
    x = torch.randn(2, length, 3, 4)  # [B, n, H, C]
    out = toeplitz_along(x, forward[:, None], backward[:, None], dim=1)
    operators = [toeplitz(length, f.item(), b.item()) for f, b in zip(forward, backward, strict=True)]
    expected = torch.stack([torch.einsum("ij,bjc->bic", t, x[:, :, h].double()) for h, t in enumerate(operators)], 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_toeplitz_along_inner_axis():
    x = torch.randn(2, 5, 9, 3)  # scan the second axis of a grid, [B, n_1, n_2, C]
    out = toeplitz_along(x, torch.tensor(0.7), torch.tensor(0.4), dim=2)
    expected = torch.einsum("ij,bajc->baic", toeplitz(9, 0.7, 0.4), x.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("form", "mirror_blind"), [("symmetric", True), ("asymmetric", False)])
def test_only_the_asymmetric_form_sees_direction(form, mirror_blind):
    # Reversing an axis commutes with a symmetric Toeplitz operator; with a decay per direction it does not,
    # already at initialisation.
    module = MDTPE(8, 2, num_axes=2, form=form)
    x = torch.randn(1, 4, 5, 8)  # [B, h, w, D]
    for axis in (1, 2):
        mirrored = module.mix(x.flip(axis).flatten(1, 2), (4, 5)).unflatten(1, (4, 5)).flip(axis)
        difference = (mirrored - module.mix(x.flatten(1, 2), (4, 5)).unflatten(1, (4, 5))).abs().max().item()
        assert (difference < 1e-5) == mirror_blind, f"axis {axis}: {difference:.2e}"


@pytest.mark.parametrize("form", ["symmetric", "asymmetric"])
@pytest.mark.parametrize(("grid", "dim", "heads"), [((5, 7), 12, 3), ((2, 3, 4), 8, 2), ((1, 6), 8, 2), ((9,), 6, 3)])
def test_mix_equals_dense_toeplitz(grid, dim, heads, form):
    module = make_module(dim, heads, num_axes=len(grid), form=form)
    x = torch.randn(2, math.prod(grid), dim)
    operator = dense_operator(grid, torch.sigmoid(module.decay_logit.detach().double()))  # [H, N, N]
    x_heads = x.reshape(2, -1, heads, dim // heads).double()  # [B, N, H, D/H]
    expected = torch.einsum("hnm,bmhc->bnhc", operator, x_heads)
    mixed = module.mix(x, grid)
    assert mixed.shape == (2, math.prod(grid), heads, dim // heads)
    torch.testing.assert_close(mixed.double(), expected, rtol=1e-5, atol=1e-5)

    # The full module: a per-head RMSNorm of the mix, scaled by norm_weight, then the output projection.
    normed = expected / expected.pow(2).mean(-1, keepdim=True).add(torch.finfo(torch.float32).eps).sqrt()
    normed = normed.flatten(2) * module.norm_weight.detach().double()
    weight, bias = module.proj.weight.detach().double(), module.proj.bias.detach().double()
    torch.testing.assert_close(module(x, grid).double(), normed @ weight.T + bias, rtol=1e-4, atol=1e-5)


def test_decays_differ_per_axis():
    # Swapping the two axes' decays changes the result on a non-square grid: each axis uses its own decay.
    module = make_module(8, 2, num_axes=2)
    x = torch.randn(1, 20, 8)
    before = module.mix(x, (4, 5))
    with torch.no_grad():
        module.decay_logit.copy_(module.decay_logit.flip(0))
    assert (module.mix(x, (4, 5)) - before).abs().max() > 1e-3


def test_parameters_do_not_depend_on_grid():
    module = make_module(12, 3, num_axes=2)
    shapes = {name: p.shape for name, p in module.named_parameters()}
    count = sum(p.numel() for p in module.parameters())
    for grid in [(5, 7), (14, 14), (20, 12), (3, 1)]:
        x = torch.randn(1, math.prod(grid), 12)
        out = module(x, grid)
        assert out.shape == x.shape and torch.isfinite(out).all()
        operator = dense_operator(grid, torch.sigmoid(module.decay_logit.detach().double()))  # [H, N, N]
        expected = torch.einsum("hnm,bmhc->bnhc", operator, x.reshape(1, -1, 3, 4).double())
        torch.testing.assert_close(module.mix(x, grid).double(), expected, rtol=1e-5, atol=1e-5)
    assert {name: p.shape for name, p in module.named_parameters()} == shapes
    assert sum(p.numel() for p in module.parameters()) == count == 2 * 3 + 12 + 12 * 12 + 12


@pytest.mark.parametrize("grid", [(5, 6), (35,), (5, 7, 1)])
def test_wrong_grid_raises(grid):
    with pytest.raises(ValueError, match="grid_size"):
        MDTPE(8, 2, num_axes=2)(torch.randn(1, 35, 8), grid)


def scan_mix(module: MDTPE, x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """`module.mix` as the plain composition of the doubling scans of `toeplitz_along`, differentiable by autograd."""
    batch, n, dim = x.shape
    heads = module.num_heads
    decay = torch.sigmoid(module.decay_logit)
    if module.form == "symmetric":
        decay = torch.stack([decay, decay], dim=1)  # [m, 2, H]
    x = x.reshape(batch, *grid, heads, dim // heads)
    mixed = sum(
        toeplitz_along(x, decay[axis, 0, :, None], decay[axis, 1, :, None], dim=1 + axis) for axis in range(len(grid))
    )
    return mixed.reshape(batch, n, heads, dim // heads)


@pytest.mark.parametrize("form", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("grid", [(5, 7), (2, 3, 4), (17,)])
def test_mix_and_its_gradients_equal_the_scans(grid, form):
    # The matrices' mix against the scans, outputs and the gradients of x and of the decays, in float64.
    module = make_module(12, 3, num_axes=len(grid), form=form).double()
    x = torch.randn(2, math.prod(grid), 12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, math.prod(grid), 3, 4, dtype=torch.float64)
    results = []
    for mix in (module.mix, lambda x, grid: scan_mix(module, x, grid)):
        out = mix(x, grid)
        results.append((out, *torch.autograd.grad((out * weights).sum(), [x, module.decay_logit])))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_scan_comparison_catches_a_planted_bug(monkeypatch):
    # Toeplitz matrices transposed (the decays of the two directions swapped) must fail the comparison above: the
    # asymmetric form tells them apart, in the output and in the decays' gradients.
    from lightnet_vision.layers import md_tpe

    original = md_tpe.toeplitz_matrix
    monkeypatch.setattr(md_tpe, "toeplitz_matrix", lambda forward, backward, n: original(backward, forward, n))
    with pytest.raises(AssertionError):
        test_mix_and_its_gradients_equal_the_scans((5, 7), "asymmetric")


def test_mix_keeps_no_scan_intermediates():
    # What the backward of the mix keeps grows with the number of axes (x, laid out per axis for its matmul), not
    # with log2 of their lengths as the scans' does.
    from benchmarks.saved_bytes import saved_bytes

    module = make_module(12, 3, num_axes=2)
    x = torch.randn(2, 32 * 32, 12, requires_grad=True)
    kept = saved_bytes(lambda: module.mix(x, (32, 32)))
    assert kept <= 2 * x.numel() * 4 + 4 * 32 * 32 * 3 * 8  # two layouts of x, and the [H, n, n] matrices
    assert saved_bytes(lambda: scan_mix(module, x, (32, 32))) > 5 * kept
