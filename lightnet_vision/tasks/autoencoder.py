"""Train a KL autoencoder (diffusers' `AutoencoderKL`) for latent diffusion on data with no pretrained VAE."""

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor
from torch.optim import Optimizer

from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.models.autoencoder import KLAutoencoder
from lightnet_vision.tasks.base import Task
from lightnet_vision.tasks.optim import OptimizerCallable, SchedulerCallable


def _adam(params: list) -> Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class Autoencoder(Task):
    """An autoencoder trained with a reconstruction + KL loss.

    The latent scale factor (1 / std of the latents) is estimated on the validation data at every validation and
    stored with the weights (buffer `latent_scale`), so the diffusion stage reads it from the checkpoint.

    Args:
        model: The autoencoder to train; its `vae` is a diffusers `AutoencoderKL`.
        optimizer: Called with the parameter groups (no weight decay on biases, norms and 1-D parameters).
        lr_scheduler: Called with the optimizer, total steps and steps per epoch; None keeps the rate constant.
        kl_weight: Weight of the KL divergence of the posterior to N(0, I).
        reconstruction_loss: "l1" or "mse" on pixels in [-1, 1].
        data_info: The data's description (from the DataModule, through the CLI); sets the model's `in_chans`.
        compile: `torch.compile` the autoencoder in place before the first step.
    """

    def __init__(
        self,
        model: KLAutoencoder,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: SchedulerCallable | None = None,
        kl_weight: float = 1e-4,
        reconstruction_loss: str = "l1",
        data_info: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, data_info, compile)
        self.save_hyperparameters()
        self.keep_config_hyperparameters()
        if reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'mse', got {reconstruction_loss!r}")
        self.kl_weight = kl_weight
        self.reconstruction_loss = F.l1_loss if reconstruction_loss == "l1" else F.mse_loss
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self._latent_moments: list[Tensor] = []

    @classmethod
    def backbone_arguments(cls, data_info: DataInfo, task_arguments: dict[str, Any]) -> dict[str, Any]:
        return {"in_chans": data_info.in_chans}

    @property
    def vae(self) -> AutoencoderKL:
        return self.model.vae

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample()
        return self.vae.decode(latents).sample, latents, posterior.kl().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images = batch[0]
        reconstruction, _, kl = self(images)
        rec = self.reconstruction_loss(reconstruction, images)
        loss = rec + self.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/rec": rec, "train/kl": kl}, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mode()
        reconstruction = self.vae.decode(latents).sample
        self.log("val/loss", F.mse_loss(reconstruction, images), prog_bar=True, sync_dist=True)
        flat = latents.float().transpose(0, 1).flatten(1)  # [C, B*h*w]
        self._latent_moments.append(
            torch.stack([flat.sum(1), (flat**2).sum(1), torch.full_like(flat[:, 0], flat.shape[1])])
        )

    def on_validation_epoch_end(self) -> None:
        if not self._latent_moments:
            return
        moments = torch.stack(self._latent_moments).sum(0)  # [3, C]: sum, sum of squares, count
        moments = self.trainer.strategy.reduce(moments, reduce_op="sum")
        self._latent_moments.clear()
        total, squares, count = moments.sum(dim=1)
        std = (squares / count - (total / count) ** 2).clamp_min(1e-12).sqrt()
        if not self.trainer.sanity_checking:
            self.latent_scale.fill_(1.0 / std.item())
            self.log("val/latent_std", std, sync_dist=False)
