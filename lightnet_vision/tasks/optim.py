"""Optimizers of the tasks: AdamW parameter groups and per-step schedules built from injected callables."""

import math
from collections.abc import Callable

from lightning.pytorch import LightningModule
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

OptimizerCallable = Callable[[list], Optimizer]
SchedulerCallable = Callable[[Optimizer, int, int], LRScheduler]


def param_groups_weight_decay(model: nn.Module) -> list[dict]:
    """Two groups: the first takes the optimizer's own weight decay, the second has none."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def configure_optimizers(
    task: LightningModule, model: nn.Module, optimizer: OptimizerCallable, lr_scheduler: SchedulerCallable | None
) -> dict:
    """The optimizer over `model`'s parameter groups and, if given, its scheduler stepped every optimizer step,
    called with the fit's total optimizer steps and the steps per epoch (read from the task's trainer)."""
    built = optimizer(param_groups_weight_decay(model))
    if lr_scheduler is None:
        return {"optimizer": built}
    trainer = task.trainer
    total_steps = int(trainer.estimated_stepping_batches)  # also sets up the train dataloader
    steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    scheduler = lr_scheduler(built, total_steps, steps_per_epoch)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
