"""What the callbacks ask of a task, declared: a task that has these members works with them, whatever its class."""

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class SampleGenerator(Protocol):
    """A task that generates images (`LatentDiffusion`): `SampleImages` and `FID` call it."""

    class_conditional: bool
    num_classes: int

    def generate(
        self,
        labels: Tensor | None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Images in [-1, 1], `[B, C, H, W]`, for `labels` `[B]` (None: unconditional, `num_samples` of them)."""
        ...


@runtime_checkable
class NamedClasses(Protocol):
    """A task that knows its classes' names (None: it names them by index). `PredictionCSVWriter` reads them."""

    class_names: list[str] | None


def require(task: object, protocol: type, callback: str) -> None:
    """Raises a TypeError naming the callback, the task and what it lacks when `task` does not follow `protocol`."""
    if not isinstance(task, protocol):
        declared = [*getattr(protocol, "__annotations__", {}), *(n for n in vars(protocol) if not n.startswith("_"))]
        members = [name for name in declared if not hasattr(task, name)]
        raise TypeError(
            f"{callback} needs a task that follows {protocol.__name__} (lightnet_vision/callbacks/protocols.py); "
            f"{type(task).__name__} lacks {', '.join(sorted(members)) or 'some of its members'}"
        )
