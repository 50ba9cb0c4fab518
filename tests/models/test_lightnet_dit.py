"""LightNet-DiT: DiT's keywords and their meaning, every preset, adaLN-Zero initialisation, classifier-free guidance
and label dropout."""

import inspect

import pytest
import torch
from diffusion_helpers import wake

from lightnet_vision.layers import MDLRPE, LightNetDiTBlock
from lightnet_vision.models import LightNetDiT, create_model, list_models, preset_arguments

DENOISERS = list_models(model_cls=LightNetDiT)
# (hidden size, depth, heads) of DiT-S/B/L/XL. Configs and checkpoints name these presets: their sizes never change.
DIT_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}
TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "in_channels": 4, "num_classes": 5}
# DiT's `DiT.__init__` (Peebles & Xie, models.py): its keywords and defaults. The sizes (patch, width, depth, heads;
# DiT-XL/2 by default there) come from our preset, lightnet_dit_s_2 by default; every other default is DiT's.
DIT_KEYWORDS = {
    "input_size": 32,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 1152,
    "depth": 28,
    "num_heads": 16,
    "mlp_ratio": 4.0,
    "class_dropout_prob": 0.1,
    "num_classes": 1000,
    "learn_sigma": True,
}
DIT_SIZE_KEYWORDS = ("patch_size", "hidden_size", "depth", "num_heads")


def tiny_dit(**overrides) -> LightNetDiT:
    return LightNetDiT(**{"input_size": 8, "patch_size": 2, **TINY, **overrides})


def inputs(batch: int = 3, channels: int = 4, height: int = 8, width: int = 8):
    x = torch.randn(batch, channels, height, width)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 5, (batch,))
    return x, t, y


def test_takes_every_keyword_of_dit_with_its_default():
    parameters = inspect.signature(LightNetDiT).parameters
    assert list(DIT_KEYWORDS) == [name for name in parameters if name in DIT_KEYWORDS]  # in DiT's order
    for name, default in DIT_KEYWORDS.items():
        expected = None if name in DIT_SIZE_KEYWORDS else default  # None: the preset's
        assert parameters[name].default == expected, name
    # DiT's arguments given by keyword build DiT's shapes: DiT-XL/2 here, at depth 1.
    model = LightNetDiT(preset=None, **DIT_KEYWORDS | {"depth": 1})
    assert (model.x_embedder.proj.out_channels, model.patch_size, model.blocks[0].attn.num_heads) == (1152, 2, 16)
    assert model.learn_sigma and model.out_channels == 8  # noise and variance, as DiT's output
    assert model.y_embedder.table.num_embeddings == 1001  # the classes and DiT's null class


@pytest.mark.parametrize("mlp_ratio", [4.0, 2.0, 6.0])
def test_mlp_ratio_sets_the_glu_to_the_parameters_of_that_mlp(mlp_ratio):
    model = tiny_dit(hidden_size=48, mlp_ratio=mlp_ratio)
    glu = model.blocks[0].mlp
    mlp_parameters = 2 * 48 * int(mlp_ratio * 48)  # DiT's MLP: D -> mlp_ratio·D -> D, weights only
    glu_parameters = glu.up.weight.numel() + glu.down.weight.numel()  # three D x hidden matrices
    assert abs(glu_parameters - mlp_parameters) <= 3 * 48
    assert glu.down.in_features == round(2 * mlp_ratio * 48 / 3)


def test_a_preset_takes_patch_size_and_mlp_ratio():
    model = create_model("lightnet_dit_s_2", patch_size=4, mlp_ratio=2.0, depth=1)
    assert model.patch_size == 4 and model.blocks[0].mlp.down.in_features == 512  # 2·2·384/3
    assert model(torch.randn(1, 4, 16, 16), torch.tensor([5])).shape == (1, 8, 16, 16)


def test_every_size_and_patch_is_registered():
    assert {f"lightnet_dit_{size}_{patch}" for size in DIT_SIZES for patch in (2, 4, 8)} <= set(DENOISERS)


@pytest.mark.parametrize("name", DENOISERS)
@pytest.mark.parametrize("learn_sigma", [False, True], ids=["eps", "eps+sigma"])
def test_forward_shape_and_every_parameter_gets_a_gradient(name, learn_sigma):
    patch = preset_arguments(name)["patch_size"]
    side = max(8, 2 * patch)  # at least a 2x2 patch grid, so the positional encodings have something to relate
    model = create_model(name, input_size=side, learn_sigma=learn_sigma, **TINY)
    assert isinstance(model, LightNetDiT) and model.patch_size == patch
    wake(model)
    x, t, y = inputs(height=side, width=side)
    out = model(x, t, y)
    assert out.shape == (3, 8 if learn_sigma else 4, side, side)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("size", DIT_SIZES)
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_presets_have_dit_sizes(size, patch):
    hidden_size, depth, num_heads = DIT_SIZES[size]
    expected = {"hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "patch_size": patch}
    assert preset_arguments(f"lightnet_dit_{size}_{patch}") == expected


def test_small_preset_is_built_at_dit_s_size():
    model = create_model("lightnet_dit_s_2")
    assert model.x_embedder.proj.out_channels == 384
    assert len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == 6 and model.pos_tpe.num_heads == 6
    assert (model.patch_size, model.in_channels, model.num_classes, model.input_size) == (2, 4, 1000, 32)


@pytest.mark.parametrize("size", ["b", "l", "xl"])
def test_larger_presets_use_their_width_and_heads(size):
    hidden_size, _, num_heads = DIT_SIZES[size]
    model = create_model(f"lightnet_dit_{size}_4", depth=1)
    assert model.x_embedder.proj.out_channels == hidden_size
    assert model.blocks[0].attn.num_heads == num_heads
    assert model.patch_size == 4


def test_fresh_block_is_the_identity():
    block = LightNetDiTBlock(32, 2)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    angles = MDLRPE(16)((4, 4))
    torch.testing.assert_close(block(x, c, angles), x, rtol=0, atol=0)
    wake(block)
    assert not torch.allclose(block(x, c, angles), x, atol=1e-3)


def test_fresh_model_predicts_zero():
    x, t, y = inputs()
    out = tiny_dit(learn_sigma=True)(x, t, y)
    assert out.shape == (3, 8, 8, 8)
    assert (out == 0).all()


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["eps", "eps+sigma"])
def test_guidance_extrapolates_the_noise_prediction_only(learn_sigma):
    model = wake(tiny_dit(learn_sigma=learn_sigma)).eval()
    x, t, y = inputs()
    null = torch.full_like(y, model.num_classes)
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, null)
        assert not torch.allclose(cond, uncond, atol=1e-4)  # the label matters, or guidance would test nothing
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), cond)
        guided = model.forward_with_cfg(x, t, y, 4.0)
    assert guided.shape == cond.shape == (3, 8 if learn_sigma else 4, 8, 8)
    # Every one of the C noise channels is guided (DiT guides 3 of them for reproducibility; its comment gives
    # all of them as the standard form); the variance is the conditional prediction's, never extrapolated.
    torch.testing.assert_close(guided[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, 4:], cond[:, 4:], rtol=0, atol=0)


def test_unconditional_model_runs_without_labels():
    model = wake(tiny_dit(num_classes=0)).eval()
    x, t, _ = inputs()
    with torch.no_grad():
        out = model(x, t, None)
        assert out.shape == (3, 8, 8, 8) and torch.isfinite(out).all()
        # The single learned "null" class is what y=None means.
        torch.testing.assert_close(out, model(x, t, torch.zeros(3, dtype=torch.long)), rtol=0, atol=0)


def test_label_dropout_uses_the_null_class_only_while_training():
    model = wake(tiny_dit(class_dropout_prob=1.0))
    x, t, y = inputs()
    null = torch.full_like(y, model.num_classes)
    with torch.no_grad():
        model.eval()
        conditional, unconditional = model(x, t, y), model(x, t, null)
        assert not torch.allclose(conditional, unconditional, atol=1e-4)
        model.train()
        torch.testing.assert_close(model(x, t, y), unconditional, rtol=0, atol=0)


def test_timestep_matters():
    model = wake(tiny_dit()).eval()
    x, _, y = inputs()
    with torch.no_grad():
        early, late = model(x, torch.full((3,), 10), y), model(x, torch.full((3,), 900), y)
    assert not torch.allclose(early, late, atol=1e-4)


def test_other_latent_sizes_run_with_the_same_weights():
    model = wake(tiny_dit()).eval()
    with torch.no_grad():
        for height, width in [(8, 8), (16, 8), (4, 12)]:
            x, t, y = inputs(height=height, width=width)
            out = model(x, t, y)
            assert out.shape == (3, 8, height, width) and torch.isfinite(out).all()
        # The grid axes are not interchangeable: the transposed latent is a different input.
        x, t, y = inputs(height=16, width=8)
        assert not torch.allclose(model(x.transpose(2, 3), t, y).transpose(2, 3), model(x, t, y), atol=1e-4)


def test_unpatchify_puts_every_patch_back_in_place():
    model = tiny_dit(in_channels=1, hidden_size=4, num_heads=1, patch_size=2, learn_sigma=False)
    tokens = torch.zeros(1, 6, 2 * 2 * 1)  # a 2x3 grid of 2x2 patches of one channel, in row-major order
    tokens[0, 4] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # grid row 1, column 1; the patch in row-major order
    image = model.unpatchify(tokens, (2, 3))
    assert image.shape == (1, 1, 4, 6)
    expected = torch.zeros(1, 1, 4, 6)
    expected[0, 0, 2:4, 2:4] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(image, expected, rtol=0, atol=0)


def test_size_not_divisible_by_the_patch_is_refused():
    model = tiny_dit(patch_size=4)
    x, t, y = inputs(height=8, width=10)
    with pytest.raises(ValueError, match=r"8x10.*patch size 4"):
        model(x, t, y)


def test_grad_checkpointing_gives_the_same_output_and_gradients():
    model = wake(tiny_dit(depth=2))
    x, t, y = inputs()
    model.eval()
    out = model(x, t, y)
    out.square().mean().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out_checkpointed = model(x, t, y)
    out_checkpointed.square().mean().backward()
    torch.testing.assert_close(out_checkpointed, out, rtol=0, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)


def test_grad_checkpointing_is_a_constructor_argument():
    assert tiny_dit(grad_checkpointing=True).grad_checkpointing and not tiny_dit().grad_checkpointing


def test_no_weight_decay_names_are_parameters():
    model = tiny_dit()
    assert model.no_weight_decay() and model.no_weight_decay() <= dict(model.named_parameters()).keys()


def test_a_constant_input_still_tells_mirrored_positions_apart():
    # From pure noise (at the last timestep) a denoiser must place a class's strokes at absolute grid positions.
    # MD-TPE and MD-LRPE are relative, so the condition token at angle 0 is what anchors the grid: without angles
    # (and with the symmetric MD-TPE) the output for a constant input equals its own mirror image.
    def mirror_gaps(**overrides) -> tuple[float, float]:
        torch.manual_seed(0)
        model = wake(tiny_dit(patch_size=1, input_size=6, **overrides)).eval()
        with torch.no_grad():
            model.x_embedder.proj.bias.normal_()  # a constant input reaches every token as the same vector
            out = model(torch.zeros(2, 4, 6, 6), torch.tensor([999, 999]), torch.tensor([1, 3]))
        return (out - out.flip(-1)).abs().max().item(), (out - out.flip(-2)).abs().max().item()

    for lrpe in ("rotary", "cosine"):
        assert min(mirror_gaps(lrpe=lrpe)) > 1e-4, lrpe  # left/right and top/bottom differ
    assert max(mirror_gaps(lrpe="none", tpe="symmetric")) < 1e-6
