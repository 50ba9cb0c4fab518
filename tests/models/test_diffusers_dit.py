"""DiffusersDiT: diffusers' DiT behind LightNet-DiT's interface (the peer of configs/diffusion/digits_dit.yaml).

Known answers only: output shapes, guidance at scale 1 and at another scale against its definition, the null class of
y=None, and the label dropout (none, all, and the same label for every block)."""

import pytest
import torch

pytest.importorskip("diffusers")

from lightnet_vision.models import DiffusersDiT  # noqa: E402 (after the skip)

CLASSES = 10


def tiny(**overrides) -> DiffusersDiT:
    arguments = {"input_size": 4, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 2, "num_heads": 2}
    return DiffusersDiT(**{**arguments, "num_classes": CLASSES, **overrides}).eval()


def inputs(batch: int = 6, side: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 4, side, side)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, CLASSES, (batch,))
    return x, t, y


def test_exported_lazily_from_the_models_package():
    import lightnet_vision.models as models

    assert models.DiffusersDiT is DiffusersDiT and "DiffusersDiT" in models.__all__


def test_interface_the_task_reads():
    model = tiny(learn_sigma=True)
    assert (model.num_classes, model.in_channels, model.input_size, model.patch_size) == (CLASSES, 4, 4, 2)
    assert model.learn_sigma and model.out_channels == 8
    assert not tiny().learn_sigma and tiny().out_channels == 4
    # Every block's label table holds the classes and the null class.
    tables = [m.embedding_table for m in model.modules() if hasattr(m, "embedding_table")]
    assert len(tables) == 2 and all(table.num_embeddings == CLASSES + 1 for table in tables)
    with pytest.raises(ValueError, match="not divisible"):
        tiny(hidden_size=30, num_heads=4)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shapes_on_the_trained_grid_and_others(learn_sigma):
    model = tiny(learn_sigma=learn_sigma)
    channels = 8 if learn_sigma else 4
    with torch.no_grad():
        for side in (4, 8):  # 2×2 and 4×4 patches: diffusers rebuilds its sin-cos table for the new grid
            x, t, y = inputs(side=side)
            assert model(x, t, y).shape == (6, channels, side, side)
        assert model(x, t[0], y).shape == (6, channels, 8, 8)  # one timestep for the batch


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_guidance_at_scale_one_is_the_conditional_output(learn_sigma):
    model = tiny(learn_sigma=learn_sigma)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), model(x, t, y), atol=1e-5, rtol=1e-5)


def test_guidance_extrapolates_the_noise_and_keeps_the_conditional_variance():
    model = tiny(learn_sigma=True)
    x, t, y = inputs()
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, None)
        guided = model.forward_with_cfg(x, t, y, 3.0)
    torch.testing.assert_close(guided[:, :4], uncond[:, :4] + 3.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[:, 4:], cond[:, 4:], atol=1e-5, rtol=1e-5)


def test_no_labels_is_the_null_class():
    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        unconditional = model(x, t, None)
        null = model(x, t, torch.full_like(y, CLASSES))
        conditional = model(x, t, y)
    torch.testing.assert_close(unconditional, null)
    assert (unconditional - conditional).abs().amax() > 1e-3  # the null class is not a real one


def test_training_drops_labels_once_for_every_block():
    x, t, y = inputs(batch=64)
    with torch.no_grad():
        # Without dropout, training mode gives the eval output: the embedders' own dropout (each block's would drop
        # independently, 10% per block) is off.
        model = tiny(class_dropout_prob=0.0)
        torch.testing.assert_close(model.train()(x, t, y), model.eval()(x, t, y))
        # With every label dropped, training mode gives the null class in every block.
        model = tiny(class_dropout_prob=1.0)
        torch.testing.assert_close(model.train()(x, t, y), model.eval()(x, t, None))
