"""Learning-rate schedules stepped once per optimizer step."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from 0 to the base learning rate, then cosine decay to `min_lr_ratio` × base at the last step.

    The task calls it with the fit's total number of optimizer steps and steps per epoch, so a config only says
    how many epochs of warm-up it wants (DeiT: 5 of 300).

    Args:
        optimizer: The optimizer whose learning rates are scaled.
        total_steps: Optimizer steps of the whole fit.
        steps_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Length of the linear warm-up, in epochs (may be fractional).
        min_lr_ratio: Final learning rate as a fraction of the base learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 5.0,
        min_lr_ratio: float = 0.0,
    ) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(round(warmup_epochs * steps_per_epoch), self.total_steps - 1)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.lr_factor)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        # The last optimizer step (total_steps - 1) runs at exactly min_lr_ratio × base.
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
