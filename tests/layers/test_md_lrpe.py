"""MD-LRPE (arXiv 2405.21022), both forms: encoded q·k depends only on the offset between two grid positions."""

import math
import re

import pytest
import torch

from lightnet_vision.kernels.additive.naive import rotate, rotate_pairs
from lightnet_vision.layers import MDLRPE


def flat_index(position: tuple[int, ...], grid: tuple[int, ...]) -> int:
    # Row-major flattening, as MDLRPE and PatchEmbed use.
    index = 0
    for p, n in zip(position, grid, strict=True):
        index = index * n + p
    return index


def rotated_score(angles: torch.Tensor, q: torch.Tensor, k: torch.Tensor, t: int, s: int) -> float:
    """`<encode(q) at token t, encode(k) at token s>` for single vectors q, k `[K]`; the form follows from the
    angles' width (K: cosine, K/2: rotary)."""
    encode = rotate if angles.shape[1] == q.shape[0] else rotate_pairs
    q_t = encode(q[None, None, None], angles[t : t + 1])  # [1, 1, 1, 2K or K]
    k_s = encode(k[None, None, None], angles[s : s + 1])
    return (q_t * k_s).sum().item()


# grid, head dim K, positions t and s, and the offset that moves both; K = 7 and 10 do not divide by the axis count.
CASES = [
    ((6, 7), 8, (0, 0), (2, 3), (1, 1)),
    ((6, 7), 8, (5, 1), (0, 6), (0, -1)),
    ((6, 7), 8, (1, 2), (1, 2), (4, 4)),
    ((6, 7), 8, (3, 0), (1, 5), (2, 1)),
    ((6, 7), 7, (0, 0), (2, 3), (3, 2)),
    ((6, 7), 7, (2, 6), (4, 1), (-2, 0)),
    ((3, 4, 5), 9, (0, 0, 0), (1, 2, 3), (1, 1, 1)),
    ((3, 4, 5), 9, (2, 3, 3), (0, 1, 2), (0, 0, -1)),
    ((3, 4, 5), 9, (1, 0, 4), (0, 3, 1), (1, 0, 0)),
    ((3, 4, 5), 10, (0, 1, 2), (2, 0, 0), (0, 2, 2)),
    ((3, 4, 5), 10, (1, 3, 1), (0, 0, 3), (1, 0, 1)),
]


@pytest.mark.parametrize("form", ["cosine", "rotary"])
@pytest.mark.parametrize(("grid", "head_dim", "t", "s", "offset"), CASES)
def test_relative_shift_invariance(grid, head_dim, t, s, offset, form):
    if form == "rotary" and head_dim % 2:
        head_dim += 1  # pairs need an even head dim
    angles = MDLRPE(head_dim, num_axes=len(grid), form=form)(grid)
    assert angles.shape == (math.prod(grid), head_dim if form == "cosine" else head_dim // 2)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    t2 = tuple(a + o for a, o in zip(t, offset, strict=True))
    s2 = tuple(a + o for a, o in zip(s, offset, strict=True))
    assert all(0 <= p < n for pos in (t, s, t2, s2) for p, n in zip(pos, grid, strict=True))
    before = rotated_score(angles, q, k, flat_index(t, grid), flat_index(s, grid))
    after = rotated_score(angles, q, k, flat_index(t2, grid), flat_index(s2, grid))
    assert after == pytest.approx(before, rel=1e-4, abs=1e-4)
    # Moving only t changes the relative offset, and the score with it: the check above can fail.
    moved = rotated_score(angles, q, k, flat_index(t2, grid), flat_index(s, grid))
    assert abs(moved - before) > 1e-3


@pytest.mark.parametrize("form", ["cosine", "rotary"])
@pytest.mark.parametrize(("grid", "head_dim"), [((6, 7), 8), ((3, 4, 5), 10)])
def test_every_axis_moves_the_score(grid, head_dim, form):
    # A unit step along any single axis changes the score: no axis is left without a slice of the head dim.
    angles = MDLRPE(head_dim, num_axes=len(grid), form=form)(grid)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    origin = (0,) * len(grid)
    base = rotated_score(angles, q, k, 0, 0)
    for axis in range(len(grid)):
        step = tuple(int(a == axis) for a in range(len(grid)))
        assert abs(rotated_score(angles, q, k, flat_index(step, grid), flat_index(origin, grid)) - base) > 1e-3


@pytest.mark.parametrize(("form", "width", "e"), [("cosine", 10, 4), ("rotary", 5, 2)])
def test_angles_match_the_formula(form, width, e):
    # Slice a of the angle channels holds s_a θ, θ_i = 10000^(-i/e), e = ceil(width/m); the last slice is
    # truncated. The width is K (cosine) or K/2 pairs (rotary).
    grid, head_dim = (3, 4, 5), 10
    angles = MDLRPE(head_dim, num_axes=3, form=form)(grid)
    theta = 10000.0 ** (-torch.arange(e, dtype=torch.float64) / e)
    position = (2, 1, 3)
    expected = torch.cat([position[a] * theta for a in range(3)])[:width]
    torch.testing.assert_close(angles[flat_index(position, grid)].double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("form", "mirror_blind"), [("cosine", True), ("rotary", False)])
def test_only_rotary_tells_an_offset_from_its_mirror(form, mirror_blind):
    # Swapping query and key positions mirrors the offset. The cosine form is even in it; the rotary form is not.
    grid, head_dim = (6, 7), 8
    angles = MDLRPE(head_dim, num_axes=2, form=form)(grid)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    t, s = flat_index((1, 2), grid), flat_index((3, 5), grid)
    difference = abs(rotated_score(angles, q, k, t, s) - rotated_score(angles, q, k, s, t))
    assert (difference < 1e-5) == mirror_blind, f"{form}: {difference:.2e}"


def test_rotary_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="even head dim"):
        MDLRPE(7, form="rotary")


@pytest.mark.parametrize("num_extra", [1, 3])
def test_extra_tokens_have_zero_angle(num_extra):
    grid, head_dim = (4, 5), 8
    module = MDLRPE(head_dim, num_axes=2)
    angles = module(grid, num_extra_tokens=num_extra)
    assert angles.shape == (num_extra + 20, head_dim)
    assert (angles[:num_extra] == 0).all()
    # The grid tokens follow, unchanged by the extra tokens in front.
    torch.testing.assert_close(angles[num_extra:], module(grid))
    x = torch.randn(2, num_extra + 20, 3, head_dim)
    expanded = rotate(x, angles)
    torch.testing.assert_close(expanded[:, :num_extra, :, :head_dim], x[:, :num_extra])
    assert (expanded[:, :num_extra, :, head_dim:] == 0).all()


@pytest.mark.parametrize(("num_axes", "grid"), [(2, (4,)), (2, (2, 3, 4)), (3, (4, 5))])
def test_grid_rank_mismatch_raises(num_axes, grid):
    with pytest.raises(ValueError, match=re.escape(str(tuple(grid)))):
        MDLRPE(8, num_axes=num_axes)(grid)
