"""The Autoencoder task fitted by the CLI: its checkpoint, the latent scale it estimates, and reloading it."""

import pytest
import torch

from lightnet_vision.models import KLAutoencoder
from lightnet_vision.tasks import Autoencoder

pytestmark = pytest.mark.slow


def val_latents(cli, batches: int = 2) -> torch.Tensor:
    """Posterior modes of the first validation batches, the ones the fit validated on (limit_val_batches: 2)."""
    vae = cli.model.eval().vae
    latents = []
    with torch.no_grad():
        for index, (images, _) in enumerate(cli.datamodule.val_dataloader()):
            if index == batches:
                break
            latents.append(vae.encode(images).latent_dist.mode())
    return torch.cat(latents)


def test_fit_writes_a_checkpoint_with_the_latent_scale(tiny_autoencoder):
    cli, checkpoint = tiny_autoencoder
    assert cli.trainer.global_step == 2
    assert {"train/loss", "train/rec", "train/kl", "val/loss", "val/latent_std"} <= cli.trainer.callback_metrics.keys()
    scale = cli.model.latent_scale
    assert torch.isfinite(scale) and scale > 0 and scale != 1.0  # estimated, not left at its initial value
    # 1 / std of the validation latents (all channels and positions together), not of anything else.
    latents = val_latents(cli)
    assert latents.shape == (32, 4, 4, 4)  # 2 batches of 16 8x8 digits -> 4x4x4
    torch.testing.assert_close(scale, 1 / latents.std(unbiased=False), rtol=1e-4, atol=0)
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]["latent_scale"]
    assert stored == scale


def test_checkpoint_loads_with_the_same_weights_and_hyperparameters(tiny_autoencoder):
    cli, checkpoint = tiny_autoencoder
    loaded = Autoencoder.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert isinstance(loaded.model, KLAutoencoder)
    config = loaded.vae.config
    assert (config.in_channels, tuple(config.block_out_channels), config.latent_channels) == (1, (8, 16), 4)
    # The CLI linked num_classes and img_size from the data too; the checkpoint keeps only what KLAutoencoder takes.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["model"]["init_args"]
    assert saved["in_chans"] == 1 and saved["block_out_channels"] == [8, 16]
    assert not {"num_classes", "img_size", "class_names"} & saved.keys()
    assert loaded.kl_weight == cli.model.kl_weight
    fitted = cli.model.state_dict()
    assert loaded.state_dict().keys() == fitted.keys()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, fitted[name], rtol=0, atol=0, msg=name)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        reconstruction = loaded.vae.decode(loaded.vae.encode(images).latent_dist.mode()).sample
    assert reconstruction.shape == images.shape and torch.isfinite(reconstruction).all()


def test_training_step_is_reconstruction_plus_weighted_kl(tiny_autoencoder):
    cli, _ = tiny_autoencoder
    task = Autoencoder(cli.model.model, kl_weight=0.5, reconstruction_loss="mse")
    task.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    loss = task.training_step((images, torch.zeros(4)), 0)
    torch.manual_seed(3)  # the same posterior sample
    reconstruction, _, kl = task(images)
    assert kl > 0
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(reconstruction, images) + 0.5 * kl)


def test_unknown_reconstruction_loss_is_refused():
    model = KLAutoencoder(in_chans=1, block_out_channels=[8, 16], norm_num_groups=8, layers_per_block=1)
    with pytest.raises(ValueError, match="huber"):
        Autoencoder(model, reconstruction_loss="huber")
