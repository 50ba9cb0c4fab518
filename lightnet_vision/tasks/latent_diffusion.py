"""Class-conditional latent diffusion with an injected denoiser (LightNet-DiT by default), DiT-style."""

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from lightnet_vision.checks import check_denoiser_data
from lightnet_vision.diffusion import GaussianDiffusion
from lightnet_vision.diffusion.gaussian import Sampler
from lightnet_vision.lightning_compat import restore_train_loader_position, train_loader_states
from lightnet_vision.models.first_stage import FirstStage
from lightnet_vision.tasks.hparams import restore_task_hyperparameters, save_task_hyperparameters
from lightnet_vision.tasks.optim import OptimizerCallable, SchedulerCallable, configure_optimizers


def _adamw(params: list) -> Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class LatentDiffusion(LightningModule):
    """Train a denoiser on latents of a first stage, sample from it, and write samples for evaluation.

    Batches are `(images, labels)` from an image DataModule (encoded on the fly) or `{"latents", "labels"}` from
    a latent cache. With an `EMAWeightAveraging` callback, validation, sample grids and checkpoints use the EMA
    weights.

    Args:
        model: The denoiser, `forward(x, t, y)` with `num_classes` and `forward_with_cfg` (LightNet-DiT).
        diffusion: Noise schedule and prediction target.
        first_stage: "pixel", a diffusers AutoencoderKL directory or hub id, or an `Autoencoder` task checkpoint.
        latent_scale: Overrides the first stage's latent scale (SD-VAE: 0.18215; our autoencoder stores its own).
        image_size: Image side (linked from the DataModule); the latent side is this over the first stage's factor.
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
        output_dir: Where `predict` writes `samples/<class>/<index>.png` and `samples.npz`; None: the run's log dir.
        class_names: Names of the classes (linked from the DataModule).
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
        image_size: int | None = None,
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
        output_dir: str | None = None,
        class_names: list[str] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        save_task_hyperparameters(self)
        self.model = model
        self.diffusion = diffusion or GaussianDiffusion()
        # Kept out of the module tree: the frozen first stage is neither trained, averaged nor checkpointed.
        self._first_stage = [FirstStage.load(first_stage, latent_scale)]
        self.image_size = image_size
        self.class_conditional = class_conditional
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.sampler = sampler
        self.num_sampling_steps = num_sampling_steps
        self.guidance_scale = guidance_scale
        self.num_val_timesteps = num_val_timesteps
        self.predict_classes = predict_classes
        self.samples_per_class = samples_per_class
        self.predict_batch_size = predict_batch_size
        self.predict_seed = predict_seed
        self.output_dir = output_dir
        self.class_names = class_names
        self.compile_backbone = compile
        self._predicted: list[tuple[Tensor, Tensor, Tensor]] = []  # (labels, indices, uint8 images) per batch
        self._train_loader_states: list[dict] = []  # the loader position of the checkpoint a fit resumes from

    @property
    def first_stage(self) -> FirstStage:
        first_stage = self._first_stage[0]
        if next(first_stage.parameters(), torch.empty(0)).device != self.device:
            first_stage.to(self.device)
        return first_stage

    def latent_shape(self) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents the denoiser works on."""
        first_stage = self.first_stage
        size = self.image_size or self.model.input_size * first_stage.downsample_factor
        side = size // first_stage.downsample_factor
        return self.model.in_channels, side, side

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

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        labels, indices = batch
        # Each sample's starting noise is drawn from its own index and the seed, so with the deterministic samplers
        # (ddim, dpm++) sample i is the same image whatever the batch size or the number of processes.
        shape = self.latent_shape()
        noise = torch.stack([torch.randn(shape, generator=self._sample_generator(int(i))) for i in indices])
        generator = self._sample_generator(int(indices[0]))  # the noise a stochastic sampler (ddpm) adds per step
        conditional = bool((labels >= 0).all())
        images = self.generate(labels.to(self.device) if conditional else None, labels.shape[0], generator, noise=noise)
        # Kept here, as uint8, and written at the end; nothing is returned so the Trainer holds no second copy.
        self._predicted.append((labels.cpu(), indices.cpu(), to_uint8(images)))

    def _sample_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.predict_seed * 1_000_003 + index)

    def on_predict_epoch_end(self) -> None:
        # Every process takes part in the gather and in `log_dir` (both collective), also one given no samples.
        if self._predicted:
            labels, indices, images = (torch.cat(parts) for parts in zip(*self._predicted, strict=True))
        else:
            labels, indices, images = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None
        self._predicted.clear()
        labels, indices, images = gather_uneven(self, labels, indices, images)
        out = Path(self.output_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero or images is None:
            return
        order = torch.argsort(indices)
        unique = torch.ones_like(order, dtype=torch.bool)
        unique[1:] = indices[order][1:] != indices[order][:-1]  # a sampler may repeat items
        order = order[unique]
        write_samples(out, images[order].cpu().numpy(), labels[order].cpu().numpy())
        print(f"wrote {len(order)} samples to {out / 'samples'} and {out / 'samples.npz'}")

    def setup(self, stage: str) -> None:
        # In setup rather than configure_model: compiling in place shards nothing, and overriding configure_model
        # makes Lightning's weight averaging warn about sharded layers.
        if self.compile_backbone:
            self.model.compile()
        # Classes, latent channels and latent patch grid must agree with the data before the first step
        # (lightnet_vision/checks.py).
        check_denoiser_data(self.trainer.datamodule, self.model, self._first_stage[0], self.class_conditional)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_task_hyperparameters(self, checkpoint)
        self._train_loader_states = train_loader_states(checkpoint)

    def on_train_start(self) -> None:
        restore_train_loader_position(self.trainer, self._train_loader_states)
        self._train_loader_states = []
        if self.trainer.world_size > 1:
            # `seed_everything` gives every process the same seed: each would draw the same noise and timesteps for
            # its own images. Seeded apart (as DiT does), the global batch gets as many independent draws as images.
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.model, self.optimizer, self.lr_scheduler)


def gather_uneven(
    task: LightningModule, labels: Tensor, indices: Tensor, images: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every process's `(labels [n], indices [n], images [n, H, W, C])`, concatenated, on every process.

    Lightning's predict sampler does not pad, so processes hold different numbers of samples (a process may hold
    none: `images` None). Each process pads its share to the largest before the gather and the padding is dropped
    after it. One process: the arguments as they are.
    """
    if task.trainer.world_size == 1:
        return labels, indices, images
    device = task.device
    count = labels.shape[0]
    shape = torch.tensor([count, *(images.shape[1:] if images is not None else (0, 0, 0))], device=device)
    shapes = task.all_gather(shape)  # [world, 4]
    most, image_shape = int(shapes[:, 0].max()), shapes[:, 1:].max(dim=0).values.tolist()
    if most == 0:
        return labels, indices, None
    if images is None:
        images = torch.zeros(0, *image_shape, dtype=torch.uint8)

    def padded(x: Tensor) -> Tensor:
        return torch.cat([x, x.new_zeros(most - count, *x.shape[1:])]).to(device)

    gathered = task.all_gather({"labels": padded(labels), "indices": padded(indices), "images": padded(images)})
    counts = shapes[:, 0].tolist()
    return tuple(
        torch.cat([part[:n] for part, n in zip(gathered[key], counts, strict=True)])  # [sum of counts, ...]
        for key in ("labels", "indices", "images")
    )


def to_uint8(images: Tensor) -> Tensor:
    """`[B, C, H, W]` in [-1, 1] to `[B, H, W, C]` uint8 (the layout of ADM's sample files)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def write_samples(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """`out/samples/<class>/<index>.png` and `out/samples.npz` with `arr_0` (`N×H×W×C` uint8) and `labels`."""
    counters: dict[int, int] = {}
    for image, label in zip(images, labels, strict=True):
        folder = out / "samples" / (str(int(label)) if label >= 0 else "unconditional")
        folder.mkdir(parents=True, exist_ok=True)
        index = counters.get(int(label), 0)
        counters[int(label)] = index + 1
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{index}.png")
    np.savez(out / "samples.npz", arr_0=images, labels=labels)
