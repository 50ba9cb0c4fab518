"""LightNet attention, block, GLU and patch embedding (arXiv 2405.21022): properties and equality with the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightnet_vision.kernels.additive.naive import naive_additive_attention
from lightnet_vision.layers import GLU, MDLRPE, MDTPE, LightNetAttention, LightNetBlock, PatchEmbed


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_attention_matches_paper_formula():
    dim, heads, grid = 12, 3, (3, 4)
    attn = LightNetAttention(dim, heads, qkv_bias=True)
    with torch.no_grad():
        attn.out_norm.weight.copy_(torch.rand(dim // heads) + 0.5)
    x = torch.randn(2, 12, dim)
    angles = MDLRPE(dim // heads)(grid)

    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    b_q, b_k, b_v = attn.qkv.bias.chunk(3)
    q, k, v = (F.linear(x, w, b).reshape(2, 12, heads, -1) for w, b in [(w_q, b_q), (w_k, b_k), (w_v, b_v)])
    o = naive_additive_attention(F.silu(q), k, v, angles=angles)  # [B, N, H, K]
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + torch.finfo(o.dtype).eps) * attn.out_norm.weight
    gate = torch.sigmoid(attn.gate[1](attn.gate[0](x)))  # low rank: D -> K -> D
    expected = attn.proj(o.reshape(2, 12, dim) * gate)
    torch.testing.assert_close(attn(x, angles), expected, rtol=1e-4, atol=1e-5)
    assert attn.gate[0].out_features == dim // heads


def test_attention_without_angles_is_permutation_equivariant():
    attn = LightNetAttention(16, 2)
    x = torch.randn(2, 42, 16)
    perm = torch.randperm(42)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm], rtol=1e-5, atol=1e-6)


def test_attention_with_angles_is_not_permutation_equivariant():
    attn = LightNetAttention(16, 2)
    angles = MDLRPE(8)((6, 7))
    x = torch.randn(2, 42, 16)
    perm = torch.randperm(42)
    assert relative_difference(attn(x[:, perm], angles), attn(x, angles)[:, perm]) > 1e-2


@pytest.mark.parametrize("use_angles", [False, True], ids=["plain", "angles"])
def test_causal_attention_ignores_the_future(use_angles):
    attn = LightNetAttention(16, 2, causal=True)
    angles = MDLRPE(8)((6, 7)) if use_angles else None
    x = torch.randn(2, 42, 16)
    out = attn(x, angles)
    for t in (0, 17, 40):
        perturbed = x.clone()
        perturbed[:, t + 1 :] = torch.randn_like(perturbed[:, t + 1 :]) * 3
        out_perturbed = attn(perturbed, angles)
        torch.testing.assert_close(out_perturbed[:, : t + 1], out[:, : t + 1], rtol=1e-5, atol=1e-6)
        assert relative_difference(out_perturbed[:, t + 1 :], out[:, t + 1 :]) > 1e-2
    perm = torch.randperm(42)
    assert relative_difference(attn(x[:, perm], angles), out[:, perm]) > 1e-2


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_block_gradcheck(causal):
    block = LightNetBlock(8, 2, causal=causal).double()
    angles = MDLRPE(4)((2, 3)).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: block(x, angles), (x,))


def test_block_is_pre_norm_residual():
    # x + attn(LN x), then + GLU(LN ·): rebuilt from the block's own submodules.
    block = LightNetBlock(16, 2)
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):  # distinct norms, so swapping them shows
            norm.weight.copy_(torch.rand(16) + 0.5)
            norm.bias.copy_(torch.randn(16))
    angles = MDLRPE(8)((4, 5))
    x = torch.randn(2, 20, 16)
    h = x + block.attn(block.norm1(x), angles)
    torch.testing.assert_close(block(x, angles), h + block.mlp(block.norm2(h)))


def test_drop_path():
    x = torch.randn(8, 20, 16)
    block = LightNetBlock(16, 2, drop_path=0.5)
    plain = LightNetBlock(16, 2)
    plain.load_state_dict(block.state_dict())
    block.eval()
    first = block(x)
    torch.testing.assert_close(block(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, plain(x))  # no rescaling in eval mode
    block.train()
    # Branches are dropped per sample: in one draw, some samples (both branches dropped) pass through unchanged and
    # others do not.
    identity = torch.stack([(block(x) == x).all(dim=(1, 2)) for _ in range(4)])  # [draws, B]
    assert ((identity.sum(1) > 0) & (identity.sum(1) < 8)).any()

    always = LightNetBlock(16, 2, drop_path=1.0).train()
    torch.testing.assert_close(always(x), x, rtol=0, atol=0)


@pytest.mark.parametrize(("dim", "hidden"), [(12, 32), (10, 27), (192, 512)])
def test_glu_default_width(dim, hidden):
    glu = GLU(dim)
    assert glu.up.out_features == 2 * hidden and glu.down.in_features == hidden
    # Parameter parity with a 4D MLP (weights only): 3·D·round(8D/3) ≈ 8D².
    assert abs(3 * dim * hidden - 8 * dim * dim) <= 3 * dim


def test_glu_formula():
    glu = GLU(12, hidden_dim=20)
    x = torch.randn(3, 5, 12)
    w_1, w_2 = glu.up.weight[:20], glu.up.weight[20:]
    b_1, b_2 = glu.up.bias[:20], glu.up.bias[20:]
    expected = F.linear(F.silu(F.linear(x, w_1, b_1)) * F.linear(x, w_2, b_2), glu.down.weight, glu.down.bias)
    torch.testing.assert_close(glu(x), expected)


@pytest.mark.parametrize(("size", "grid"), [((224, 224), (14, 14)), ((320, 192), (20, 12))])
def test_patch_embed_shape_and_order(size, grid):
    embed = PatchEmbed(16, 3, 8)
    x = torch.randn(2, 3, *size)
    tokens, out_grid = embed(x)
    assert out_grid == grid and tokens.shape == (2, math.prod(grid), 8)
    # Row-major order: token i * w + j is the patch in row i, column j.
    i, j = grid[0] - 2, 1
    patch = x[:, :, 16 * i : 16 * (i + 1), 16 * j : 16 * (j + 1)]
    expected = torch.einsum("bchw,dchw->bd", patch, embed.proj.weight) + embed.proj.bias
    torch.testing.assert_close(tokens[:, i * grid[1] + j], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(225, 224), (224, 200), (8, 8)])
def test_patch_embed_rejects_non_divisible_size(size):
    with pytest.raises(ValueError) as info:
        PatchEmbed(16, 3, 8)(torch.randn(1, 3, *size))
    assert f"{size[0]}x{size[1]}" in str(info.value) and "16" in str(info.value)


def test_patch_embed_rejects_wrong_channels():
    with pytest.raises(ValueError, match="got"):
        PatchEmbed(16, 3, 8)(torch.randn(1, 4, 32, 32))


class TinyStack(nn.Module):
    # PatchEmbed -> x + MD-TPE -> blocks with MD-LRPE angles, as the classifier stacks them.
    def __init__(self, patch: int = 4, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = PatchEmbed(patch, 3, dim)
        self.tpe = MDTPE(dim, heads)
        self.lrpe = MDLRPE(dim // heads)
        self.blocks = nn.ModuleList(LightNetBlock(dim, heads) for _ in range(2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, grid = self.embed(images)
        x = x + self.tpe(x, grid)
        angles = self.lrpe(grid)
        for block in self.blocks:
            x = block(x, angles)
        return x


def test_same_weights_run_on_any_grid():
    model = TinyStack(patch=4)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    buffers = {name: b.shape for name, b in model.named_buffers()}
    for grid in [(14, 14), (20, 12)]:
        model.zero_grad()
        out = model(torch.randn(2, 3, 4 * grid[0], 4 * grid[1]))
        assert out.shape == (2, math.prod(grid), 16) and torch.isfinite(out).all()
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert {name: b.shape for name, b in model.named_buffers()} == buffers
