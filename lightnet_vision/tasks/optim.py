"""Optimizers of the tasks: AdamW parameter groups and per-step schedules built from injected callables."""

import math
from collections.abc import Callable

from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import LightningModule, Trainer
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


def train_loader_states(checkpoint: dict) -> list[dict]:
    """The states of the training loaders in a checkpoint (none for a loader without `state_dict`)."""
    return checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])


def restore_train_loader_position(trainer: Trainer, states: list[dict]) -> None:
    """Put a resumed fit's training loader back where the checkpoint left it, mid-epoch.

    Called from `on_train_start`, with the `states` that `on_load_checkpoint` found. Lightning 2.6 gets this only
    partly right:

    - When `configure_optimizers` asks for `estimated_stepping_batches`, the loader is set up before the
      checkpoint's loop state is restored, and the saved state never reaches it (Lightning issue #20550).
    - Otherwise the state reaches the loader, but the loader's iterator starts before the sampler's epoch is set.
      Under DDP, a DistributedSampler would then replay the first epoch's order in a later epoch.

    Here, after the restore and before the first batch, the state is loaded, the epoch set, and the iterator
    restarted from them, as Lightning's own fix under review does (pull request #21765).
    """
    fit_loop = trainer.fit_loop
    if not states or fit_loop._combined_loader is None or fit_loop._data_fetcher is None:
        return
    fit_loop._combined_loader._load_state_dicts(states)
    fit_loop._combined_loader_states_to_load = []  # loaded here, not a second time by Lightning
    for loader in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    iter(fit_loop._data_fetcher)
