"""The model registry and timm's model interface, for every registered preset (timm's tests/test_models.py)."""

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightnet_vision.models import (
    LightNet,
    LightNetDiT,
    _registry,
    create_model,
    list_models,
    preset_arguments,
    register_model,
)

# Preset widths are kept; depth is cut to keep a forward and backward of the base width fast on a CPU.
SMALL = {"num_classes": 7, "in_chans": 3, "depth": 2}
# The image classifiers; the diffusion denoisers (LightNetDiT presets) have their own tests.
CLASSIFIERS = list_models(model_cls=LightNet)


def finite_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
        grads[name] = param.grad.clone()
    return grads


def test_registry_lists_the_presets():
    assert {"lightnet_tiny", "lightnet_small", "lightnet_base"} <= set(CLASSIFIERS)
    assert list_models() == sorted(list_models())
    assert list_models("lightnet_s*") == ["lightnet_small"]
    # Each preset belongs to exactly one backbone.
    denoisers = list_models(model_cls=LightNetDiT)
    assert sorted(CLASSIFIERS + denoisers) == list_models() and not set(CLASSIFIERS) & set(denoisers)


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def build_from_config(config: str) -> nn.Module:
    """The YAML route of `lightnet-vision`: a backbone's class_path and init_args, parsed and instantiated."""
    parser = ArgumentParser()
    parser.add_argument("--model", type=nn.Module)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    with torch.device("meta"):  # full-size presets (up to 680M parameters) without allocating them
        return instantiate(parser.parse_string(config)).model


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_from_a_config_as_from_create_model(name):
    with torch.device("meta"):
        reference = create_model(name)
        model_cls = type(reference)
        explicit = model_cls(preset=None, **preset_arguments(name))
    class_path = f"{model_cls.__module__}.{model_cls.__qualname__}"
    model = build_from_config(f"model:\n  class_path: {class_path}\n  init_args:\n    preset: {name}\n")
    assert type(model) is model_cls and model.preset == reference.preset == name
    assert parameter_shapes(model) == parameter_shapes(reference) == parameter_shapes(explicit)


@pytest.mark.parametrize("model_cls", [LightNet, LightNetDiT])
def test_unknown_preset_is_one_line_naming_the_backbones_presets(model_cls):
    with pytest.raises(ValueError, match="lightnet_huge") as error:
        model_cls(preset="lightnet_huge")
    message = str(error.value)
    assert "\n" not in message
    assert all(name in message for name in list_models(model_cls=model_cls))
    assert not any(name in message for name in list_models() if name not in list_models(model_cls=model_cls))


def test_explicit_arguments_win_over_the_preset():
    model = LightNet(preset="lightnet_base", embed_dim=96, depth=1)  # the preset's 12 heads stay
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (96, 1, 12)
    with pytest.raises(ValueError, match="needs embed_dim, num_heads"):
        LightNet(preset=None, depth=1)


def test_adding_a_preset_is_one_function(monkeypatch):
    monkeypatch.setattr(_registry, "_presets", dict(_registry._presets))  # the registry as it is, restored after

    @register_model(LightNet)
    def lightnet_pico() -> dict[str, int]:
        return {"embed_dim": 32, "depth": 2, "num_heads": 2}

    assert "lightnet_pico" in list_models(model_cls=LightNet)
    model = build_from_config(
        "model:\n  class_path: lightnet_vision.models.LightNet\n  init_args:\n    preset: lightnet_pico\n"
    )
    assert (model.embed_dim, len(model.blocks)) == (32, 2)
    assert create_model("lightnet_pico").embed_dim == 32


def test_a_preset_may_set_only_what_the_backbone_takes_from_one(monkeypatch):
    monkeypatch.setitem(_registry._presets, "lightnet_odd", (LightNet, lambda: {"embed_dim": 8, "patch_size": 4}))
    with pytest.raises(TypeError, match=r"'lightnet_odd' sets \['patch_size'\]"):
        LightNet(preset="lightnet_odd", depth=1, num_heads=2)


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
