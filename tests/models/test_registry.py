"""The model registry and timm's model interface, for every registered preset (timm's tests/test_models.py)."""

import pytest
import torch

from lightnet_vision.models import LightNet, create_model, list_models

# Preset widths are kept; depth is cut to keep a forward and backward of the base width fast on a CPU.
SMALL = {"num_classes": 7, "in_chans": 3, "depth": 2}
# The image classifiers; the diffusion denoisers (lightnet_dit_*) have their own tests.
CLASSIFIERS = [name for name in list_models() if not name.startswith("lightnet_dit")]


def finite_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
        grads[name] = param.grad.clone()
    return grads


def test_registry_lists_the_presets():
    assert {"lightnet_tiny", "lightnet_small", "lightnet_base"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert list_models("lightnet_s*") == ["lightnet_small"]
    assert CLASSIFIERS == ["lightnet_base", "lightnet_small", "lightnet_tiny"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_and_every_parameter_gets_a_gradient(name):
    model = create_model(name, **SMALL)
    assert isinstance(model, LightNet)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert not out.isnan().any()
    out.sum().backward()
    finite_gradients(model)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_grad_checkpointing_changes_neither_output_nor_gradients(name):
    model = create_model(name, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.sum().backward()
    grads = finite_gradients(model)

    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out_checkpointed = model(x)
    out_checkpointed.sum().backward()
    torch.testing.assert_close(out_checkpointed, out, rtol=0, atol=0)
    for name_, grad in finite_gradients(model).items():
        torch.testing.assert_close(grad, grads[name_], msg=name_)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_grad_checkpointing_from_the_constructor_stores_only_block_inputs(name):
    # A config turns checkpointing on with `grad_checkpointing: true`; the blocks' activations are then not kept.
    x = torch.randn(2, 3, 32, 32)

    def saved_bytes(model):
        total = [0]

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x)
        return total[0]

    plain = create_model(name, **SMALL)
    checkpointed = create_model(name, **SMALL, grad_checkpointing=True)
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    assert saved_bytes(checkpointed) < saved_bytes(plain) / 2


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_head_and_reset_classifier(name):
    model = create_model(name, num_classes=7, depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 4, model.embed_dim)  # a 2x2 grid of 16-pixel patches
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.head(pooled), model(x))

    model.reset_classifier(3)
    assert model.num_classes == 3 and model.get_classifier().out_features == 3
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)  # no head: pooled features out


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_no_weight_decay_names_are_parameters(name):
    model = create_model(name, depth=1)
    names = dict(model.named_parameters())
    assert model.no_weight_decay()
    assert model.no_weight_decay() <= names.keys()


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ValueError, match="lightnet_huge") as error:
        create_model("lightnet_huge")
    for name in list_models():
        assert name in str(error.value)


@pytest.mark.parametrize(
    "name, embed_dim, num_heads",
    [("lightnet_tiny", 192, 3), ("lightnet_small", 384, 6), ("lightnet_base", 768, 12)],
)
def test_presets_have_deit_widths(name, embed_dim, num_heads):
    model = create_model(name, depth=1)
    assert model.embed_dim == embed_dim
    assert model.pos_tpe.num_heads == num_heads
    assert model.blocks[0].attn.num_heads == num_heads
    assert model.patch_embed.patch_size == 16
    assert (model.img_size, model.num_classes) == (224, 1000)


def test_tiny_preset_has_twelve_blocks():
    assert len(create_model("lightnet_tiny").blocks) == 12


def test_overrides_reach_the_model():
    model = create_model("lightnet_tiny", depth=1, in_chans=1, patch_size=8, drop_path_rate=0.2)
    assert model.patch_embed.proj.in_channels == 1
    assert model.patch_embed.patch_size == 8
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 1000)


def test_non_square_input():
    model = create_model("lightnet_tiny", num_classes=7, depth=1).eval()
    x = torch.randn(2, 3, 48, 32)
    assert model.forward_features(x).shape == (2, 6, 192)  # a 3x2 grid
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    # The grid axes are not interchangeable: the transposed image is a different input.
    assert not torch.allclose(model(x.transpose(2, 3)), out)


def test_input_not_divisible_by_the_patch_is_refused():
    model = create_model("lightnet_tiny", depth=1)
    with pytest.raises(ValueError, match=r"40x32.*patch size 16"):
        model(torch.randn(1, 3, 40, 32))
