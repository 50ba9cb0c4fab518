"""Class-conditional latent diffusion with an injected denoiser (LightNet-DiT by default), DiT-style."""

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from lightnet_vision.checks import check_denoiser_data
from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.diffusion import GaussianDiffusion
from lightnet_vision.diffusion.gaussian import Sampler
from lightnet_vision.models.first_stage import FirstStage
from lightnet_vision.tasks.base import Task
from lightnet_vision.tasks.optim import OptimizerCallable, SchedulerCallable


def _adamw(params: list) -> Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class LatentDiffusion(Task):
    """Train a denoiser on latents of a first stage and sample from it.

    Batches are `(images, labels)` from an image DataModule (encoded on the fly) or `{"latents", "labels"}` from
    a latent cache, which this task builds with its first stage when it is missing (the first stage is named once,
    here). With an `EMAWeightAveraging` callback, validation, sample grids and checkpoints use the EMA weights.
    `predict` generates `samples_per_class` images of each requested class and returns them; the `SampleWriter`
    callback (on by default in the CLI) writes them as PNG files and an `.npz`.

    Args:
        model: The denoiser, `forward(x, t, y)` with `num_classes` and `forward_with_cfg` (LightNet-DiT). The
            CLI sets its `num_classes`, `in_channels` and `input_size` from the data through the first stage.
        diffusion: Noise schedule and prediction target.
        first_stage: "pixel", a diffusers AutoencoderKL directory or hub id, or an `Autoencoder` task checkpoint.
        latent_scale: Overrides the first stage's latent scale (SD-VAE: 0.18215; our autoencoder stores its own).
        class_conditional: Use the labels; False trains an unconditional model on the null class.
        optimizer: Called with the parameter groups.
        lr_scheduler: Called with the optimizer, total steps and steps per epoch; None keeps the rate constant.
        sampler: "ddpm", "ddim" or "dpm++" for sample grids and `predict`.
        num_sampling_steps: Denoising steps of the sampler.
        guidance_scale: Classifier-free guidance scale; 1 is the plain conditional model.
        num_val_timesteps: Validation loss averages over this many fixed, evenly spaced timesteps.
        predict_classes: Classes `predict` generates (None: every class; ignored when unconditional).
        samples_per_class: Images `predict` generates per class (or in all, when unconditional).
        predict_batch_size: Samples generated per batch by `predict`.
        predict_seed: Seed of the noise `predict` starts from.
        data_info: The data's description (from the DataModule, through the CLI), kept in the checkpoint.
        compile: `torch.compile` the backbone in place before the first step (`nn.Module.compile`: parameter
            names, checkpoints and EMA weights stay those of the eager model). Worth it on GPUs; the first steps
            are slower while it compiles.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion | None = None,
        first_stage: str = "pixel",
        latent_scale: float | None = None,
        class_conditional: bool = True,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: SchedulerCallable | None = None,
        sampler: Sampler = "ddim",
        num_sampling_steps: int = 50,
        guidance_scale: float = 1.5,
        num_val_timesteps: int = 10,
        predict_classes: list[int] | None = None,
        samples_per_class: int = 10,
        predict_batch_size: int = 50,
        predict_seed: int = 0,
        data_info: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, data_info, compile)
        self.save_hyperparameters()
        self.keep_config_hyperparameters()
        self.diffusion = diffusion or GaussianDiffusion()
        # Kept out of the module tree: the frozen first stage is neither trained, averaged nor checkpointed.
        self._first_stage = [FirstStage.load(first_stage, latent_scale)]
        self.first_stage_name = first_stage
        self.class_conditional = class_conditional
        self.sampler = sampler
        self.num_sampling_steps = num_sampling_steps
        self.guidance_scale = guidance_scale
        self.num_val_timesteps = num_val_timesteps
        self.predict_classes = predict_classes
        self.samples_per_class = samples_per_class
        self.predict_batch_size = predict_batch_size
        self.predict_seed = predict_seed

    required_backbone_arguments = ("in_channels", "input_size")

    @classmethod
    def backbone_arguments(cls, data_info: DataInfo, task_arguments: dict[str, Any]) -> dict[str, Any]:
        # DiT's names; channels and side are those of the latents, through the first stage.
        first_stage = FirstStage.load(task_arguments.get("first_stage", "pixel"), task_arguments.get("latent_scale"))
        factor = first_stage.downsample_factor
        if data_info.image_size % factor:
            raise ValueError(
                f"the image size {data_info.image_size} is not divisible by the first stage's downsampling factor "
                f"{factor} ({task_arguments.get('first_stage')})"
            )
        conditional = task_arguments.get("class_conditional", True)
        return {
            "num_classes": data_info.num_classes if conditional else None,
            "in_channels": first_stage.latent_channels or data_info.in_chans,
            "input_size": data_info.image_size // factor,
        }

    @property
    def num_classes(self) -> int:
        """Classes of the denoiser (its null class for guidance not counted)."""
        return self.model.num_classes

    @property
    def class_names(self) -> list[str] | None:
        return None if self.data_info is None else self.data_info.class_names

    @property
    def first_stage(self) -> FirstStage:
        first_stage = self._first_stage[0]
        if next(first_stage.parameters(), torch.empty(0)).device != self.device:
            first_stage.to(self.device)
        return first_stage

    def latent_shape(self) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents the denoiser works on."""
        return self.model.in_channels, self.model.input_size, self.model.input_size

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.class_conditional else None

    def _latents(self, batch: tuple[Tensor, Tensor] | dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(batch, dict):
            return batch["latents"], batch["labels"]
        images, labels = batch
        return self.first_stage.encode(images), labels

    def training_step(self, batch, batch_idx: int) -> Tensor:
        latents, labels = self._latents(batch)
        y = self._labels(labels)
        loss = self.diffusion.training_loss(lambda x, t: self.model(x, t, y), latents)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        latents, labels = self._latents(batch)
        y = self._labels(labels)
        # The same noise and timesteps at every validation, so the curve moves only when the model does.
        generator = torch.Generator().manual_seed(batch_idx)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        steps = self.diffusion.num_train_timesteps
        timesteps = torch.linspace(0, steps - 1, self.num_val_timesteps).round().long().to(self.device)
        losses = [
            self.diffusion.training_loss(lambda x, t: self.model(x, t, y), latents, noise, t.expand(latents.shape[0]))
            for t in timesteps
        ]
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor | None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        sampler: Sampler | None = None,
        num_steps: int | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Images in [-1, 1], `[B, C, H, W]`, for `labels` `[B]` (None: unconditional, `num_samples` of them),
        starting from `noise` or from noise drawn from `generator`."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        batch = labels.shape[0] if labels is not None else num_samples
        if noise is None:
            noise = torch.randn(batch, *self.latent_shape(), generator=generator)
        noise = noise.to(self.device)
        if labels is None or not self.class_conditional:
            model_fn = lambda x, t: self.model(x, t, None)  # noqa: E731
        elif scale == 1.0:
            model_fn = lambda x, t: self.model(x, t, labels)  # noqa: E731
        else:
            model_fn = lambda x, t: self.model.forward_with_cfg(x, t, labels, scale)  # noqa: E731
        latents = self.diffusion.sample(
            model_fn,
            noise,
            sampler=sampler or self.sampler,
            num_steps=num_steps or self.num_sampling_steps,
            generator=generator,
        )
        return self.first_stage.decode(latents).clamp(-1, 1)

    def predict_dataloader(self) -> DataLoader:
        """What `predict` generates: every requested class `samples_per_class` times, as `(label, index)` pairs."""
        if not self.class_conditional:
            labels = torch.full((self.samples_per_class,), -1)
        else:
            classes = self.predict_classes if self.predict_classes is not None else range(self.model.num_classes)
            labels = torch.tensor([c for c in classes for _ in range(self.samples_per_class)])
        return DataLoader(TensorDataset(labels, torch.arange(len(labels))), batch_size=self.predict_batch_size)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Samples for `(labels [B], indices [B])`: `{"labels", "indices", "images"}`, images `[B, H, W, C]` uint8."""
        labels, indices = batch
        # Each sample's starting noise is drawn from its own index and the seed, so with the deterministic samplers
        # (ddim, dpm++) sample i is the same image whatever the batch size or the number of processes.
        shape = self.latent_shape()
        noise = torch.stack([torch.randn(shape, generator=self._sample_generator(int(i))) for i in indices])
        generator = self._sample_generator(int(indices[0]))  # the noise a stochastic sampler (ddpm) adds per step
        conditional = bool((labels >= 0).all())
        images = self.generate(labels.to(self.device) if conditional else None, labels.shape[0], generator, noise=noise)
        return {"labels": labels.cpu(), "indices": indices.cpu(), "images": to_uint8(images)}

    def _sample_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.predict_seed * 1_000_003 + index)

    def prepare_data(self) -> None:
        # The first stage is this task's: a latent cache without latents yet is encoded with it.
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "build_cache"):
            datamodule.build_cache(self._first_stage[0], self.first_stage_name)

    def check_data(self) -> None:
        # Classes, latent channels and latent patch grid must agree with the data before the first step
        # (lightnet_vision/checks.py).
        check_denoiser_data(self.trainer.datamodule, self.model, self._first_stage[0], self.class_conditional)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.trainer.world_size > 1:
            # `seed_everything` gives every process the same seed: each would draw the same noise and timesteps for
            # its own images. Seeded apart (as DiT does), the global batch gets as many independent draws as images.
            torch.manual_seed(torch.initial_seed() + self.global_rank)


def to_uint8(images: Tensor) -> Tensor:
    """`[B, C, H, W]` in [-1, 1] to `[B, H, W, C]` uint8 (the layout of ADM's sample files)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
