"""Stop, or skip the batch, when the training loss is NaN or infinite, instead of training on with NaN weights."""

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer


class NonFiniteLossError(RuntimeError):
    """Training stopped at a NaN or infinite loss."""


class NonFiniteLoss(Callback):
    """Watches the loss of every training batch. When it is NaN or infinite on any process, the gradients of that
    batch are dropped before the optimizer step, so neither the weights nor the optimizer's moments take the bad
    update, and then

    - `stop`: the state of the fit is saved as `last.ckpt` in the checkpoint directory (weights, EMA, optimizer,
      schedule, step and data position, as after any batch) and `NonFiniteLossError` names the step and the loss;
      `--ckpt_path last` resumes from there, after the bad batch;
    - `skip`: a warning names the step and training goes on with the next batch. The learning-rate schedule still
      advances, as for any batch.

    All processes take the decision together (one all-reduce of a flag per batch), so under DDP they stop or skip
    as one. The `lightnet-vision` command adds `NonFiniteLoss("stop")` to every fit whose config names none.

    Args:
        action: "stop" or "skip".
        dirpath: Where `stop` writes `last.ckpt`; None: the directory of the first ModelCheckpoint, or
            `<default_root_dir>/checkpoints` without one.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", dirpath: str | None = None) -> None:
        super().__init__()
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteLoss: action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.dirpath = dirpath
        self.skipped_steps: list[int] = []
        self._bad: tuple[int, str] | None = None  # (global step, loss) of a batch whose update must not happen
        self._stop: tuple[int, str] | None = None

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = list(state_dict["skipped_steps"])

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False) and self._bad is None:
            # With gradient accumulation the first bad micro-batch spoils the whole optimizer step.
            value = f"{loss.detach().float().item():g}" if not finite else "on another process"
            self._bad = (trainer.global_step, value)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self._bad is None:
            return
        # Parameters without a gradient are left alone by the optimizer: no update, no change to its moments.
        optimizer.zero_grad(set_to_none=True)
        step, loss = self._bad
        self._bad = None
        if self.action == "stop":
            self._stop = (step, loss)
            return
        self.skipped_steps.append(step)
        rank_zero_warn(f"non-finite training loss ({loss}) at global step {step}: the batch was skipped")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._stop is None:
            return
        step, loss = self._stop
        self._stop = None
        path = self._last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}) at global step {step} (epoch {trainer.current_epoch}, batch"
            f" {batch_idx}). Training stopped; the update of that batch was not applied. The state before it is in"
            f" {path}: resume with --ckpt_path last, after lowering the learning rate, or with"
            " NonFiniteLoss(action='skip') to step over bad batches."
        )

    def _last_checkpoint_path(self, trainer: Trainer) -> Path:
        name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        if self.dirpath is not None:
            return Path(self.dirpath) / name
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is not None:
            return Path(checkpoint.dirpath) / name
        return Path(trainer.default_root_dir) / "checkpoints" / name
