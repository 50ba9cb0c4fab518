"""FirstStage: pixel space, and an Autoencoder task checkpoint rebuilt as a frozen encoder/decoder with its scale."""

import pytest
import torch

from lightnet_vision.models import FirstStage, KLAutoencoder


def test_pixel_first_stage_is_the_identity():
    first_stage = FirstStage.load("pixel")
    images = torch.randn(3, 1, 8, 8)
    assert first_stage.vae is None
    assert first_stage.downsample_factor == 1 and first_stage.latent_channels is None and first_stage.scale == 1.0
    torch.testing.assert_close(first_stage.encode(images), images, rtol=0, atol=0)
    torch.testing.assert_close(first_stage.decode(images), images, rtol=0, atol=0)


@pytest.mark.slow
def test_autoencoder_checkpoint_rebuilds_the_fitted_autoencoder(tiny_autoencoder):
    cli, checkpoint = tiny_autoencoder
    task = cli.model.eval()
    first_stage = FirstStage.load(str(checkpoint))
    assert (first_stage.downsample_factor, first_stage.latent_channels) == (2, 4)
    assert first_stage.scale == pytest.approx(task.latent_scale.item())
    # Frozen and in eval mode: the diffusion stage neither trains nor averages it.
    assert not first_stage.vae.training
    assert not any(param.requires_grad for param in first_stage.vae.parameters())
    fitted = task.vae.state_dict()
    for name, value in first_stage.vae.state_dict().items():
        torch.testing.assert_close(value, fitted[name], rtol=0, atol=0, msg=name)

    images = torch.rand(5, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        mode = task.vae.encode(images).latent_dist.mode()
        expected = task.vae.decode(mode).sample
    latents = first_stage.encode(images, sample=False)
    assert latents.shape == (5, 4, 4, 4)
    torch.testing.assert_close(latents, mode * task.latent_scale)  # scaled to unit variance
    decoded = first_stage.decode(latents)
    assert decoded.shape == images.shape
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sampled_latents_follow_the_generator(tiny_autoencoder):
    _, checkpoint = tiny_autoencoder
    first_stage = FirstStage.load(str(checkpoint))
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    first = first_stage.encode(images, generator=torch.Generator().manual_seed(0))
    again = first_stage.encode(images, generator=torch.Generator().manual_seed(0))
    other = first_stage.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    assert not torch.equal(first, first_stage.encode(images, sample=False))


@pytest.mark.slow
def test_explicit_scale_overrides_the_checkpoint(tiny_autoencoder):
    _, checkpoint = tiny_autoencoder
    stored, halved = FirstStage.load(str(checkpoint)), FirstStage.load(str(checkpoint), scale=0.5)
    assert halved.scale == 0.5
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(
        halved.encode(images, sample=False) / 0.5, stored.encode(images, sample=False) / stored.scale
    )


def test_checkpoint_of_another_task_is_refused(tmp_path):
    path = tmp_path / "classifier.ckpt"
    hyper_parameters = {"model": {"class_path": "lightnet_vision.models.LightNet", "init_args": {"depth": 1}}}
    torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters}, path)
    with pytest.raises(ValueError, match="not a checkpoint of the Autoencoder task"):
        FirstStage.load(str(path))


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        FirstStage.load(str(tmp_path / "absent.ckpt"))


def test_pixel_first_stage_applies_its_scale():
    first_stage = FirstStage.load("pixel", scale=2.0)
    images = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(first_stage.encode(images), 2 * images)
    torch.testing.assert_close(first_stage.decode(first_stage.encode(images)), images)


def test_diffusers_directory_loads_with_its_own_scaling_factor(tmp_path):
    # The layout of a pretrained VAE (SD-VAE): config.json and weights, as written by save_pretrained.
    vae = KLAutoencoder(in_chans=3, block_out_channels=[8, 16], norm_num_groups=8, layers_per_block=1).vae
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    first_stage = FirstStage.load(str(tmp_path / "vae"))
    assert first_stage.scale == 0.5 and first_stage.downsample_factor == 2
    for name, value in first_stage.vae.state_dict().items():
        torch.testing.assert_close(value, vae.state_dict()[name], rtol=0, atol=0, msg=name)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mode() * 0.5
    torch.testing.assert_close(first_stage.encode(images, sample=False), expected)
    # A model repository with the VAE in a vae/ subfolder loads the same way; an explicit scale wins.
    assert FirstStage.load(str(tmp_path), scale=0.18215).scale == 0.18215
