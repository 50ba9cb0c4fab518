"""Write classification predictions to a CSV: one row per image with its path, class name and probability."""

import csv
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lightnet_vision.callbacks.protocols import NamedClasses


class PredictionCSVWriter(BasePredictionWriter):
    """Collects what `predict_step` returns (`paths`, `index`, `probability`) and writes it once at the end.

    Args:
        path: CSV file to write; by default `predictions.csv` in the run's log directory.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        rows = []
        names = pl_module.class_names if isinstance(pl_module, NamedClasses) else None
        for batch in predictions:
            if not isinstance(batch, dict) or "paths" not in batch:
                return  # not a classification prediction
            for path, index, probability in zip(batch["paths"], batch["index"], batch["probability"], strict=True):
                rows.append((path, names[index] if names else str(index), f"{probability:.6f}"))
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = sorted({row for part in gathered for row in part})  # a sampler may pad with repeats
        # `trainer.log_dir` is a collective call (a broadcast from rank 0): every process must make it.
        path = Path(self.path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv")
        if not trainer.is_global_zero:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "class", "probability"])
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {path}")
