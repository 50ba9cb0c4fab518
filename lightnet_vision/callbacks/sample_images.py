"""Sample grids from fixed noise and labels, logged to TensorBoard and saved as PNG while a generator trains."""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from lightnet_vision.callbacks.protocols import SampleGenerator, require


class SampleImages(Callback):
    """Every `every_n_steps` training steps, a grid of samples: one row per class, `samples_per_class` columns.

    Sampling happens at the first validation batch after the step count is reached: there an
    `EMAWeightAveraging` callback has swapped the EMA weights in, so the grid shows the weights the checkpoint
    keeps. Noise and labels are the same every time, so successive grids show how the model changes.

    Args:
        every_n_steps: Training steps between grids (validation must run at least that often).
        classes: Class of each row; None takes the first `num_rows` classes.
        num_rows: Rows when `classes` is None (or for an unconditional model).
        samples_per_class: Columns of the grid.
        seed: Seed of the fixed noise.
        guidance_scale: Overrides the task's guidance scale.
        num_steps: Overrides the task's number of sampling steps.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        classes: list[int] | None = None,
        num_rows: int = 10,
        samples_per_class: int = 8,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.classes = classes
        self.num_rows = num_rows
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.guidance_scale = guidance_scale
        self.num_steps = num_steps
        self._last_step = 0

    def state_dict(self) -> dict:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_step = state_dict["last_step"]

    def labels(self, pl_module: LightningModule) -> torch.Tensor | None:
        require(pl_module, SampleGenerator, "SampleImages")
        if not pl_module.class_conditional:
            return None
        num_classes = pl_module.num_classes
        classes = self.classes if self.classes is not None else list(range(min(self.num_rows, num_classes)))
        return torch.tensor([c for c in classes for _ in range(self.samples_per_class)], device=pl_module.device)

    @torch.no_grad()
    def grid(self, pl_module: LightningModule) -> torch.Tensor:
        """The sample grid `[C, H, W]` in [0, 1]."""
        labels = self.labels(pl_module)
        count = labels.shape[0] if labels is not None else self.num_rows * self.samples_per_class
        generator = torch.Generator().manual_seed(self.seed)
        images = pl_module.generate(
            labels, count, generator, guidance_scale=self.guidance_scale, num_steps=self.num_steps
        )  # [B, C, H, W] in [-1, 1]
        return make_grid((images + 1) / 2, nrow=self.samples_per_class, padding=1, pad_value=1.0)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        if trainer.global_step == 0 or trainer.global_step - self._last_step < self.every_n_steps:
            return
        self._last_step = trainer.global_step
        # `trainer.log_dir` is a collective call (a broadcast from rank 0): every process must make it.
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "sample_grids"
        self._log_grid(trainer, pl_module, folder)

    @rank_zero_only
    def _log_grid(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> None:
        was_training = pl_module.training
        pl_module.eval()
        grid = self.grid(pl_module)
        pl_module.train(was_training)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, trainer.global_step)
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"step{trainer.global_step:07d}.png")
