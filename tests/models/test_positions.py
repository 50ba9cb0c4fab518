"""Positions the backbones can see: mirroring the patch grid must change what they compute (issue: left from right).

With the paper's encodings (cosine MD-LRPE, symmetric MD-TPE) and mean pooling, reflecting the token grid is an
exact symmetry of the classifier; each test below also checks that symmetry on that configuration, so it can fail.
"""

import pytest
import torch
from diffusion_helpers import wake

from benchmarks.position_probes import bright_quadrant, tiny_lightnet, train_probe
from lightnet_vision.models import LightNet, LightNetDiT


def mirror_grid(x: torch.Tensor, patch: int, dim: int) -> torch.Tensor:
    """`x` `[B, C, H, W]` with its grid of patches reversed along `dim` (-2 rows, -1 columns), each patch unchanged."""
    batch, channels, height, width = x.shape
    patches = x.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return patches.flip(2 if dim == -2 else 4).reshape(batch, channels, height, width)


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def tiny_classifier(**overrides) -> LightNet:
    config = {"patch_size": 4, "in_chans": 1, "num_classes": 5, "embed_dim": 32, "depth": 2, "num_heads": 2}
    return LightNet(**{**config, **overrides}).eval()


def test_mirror_grid_reverses_patches_only():
    x = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(1, 2, 8, 12)
    mirrored = mirror_grid(x, 4, dim=-1)
    torch.testing.assert_close(mirrored[..., :4], x[..., 8:])  # the last column of patches comes first, as it was
    torch.testing.assert_close(mirror_grid(mirrored, 4, dim=-1), x)


@pytest.mark.parametrize("dim", [-1, -2], ids=["left-right", "up-down"])
def test_default_classifier_tells_a_grid_from_its_mirror(dim):
    x = torch.randn(3, 1, 16, 20)
    with torch.no_grad():
        model = tiny_classifier()
        assert relative_change(model(x), model(mirror_grid(x, 4, dim))) > 1e-2
        # The paper's encodings cannot: the same logits for the mirrored grid, whatever the weights.
        paper = tiny_classifier(lrpe="cosine", tpe="symmetric")
        assert relative_change(paper(x), paper(mirror_grid(x, 4, dim))) < 1e-5


@pytest.mark.parametrize("dim", [-1, -2], ids=["left-right", "up-down"])
def test_default_denoiser_is_not_mirror_equivariant(dim):
    # A denoiser must place strokes at absolute positions: mirroring its input must not just mirror its output.
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 900]), torch.tensor([1, 3])
    config = {"input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "num_classes": 5}
    with torch.no_grad():
        model = wake(LightNetDiT(**config)).eval()
        assert relative_change(model(x, t, y), mirror_grid(model(mirror_grid(x, 2, dim), t, y), 2, dim)) > 1e-3
        # Without angles the anchor token sits nowhere, and a symmetric MD-TPE keeps the mirror symmetry.
        blind = wake(LightNetDiT(**config, lrpe="none", tpe="symmetric")).eval()
        assert relative_change(blind(x, t, y), mirror_grid(blind(mirror_grid(x, 2, dim), t, y), 2, dim)) < 1e-5


@pytest.mark.slow
def test_default_classifier_learns_which_quadrant_is_bright():
    # A position-only task: the same noise and brightness whatever the label, only the place differs. The paper's
    # encodings stay at chance (25%) here; see benchmarks/position_probes.py for every encoding and a ViT.
    torch.manual_seed(0)
    accuracy = train_probe(tiny_lightnet(4), bright_quadrant, steps=120, seed=0)
    assert accuracy > 0.8
